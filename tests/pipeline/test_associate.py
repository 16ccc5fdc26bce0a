"""Network association: the coincidence logic (window edges, weights, growth new -> updated -> closed, events close
in time, travel-time bounds, order independence), the standalone `quakemon associate` process over tcp, and a
replay of ObsPy's real UH1..UH4 recordings through the bundled model."""

from __future__ import annotations

import json
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from quakemon.base.errors import ConfigError
from quakemon.pipeline.associate import Associator, station_coordinates
from quakemon.wire import schema as m

T0 = 1_274_977_473.0  # 2010-05-27T16:24:33Z
MODEL = {"name": "test", "sha256": "cd" * 32}


def det(station: str, onset: float, state: str = "new", p: float = 0.9, label: str = "earthquake",
        min_duration: float = 2.0, end: float | None = None) -> dict[str, Any]:
    """A detection body as the trigger makes it: onset (the pick) and its first window starting there, "new"
    confirmed by a window min_duration later (the message's window, last_window_start, moves the clock)."""
    ws = onset + min_duration if state == "new" else (end or onset + 20.0)
    return m.detection_body(station=station, state=state, label=label, probability=p,
                            probabilities={"noise": 1 - p, "earthquake": p}, pick_time_ns=round(onset * 1e9),
                            pick_uncertainty_s=0.05, pick_method="aic", pick_snr=10.0, window_start=onset,
                            window_end=onset + 20.0, last_window_start=ws, last_window_end=ws + 20.0,
                            peak_probability=p, model=MODEL,
                            end=end if state == "closed" else None,
                            close_reason="off" if state == "closed" else None)


def run(assoc: Associator, bodies: list[dict[str, Any]], flush: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for b in bodies:
        out += assoc.add(b, source="s")
    return out + (assoc.flush() if flush else [])


def closed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["state"] == "closed"]


def summary(events: list[dict[str, Any]]) -> list[tuple]:
    """What must agree between two runs: id, onsets and stations of every closed event."""
    return sorted((e["id"], e["label"], e["first_onset"], e["n_stations"], e["coincidence_sum"],
                   tuple((s["station"], s["onset"], s["probability"], s["weight"], s["detection_id"])
                         for s in e["stations"])) for e in closed(events))


# --------------------------------------------------------------------------------------------- coincidence logic
@pytest.mark.parametrize(("last", "events"), [(10.0, 1), (10.01, 0)])
def test_window_edges(last: float, events: int) -> None:
    """Onsets at 0, 5 and `last` s: three stations within window_s = 10 make an event, 10.01 s does not."""
    assoc = Associator(threshold=3, window_s=10.0, hold_s=5.0)
    out = run(assoc, [det("XX.A.", T0), det("XX.B.", T0 + 5), det("XX.C.", T0 + last)])
    assert len(closed(out)) == events
    if events:
        ev = closed(out)[0]
        assert [s["station"] for s in ev["stations"]] == ["XX.A.", "XX.B.", "XX.C."]
        assert ev["first_onset"] == m.iso_utc(T0) and ev["last_onset"] == m.iso_utc(T0 + last)
    else:
        assert assoc.stats["below_threshold"] == 3


def test_weights_like_obspy_coincidence_sum() -> None:
    """A station of weight 2 plus one of weight 1 reach 3; a weight-0 station never tips the sum."""
    weights = {"XX.A.": 2.0, "XX.Z": 0.0}
    out = run(Associator(threshold=3, window_s=10, weights=weights), [det("XX.A.", T0), det("XX.B.", T0 + 1)])
    assert [(e["state"], e["coincidence_sum"], e["n_stations"]) for e in out] == [("new", 3.0, 2), ("closed", 3.0, 2)]
    assert [s["weight"] for s in out[0]["stations"]] == [2.0, 1.0]
    out = run(Associator(threshold=3, window_s=10, weights=weights),
              [det("XX.B.", T0), det("XX.C.", T0 + 1), det("XX.Z.00", T0 + 2)])
    assert out == []
    assert Associator(weights={"UH1": 0.5}).weight("BW.UH1.") == 0.5  # STA alone also matches
    with pytest.raises(ConfigError, match="associate.weights"):
        Associator(weights={"XX.A": -1})
    with pytest.raises(ConfigError, match="associate.threshold"):
        Associator(threshold=0)


def test_event_grows_from_new_to_updated_to_closed() -> None:
    assoc = Associator(threshold=3, window_s=10, hold_s=5)
    seen: list[dict[str, Any]] = []
    seen += assoc.add(det("XX.A.", T0), "s")
    seen += assoc.add(det("XX.B.", T0 + 1), "s")
    assert seen == []  # two stations: below the threshold
    seen += assoc.add(det("XX.C.", T0 + 2), "s")
    assert seen == []  # held until the watermark (C's last_window_start T0 + 4) is hold_s past the onsets
    seen += assoc.advance(T0 + 8)
    assert [(e["state"], e["n_stations"]) for e in seen] == [("new", 3)]
    seen += assoc.add(det("XX.D.", T0 + 6), "s")
    seen += assoc.advance(T0 + 12)
    assert [(e["state"], e["n_stations"]) for e in seen] == [("new", 3), ("updated", 4)]
    seen += assoc.add(det("XX.A.", T0, state="closed", end=T0 + 14), "s")  # its last_window_start moves the clock
    assert assoc.open_events == 1 and len(seen) == 2
    seen += assoc.advance(T0 + 15.5)  # watermark - hold = seed + window_s + 0.5: nobody can join any more
    assert [(e["state"], e["n_stations"]) for e in seen] == [("new", 3), ("updated", 4), ("closed", 4)]
    assert len({e["id"] for e in seen}) == 1 and assoc.open_events == 0
    last = seen[-1]
    assert last["close_reason"] == "window" and last["end"] == m.iso_utc(T0 + 14)
    assert last["stations"][0]["end"] == m.iso_utc(T0 + 14)
    assert last["id"] == m.event_id("earthquake", "XX.A.", m.iso_utc(T0))
    for body in seen:
        m.validate_event(body, stamped=False)
    assert assoc.flush() == []


def test_two_events_close_in_time_and_a_failed_seed() -> None:
    """Two events 12 s apart stay apart; a lone pick before a group is dropped, not merged into it."""
    bodies = [det("XX.A.", T0), det("XX.B.", T0 + 1), det("XX.C.", T0 + 2),
              det("XX.A.", T0 + 12), det("XX.B.", T0 + 13), det("XX.C.", T0 + 14),
              det("XX.D.", T0 + 40), det("XX.A.", T0 + 46), det("XX.B.", T0 + 47), det("XX.C.", T0 + 51)]
    out = run(Associator(threshold=3, window_s=5, hold_s=3, retrigger_s=10), bodies)
    ev = closed(out)
    assert [e["first_onset"] for e in ev] == [m.iso_utc(T0), m.iso_utc(T0 + 12), m.iso_utc(T0 + 46)]
    assert [e["n_stations"] for e in ev] == [3, 3, 3]
    assert len({e["id"] for e in ev}) == 3
    assert [s["station"] for s in ev[2]["stations"]] == ["XX.A.", "XX.B.", "XX.C."]  # D at +40 was alone


def test_retriggers_count_once_and_do_not_make_a_second_event() -> None:
    bodies = [det("XX.A.", T0), det("XX.A.", T0 + 3), det("XX.B.", T0 + 4), det("XX.B.", T0 + 5)]
    assoc = Associator(threshold=2, window_s=10)
    ev = closed(run(assoc, bodies))
    assert len(ev) == 1 and ev[0]["coincidence_sum"] == 2.0
    assert assoc.stats["retriggers"] == 2
    # the same stations re-triggering 12-15 s later (a window model's trigger flickering over one signal) belong
    # to the first event; other stations 12 s later make their own event
    later = [det("XX.A.", T0 + 12), det("XX.B.", T0 + 14), det("XX.C.", T0 + 15)]
    others = [det("XX.C.", T0 + 12), det("XX.D.", T0 + 13)]
    assoc = Associator(threshold=2, window_s=5, retrigger_s=20)
    assert len(closed(run(assoc, bodies[::2] + later))) == 1 and assoc.stats["retriggers"] == 2
    ev = closed(run(Associator(threshold=2, window_s=5, retrigger_s=20), bodies[::2] + others))
    assert [e["first_onset"] for e in ev] == [m.iso_utc(T0), m.iso_utc(T0 + 12)]
    assert len(closed(run(Associator(threshold=2, window_s=5, retrigger_s=10), bodies[::2] + later))) == 2


def test_travel_time_bound_from_stationxml(tmp_path: Path) -> None:
    """With coordinates, two stations 2 km apart cannot be 8 s apart; 100 km apart they can."""
    from obspy.core.inventory import Inventory, Network, Station

    def inventory(c_lat: float) -> Path:
        stations = [Station("A", 48.0, 11.0, 500.0), Station("B", 48.01, 11.0, 500.0), Station("C", c_lat, 11.0, 0)]
        path = tmp_path / f"inv_{c_lat}.xml"
        Inventory([Network("XX", stations=stations)], source="test").write(str(path), format="STATIONXML")
        return path

    bodies = [det("XX.A.", T0), det("XX.B.", T0 + 1), det("XX.C.", T0 + 8)]
    near = station_coordinates(inventory(48.018))
    assert set(near) == {"XX.A", "XX.B", "XX.C"}
    assoc = Associator(threshold=3, window_s=10, coordinates=near)
    assert assoc.distance_km("XX.A.", "XX.C.") == pytest.approx(2.0, rel=0.01)
    assert closed(run(assoc, bodies)) == [] and assoc.stats["travel_time_rejects"] >= 1
    far = station_coordinates(str(inventory(48.9)))
    assert len(closed(run(Associator(threshold=3, window_s=10, coordinates=far), bodies))) == 1
    # no coordinates for a station: only the window bounds it
    assert len(closed(run(Associator(threshold=3, window_s=10, coordinates={"XX.A": (48, 11)}), bodies))) == 1


def test_watermark_waits_for_the_slowest_source_and_late_picks_still_join() -> None:
    assoc = Associator(threshold=2, window_s=5, hold_s=3, sources=["a", "b"])
    assert assoc.add(det("XX.A.", T0), "a") == []
    assert assoc.add(det("XX.A.", T0 + 100), "a") == []  # source a is far ahead; b said nothing yet
    out = assoc.add(det("XX.B.", T0 + 1.5), "b")
    assert out == []  # b's clock T0 + 3.5: not yet hold_s past B's onset (the watermark is min(a, b))
    out = assoc.advance(T0 + 10, "b")
    assert [(e["state"], e["n_stations"]) for e in out] == [("new", 2), ("closed", 2)]
    # a pick that comes after the watermark passed its onset joins the open event it fits
    assoc = Associator(threshold=2, window_s=10, hold_s=2)
    out = run(assoc, [det("XX.A.", T0), det("XX.B.", T0 + 1), det("XX.C.", T0 + 9, min_duration=0)], flush=False)
    out += assoc.add(det("XX.D.", T0 + 2), "s")  # late: the watermark is at T0 + 9 - 2
    out += assoc.flush()
    assert [(e["state"], e["n_stations"]) for e in out] == [("new", 2), ("updated", 3), ("updated", 4),
                                                              ("closed", 4)]
    assert assoc.stats["late_picks"] == 1 and out[-1]["close_reason"] == "flush"


def test_associator_from_config_section(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from quakemon.pipeline.associate import associator_from_config

    assert associator_from_config(SimpleNamespace(enabled=False)) is None
    assoc = associator_from_config(SimpleNamespace(enabled=True, threshold=2.5, window_s=7, weights={"UH1": 2}))
    assert (assoc.threshold, assoc.window_s, assoc.weight("BW.UH1."), assoc.hold_s) == (2.5, 7.0, 2.0, 10.0)
    with pytest.raises(ConfigError, match="associate.window_s"):
        associator_from_config(SimpleNamespace(enabled=True, window_s=-1))
    with pytest.raises(ConfigError, match="associate.inventory"):
        associator_from_config(SimpleNamespace(enabled=True, inventory=str(tmp_path / "missing.xml")))


def _network_bodies(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    bodies, t = [], T0
    for _ in range(12):
        t += rng.uniform(2, 30)
        for sta in rng.sample(["A", "B", "C", "D", "E"], rng.randint(1, 5)):
            onset = t + rng.uniform(0, 6)
            bodies.append(det(f"XX.{sta}.", onset))
            bodies.append(det(f"XX.{sta}.", onset, state="closed", end=onset + rng.uniform(5, 40)))
    bodies.sort(key=lambda b: (m.parse_iso_utc(b["last_window_start"]), b["station"]))
    return bodies


@pytest.mark.parametrize("seed", range(6))
def test_events_do_not_depend_on_how_two_publishers_interleave(seed: int) -> None:
    """Stations split over two sources, their messages interleaved at random: the same closed events."""
    bodies = _network_bodies(seed)
    reference = run(Associator(threshold=3, window_s=8, hold_s=5), bodies)
    assert closed(reference)  # the comparison must mean something
    rng = random.Random(seed + 100)
    streams = {"a": [b for b in bodies if b["station"] in ("XX.A.", "XX.B.")],
               "b": [b for b in bodies if b["station"] not in ("XX.A.", "XX.B.")]}
    assoc = Associator(threshold=3, window_s=8, hold_s=5, sources=["a", "b"])
    got: list[dict[str, Any]] = []
    while any(streams.values()):
        src = rng.choice([s for s, q in streams.items() if q])
        got += assoc.add(streams[src].pop(0), src)
    got += assoc.flush()
    assert summary(got) == summary(reference)


def test_listen_prints_events(capsys) -> None:
    from quakemon.tools.listen import event_text

    body = closed(run(Associator(threshold=2, window_s=5), [det("BW.UH1.", T0), det("BW.UH2.", T0 + 1)]))[0]
    body = m.Sequencer("ep").stamp(m.event_topic(body["id"]), body)
    line = event_text(body)
    assert "EVENT closed" in line and "2 stations" in line and "BW.UH1." in line and body["id"] in line
    assert m.parse_body(m.json_bytes(body)) == body


# ------------------------------------------------------------------------------------------- standalone process
def _free_tcp() -> str:
    return "tcp://127.0.0.1:0"


class _Stderr:
    """Reads a subprocess's JSON log lines on a thread, so waits on it can time out."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.put(line)

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") == event:
                return rec
        raise AssertionError(f"no {event!r} log line within {timeout} s")


def test_standalone_associator_over_two_tcp_publishers_matches_in_process() -> None:
    """Two Publishers (the "daemons") send recorded detections; `quakemon associate` subscribed to both over
    tcp://127.0.0.1 publishes the same closed events as the in-process Associator."""
    from quakemon.wire.publisher import Publisher

    bodies = _network_bodies(7)
    reference = run(Associator(threshold=3, window_s=8, hold_s=5), bodies)
    assert len(closed(reference)) >= 2
    ctx = zmq.Context()
    pubs = [Publisher(_free_tcp(), ctx, linger_ms=0), Publisher(_free_tcp(), ctx, linger_ms=0)]
    cmd = [sys.executable, "-m", "quakemon.service.associate_main", "--connect", pubs[0].endpoint, "--connect",
           pubs[1].endpoint, "--bind", "tcp://127.0.0.1:0", "--threshold", "3", "--window", "8", "--hold", "5",
           "--idle", "1.5", "--log-format", "json"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        log = _Stderr(proc)
        endpoint = log.wait_for("associate_bound", timeout=30)["endpoint"]
        sub.setsockopt_string(zmq.SUBSCRIBE, "")
        sub.connect(endpoint)
        # handshake: both "daemons" send heartbeats until the associator's heartbeat says it hears both
        deadline = time.monotonic() + 20
        ready = False
        while not ready and time.monotonic() < deadline:
            for pub in pubs:
                pub.publish_heartbeat({})
            if sub.poll(100):
                body = json.loads(sub.recv_multipart()[1])
                ready = body.get("schema") == m.HEARTBEAT_SCHEMA and body.get("sources_heard") == 2
        assert ready, "the associator never heard both publishers"
        split = {"XX.A.": 0, "XX.B.": 0}
        for body in bodies:
            pubs[split.get(body["station"], 1)].publish_detection(dict(body))
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while len(closed(events)) < len(closed(reference)) and time.monotonic() < deadline:
            if sub.poll(100):
                topic, raw = sub.recv_multipart()
                body = m.parse_body(raw)
                if body["schema"] == m.EVENT_SCHEMA:
                    assert topic.decode() == m.event_topic(body["id"])
                    events.append(body)
        assert summary(events) == summary(reference)
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    finally:
        sub.close(linger=0)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for pub in pubs:
            pub.close(0)
        ctx.term()
    assert proc.returncode == 0


def test_associate_main_usage_errors(capsys) -> None:
    from quakemon.service.associate_main import main

    assert main(["--connect", "tcp://127.0.0.1:1", "--bind", "tcp://127.0.0.1:0", "--threshold", "0"]) == 2
    assert "associate.threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--bind", "tcp://127.0.0.1:0"])  # --connect is required
    assert exc.value.code == 2


# ------------------------------------------------------------------------------- real data: ObsPy's UH network
def test_replay_of_obspy_uh_network_gives_one_event_for_the_local_earthquake(tmp_path: Path) -> None:
    """ObsPy's coincidence-trigger data (BW.UH1..UH4, 2010-05-27; UH1, UH2, UH4 vertical-only) replayed through
    the bundled model and associated with threshold 3 (the default window on pick times): the local event with P
    at 16:24:33 on all four stations is one event of >= 3 stations whose station picks each lie within 0.5 s of
    the catalogued P; every event is backed by >= 3 stations' detections; the micro-event at 16:25:26, which only
    UH1 and UH3 recorded, makes no event; no station has a late detection (S wave or coda: a pick 10-60 s after a
    catalogued P), and every catalogued P has at most one detection."""
    import shutil

    import numpy as np

    from quakemon.data import realdata
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.runner import replay

    model = tmp_path / "model.safetensors"
    shutil.copyfile(resolve_checkpoint(None), model)  # the bundled file may be rewritten while training
    ckpt = load_checkpoint(model)
    assert ckpt.contract.accepts("Z"), f"the bundled model must serve vertical-only stations: {ckpt.contract}"
    recs = [r for r in realdata.local_events() if r.name.startswith("uh_")]
    assert sorted(r.components for r in recs) == ["Z", "Z", "Z", "ZNE"]
    paths = []
    for rec in recs:
        st = realdata.load(rec)
        for tr in st:
            tr.data = np.round(tr.data).astype(np.int32)
        paths.append(str(tmp_path / f"{rec.station}.mseed"))
        st.write(paths[-1], format="MSEED", reclen=512, encoding="STEIM2")
    result = replay(paths, ckpt, progress=False, keep_series=True)
    assert result.stats["reduced_stations"] == 3  # UH1, UH2, UH4 served vertical-only
    detections = [d for d in result.detections if d["schema"] == m.DETECTION_SCHEMA]
    assoc = Associator(threshold=3, retrigger_s=ckpt.contract.window_seconds)
    events: list[dict[str, Any]] = []
    for body in detections:
        events += assoc.add(body)
    events += assoc.flush()

    def diagnosis() -> str:
        picks = [(d["station"], d["onset"][11:22], round(d["probability"], 3)) for d in detections
                 if d["state"] == "new"]
        peaks = {s: round(float(np.max(np.array(v.probabilities)[:, 1])), 3) for s, v in sorted(result.series.items())}
        found = [(e["first_onset"][11:22], e["n_stations"]) for e in closed(events)]
        return f"picks {picks}; peak p per station {peaks}; events {found}"

    p_time = m.parse_iso_utc("2010-05-27T16:24:33Z")
    window_s = ckpt.contract.window_seconds
    first = [e for e in closed(events) if p_time - window_s - 1 <= m.parse_iso_utc(e["first_onset"]) <= p_time + 10]
    assert len(first) == 1, diagnosis()
    assert first[0]["n_stations"] >= 3, diagnosis()
    catalogue = {r.station: [p.timestamp for p in r.p_times] for r in recs}
    for row in first[0]["stations"]:
        assert row["pick"]["time"] == row["onset"] and row["pick"]["phase"] == "P"
        assert min(abs(m.parse_iso_utc(row["onset"]) - p) for p in catalogue[row["station"]]) <= 0.5, diagnosis()
    for d in detections:
        if d["state"] != "new":
            continue
        t = m.parse_iso_utc(d["onset"])
        ps = catalogue[d["station"]]
        late = not any(abs(t - p) <= 10.0 for p in ps) and any(10.0 < t - p <= 60.0 for p in ps)
        assert not late, ("late", d["station"], d["onset"], diagnosis())
    for station, ps in catalogue.items():
        for p in ps:
            near = [d for d in detections if d["state"] == "new" and d["station"] == station
                    and abs(m.parse_iso_utc(d["onset"]) - p) <= 10.0]
            assert len(near) <= 1, ("one detection per event and station", diagnosis())
    new = {d["id"]: d for d in detections if d["state"] == "new"}
    for ev in closed(events):
        assert ev["coincidence_sum"] >= 3 and len({s["station"] for s in ev["stations"]}) >= 3
        for s in ev["stations"]:
            assert new[s["detection_id"]]["station"] == s["station"] and new[s["detection_id"]]["onset"] == s["onset"]
    micro = m.parse_iso_utc("2010-05-27T16:25:26.7Z")
    assert not [e for e in closed(events) if micro - window_s - 1 <= m.parse_iso_utc(e["first_onset"]) <= micro + 5], \
        diagnosis()


# ------------------------------------------------------------------------ replay drives association like live
def test_replay_feeds_each_batch_then_advances_the_clock_like_the_live_inference_stage(tiny_checkpoint) -> None:
    """The live inference stage feeds a micro-batch's detections to the associator, then advances it to the
    batch's newest window start; the replay's runner does the same per batch, so events close on the data
    clock in both, not only when further detections come."""
    import numpy as np
    import obspy

    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline.runner import DetectionRunner, Inference, interleaved

    calls: list[tuple[str, float]] = []

    class Recording(Associator):
        def add(self, body, source=None):
            calls.append(("add", m.parse_iso_utc(body["last_window_start"])))
            return super().add(body, source)

        def advance(self, data_time, source=None):
            calls.append(("advance", data_time))
            return super().advance(data_time, source)

    ckpt = load_checkpoint(tiny_checkpoint)
    st = obspy.read()
    with Inference(ckpt, precision="fp32", overlap=False) as inference:
        probe = DetectionRunner(ckpt, keep_series=True, inference=inference)
        list(probe.add_samples(interleaved(st))) + probe.finish()
        on = float(np.quantile(np.asarray(probe.series["BW.RJOB."].probabilities)[:, 1], 0.5))
        # one window per 1 s piece, batches of 4: windows 0-3, 4-7, 8-10
        runner = DetectionRunner(ckpt, keep_series=True, on=on, off=on, min_duration_s=0.0, batch_size=4,
                                 associator=Recording(threshold=1, hold_s=0.0), inference=inference,
                                 screen_every=1)  # (screening holds windows back and the clock with them)
        bodies = list(runner.add_samples(interleaved(st, chunk_s=1.0))) + runner.finish()
    starts = np.asarray(runner.series["BW.RJOB."].start_ns) / 1e9
    assert len(starts) == 11
    adds = [t for kind, t in calls if kind == "add"]
    advances = [t for kind, t in calls if kind == "advance"]
    assert adds and len(adds) == sum(b["schema"] == m.DETECTION_SCHEMA for b in bodies)
    assert advances == [starts[3], starts[7], starts[10]]
    # a batch's detections reach the associator before the batch's advance, and after the previous one's
    lower = -np.inf
    for kind, t in calls:
        if kind == "advance":
            lower = t
        else:
            assert t > lower or t == advances[-1], calls  # (the triggers' flush after the last batch: its window)
    flushed = [b for b in bodies if b.get("close_reason") == "flush" and b["schema"] == m.DETECTION_SCHEMA]
    assert calls[len(calls) - len(flushed) - 1] == ("advance", advances[-1])
    assert any(b["schema"] == m.EVENT_SCHEMA for b in bodies)
