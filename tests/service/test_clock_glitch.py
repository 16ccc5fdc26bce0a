"""A station whose clock runs 1 h ahead for 60 s, among ten: replay and the live daemon keep detecting.

Ten stations carry the same waveforms (obspy.read()'s BW.RJOB event at 0 s and at 120 s, noise between), each
rolled by one second more. The records of station G00 that start in [60, 120) s are stamped 3600 s later (on the
wire for the live daemon, in the file for the replay): its samples of that minute are lost, the records after
it are correctly timed again. The references are the same archive without those records (the lost minute is a
hole) and the archive with every record correctly timed. The replay must give both references' windows and
probabilities except G00's around its glitch; every station detects, G00 after its glitch too,
nothing is detected an hour late, and the glitch is counted and logged, live as in replay.
"""

from __future__ import annotations

import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.pipeline import (
    Subscriber,
    craft_checkpoint,
    free_port,
    start_daemon,
    wait_for,
    write_config,
    write_event_network,
)

from quakemon.tools.serve import SeedLinkServer
from quakemon.tools.serve_records import Faults, load_records, retime_record
from quakemon.wire.schema import parse_iso_utc

STATIONS = tuple(f"G{k:02d}" for k in range(10))
BLOCKS = (True, False, False, False, True, False)  # 30 s blocks: event, noise x3, event, noise -> 180 s
GLITCH = (60.0, 120.0)  # s after the start: G00's records stamped SHIFT_S later
SHIFT_S = 3600.0
WINDOW_S = 20.0
SPEED = 12.0
START_TIMEOUT = 120.0


def write_network(path: Path) -> tuple[Path, float, float]:
    return write_event_network(path, STATIONS, BLOCKS, seed=1)


def glitched(raw: bytes, start: float, station: str, t0: float) -> bool:
    return station == STATIONS[0] and GLITCH[0] <= start - t0 < GLITCH[1]


def shift(raw: bytes, little: bool) -> bytes:
    return retime_record(raw, int(SHIFT_S * 10_000), little)


def replay(checkpoint: Path, path: Path, on: float) -> tuple[list[dict], dict[str, int], dict[str, Any]]:
    """(detections, runner counters, {station: probability series})."""
    from quakemon.ingest.archive import ArchiveSource
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline.runner import DetectionRunner

    runner = DetectionRunner(load_checkpoint(checkpoint), device="cpu", precision="fp32", on=on, off=on,
                             min_duration_s=0.0, keep_series=True)
    source = ArchiveSource([str(path)], None)
    try:
        dets = list(runner.add_traces(source.traces(threading.Event()))) + runner.finish()
    finally:
        source.close()
    return [d for d in dets if "onset" in d], runner.stats, runner.series


def opened(d: dict) -> tuple:
    return (d["station"], d["id"], d["onset"])


@dataclass
class Env:
    dir: Path
    clean: Path  # every record correctly timed
    glitch: Path  # G00's minute stamped an hour late
    hole: Path  # G00's minute left out
    checkpoint: Path
    start: float
    span: float
    on: float


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoint) -> Env:
    d = tmp_path_factory.mktemp("glitch")
    clean, start, span = write_network(d / "clean.mseed")
    records = load_records([clean])
    bad = [glitched(r.raw, r.start, r.sta, start) for r in records]
    assert 20 <= sum(bad) <= 60
    (d / "glitch.mseed").write_bytes(b"".join(shift(r.raw, r.little_endian) if b else r.raw
                                              for r, b in zip(records, bad, strict=True)))
    (d / "hole.mseed").write_bytes(b"".join(r.raw for r, b in zip(records, bad, strict=True) if not b))
    ckpt = craft_checkpoint(tiny_checkpoint, d / "crafted.safetensors", clean)
    on = threshold(ckpt, clean, start)
    return Env(d, clean, d / "glitch.mseed", d / "hole.mseed", ckpt, start, span, on)


def threshold(checkpoint: Path, archive: Path, start: float) -> float:
    """Halfway between the highest probability inside the noise and the next observed one (events trigger)."""
    from support.pipeline import replay_series

    _, series = replay_series(checkpoint, [archive])
    noise, event = [], []
    for s in series.values():
        t = np.asarray(s.start_ns) / 1e9 - start
        p = np.asarray(s.probabilities, np.float64)[:, 1]
        noise.append(p[(t >= 40) & (t <= 100 - WINDOW_S)])
        event.append(p[t <= 10])
    noise_max = max(float(x.max()) for x in noise)
    above = np.unique(np.concatenate(noise + event))
    above = above[above > noise_max]
    assert above.size and above[0] - noise_max > 2e-3, (noise_max, above[:3])
    return (noise_max + float(above[0])) / 2


def outside_glitch(series: dict[str, Any], start: float) -> dict[tuple[str, int], float]:
    """p(earthquake) per (station, window end): every station's windows but G00's from the glitch to one window
    after it (the station restarts there, and windows around a restart may differ with the record order)."""
    lo, hi = round((start + GLITCH[0]) * 1e9), round((start + GLITCH[1] + WINDOW_S) * 1e9)
    out = {}
    for station, s in series.items():
        for a, b, p in zip(s.start_ns, s.end_ns, np.asarray(s.probabilities, np.float64)[:, 1], strict=True):
            if station.split(".")[1] != STATIONS[0] or b <= lo or a >= hi:
                out[(station, int(b))] = float(p)
    return out


def test_replay_rejects_the_excursion_and_detects_as_without_it(env: Env):
    dets, stats, series = replay(env.checkpoint, env.glitch, env.on)
    _, hole_stats, hole_series = replay(env.checkpoint, env.hole, env.on)
    _, _, clean = replay(env.checkpoint, env.clean, env.on)
    assert stats["clock_glitch"] > 0 and stats["clock_glitches"] == 1 and stats.get("rate_resets", 0) == 0
    assert hole_stats.get("clock_glitch", 0) == 0
    # the same windows and probabilities as without those records and as with them correctly timed, except
    # G00's around its glitch (probabilities, not detections: the runner sizes its batches by timing, and where
    # a detection closes can move with float-level differences between batches)
    got, want, without = (outside_glitch(s, env.start) for s in (series, clean, hole_series))
    assert got.keys() == want.keys() == without.keys()
    assert max(abs(got[k] - want[k]) for k in got) < 1e-4
    assert max(abs(got[k] - without[k]) for k in got) < 1e-4
    assert {d["station"] for d in dets} == {f"BW.{s}." for s in STATIONS}  # every station detects, G00 too
    assert any(d["station"] == f"BW.{STATIONS[0]}." and parse_iso_utc(d["onset"]) > env.start + GLITCH[1]
               for d in dets), "G00 detects the event after its glitch"
    assert all(parse_iso_utc(d["onset"]) < env.start + env.span for d in dets)  # nothing an hour late


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_live_daemon_rejects_the_excursion_and_detects_as_the_replay(env: Env):
    expected, _, _ = replay(env.checkpoint, env.hole, env.on)
    records = load_records([env.clean])
    bad_seq = {i for i, r in enumerate(records) if glitched(r.raw, r.start, r.sta, env.start)}
    little = {i: r.little_endian for i, r in enumerate(records)}

    def mutate(seq: int, raw: bytes) -> bytes:
        return shift(raw, little[seq]) if seq in bad_seq else raw

    server = SeedLinkServer(records, speed=SPEED, loop=False, faults=Faults(mutate=mutate)).start()
    publish = free_port()
    config = write_config(env.dir / "live.toml", server_port=server.port, checkpoint=env.checkpoint,
                          runtime_dir=env.dir / "rt", publish_port=publish, on=env.on, off=env.on,
                          extra={"seedlink": {"streams": [f"BW.{s}..EH?" for s in STATIONS]},
                                 "metrics": {"listen": "127.0.0.1:0"}})
    sub = Subscriber(f"tcp://127.0.0.1:{publish}")
    daemon = start_daemon(config, env.dir, "live")
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)
        (serving,) = daemon.wait_event("metrics_serving", 5)
        # every station detects the first event, G00 the second one too (after its glitch), nothing comes an
        # hour late; the detections are the replay's (detection-level equality is left out: where a detection
        # closes can move with float-level differences between live micro-batches and the replay's batches)
        g00 = f"BW.{STATIONS[0]}."
        after = [opened(d) for d in expected if d["state"] == "new" and d["station"] == g00
                 and parse_iso_utc(d["onset"]) > env.start + GLITCH[1]]
        assert after

        def live() -> set[tuple] | None:
            got = {opened(b) for b in sub.bodies("detection.") if b["state"] == "new"}
            return got if set(after) <= got and {g[0] for g in got} == {f"BW.{s}." for s in STATIONS} else None

        got = wait_for(live, env.span / SPEED + 90, "detections of every station, G00's after its glitch",
                       interval=0.5)
        assert all(parse_iso_utc(onset) < env.start + env.span for _, _, onset in got)
        replayed = {opened(d) for d in expected if d["state"] == "new"}
        assert len(got & replayed) >= len(replayed) - 2, (sorted(got - replayed), sorted(replayed - got))
        (glitch,) = daemon.wait_event("clock_glitch", 10)
        assert glitch["station"] == f"BW.{STATIONS[0]}." and glitch["records"] == len(bad_seq)
        metrics = wait_for(lambda: (m := scrape(int(serving["port"])))
                           .get(("quakemon_records_rejected_total", (("reason", "clock_glitch"),))) and m,
                           10, "clock_glitch in /metrics", interval=0.5)
        assert metrics[("quakemon_records_rejected_total", (("reason", "clock_glitch"),))] == len(bad_seq)
    finally:
        code = daemon.stop()
        sub.close()
        server.stop()
    assert code == 0, daemon.stderr()[-3000:]
