"""Network events live and in replay: `quakemon serve` -> `quakemon run` with [associate] on, against `quakemon replay`.

The archive holds four stations with the same waveforms, each shifted by one second more (obspy.read()'s BW.RJOB
event followed by two minutes of noise), so every trigger is seen by four stations within four seconds. The
events come from the associator in the daemon's inference stage (collected over ZeroMQ) and from the replay of the
same archive; their closed messages must agree in everything that follows from the picks and the data clock:
ids, stations, onsets, detection ids, coincidence sums and why they closed; and so must the detections' ids and P
picks (to the sample; the daemon's inference stage picks the samples the preprocess stage passes on beside the
spectra, the replay the windows it stacked, through the same `DetectionStage`). The station rows' `end` and
`peak_probability` are left out: they depend on whether a station's "closed" detection came before the event
closed, and live micro-batches are smaller than the replay's batches.

After the event the stations' triggers close and no detection follows: the event closes when the data clock
passes it (close_reason "window"). The daemon's inference stage moves that clock after every micro-batch; the
replay must do the same, or it closes the event only when its data ends ("flush").
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from support.pipeline import (
    Proc,
    Subscriber,
    craft_checkpoint,
    free_port,
    replay_series,
    start_daemon,
    start_server,
    wait_for,
    write_config,
    write_event_network,
)

from quakemon.pipeline.settings import ASSOCIATION
from quakemon.wire.schema import DETECTION_SCHEMA, EVENT_SCHEMA, parse_iso_utc, validate_event

STATIONS = ("RJOB", "RJB2", "RJB3", "RJB4")
BLOCKS = (True, False, False, False, False)  # 30 s blocks: the RJOB event, then noise -> 150 s per station
SPEED = 20.0
START_TIMEOUT = 120.0
ASSOCIATE = {"enabled": True, "threshold": 3.0}  # window_s and hold_s: the defaults
WINDOW_S = 20.0  # the tiny checkpoint's window length


def write_network_archive(path: Path) -> tuple[Path, float, float]:
    """Every station's channels: BLOCKS of obspy.read()'s data or noise, rolled by k seconds for the k-th station."""
    return write_event_network(path, STATIONS, BLOCKS, seed=0)


def threshold(checkpoint: Path, archive: Path, start: float, span: float) -> float:
    """on = off halfway between the highest probability of a window inside the noise and the next observed one,
    so that noise never triggers and the event does (the margin is far above live/replay float differences)."""
    _, series = replay_series(checkpoint, [archive])
    noise, event = [], []
    for s in series.values():
        t = np.asarray(s.start_ns) / 1e9 - start
        p = np.asarray(s.probabilities, np.float64)[:, 1]
        noise.append(p[(t >= 40) & (t <= span - WINDOW_S)])
        event.append(p[t <= 10])
    noise_max = max(float(x.max()) for x in noise)
    above = np.unique(np.concatenate(noise + event))
    above = above[above > noise_max]
    assert above.size and above[0] - noise_max > 2e-3, (noise_max, above[:3])
    on = (noise_max + float(above[0])) / 2
    assert all((x > on).sum() >= 3 for x in event), "the event must trigger at every station"
    return on


def closed_events(bodies: list[dict], until: float) -> dict[str, dict]:
    """id -> the fields of its closed message that follow from picks and data time, for events seeded before
    `until` (POSIX s)."""
    out = {}
    for b in bodies:
        if b["state"] != "closed" or parse_iso_utc(b["first_onset"]) >= until:
            continue
        out[b["id"]] = {
            "label": b["label"], "first_onset": b["first_onset"], "last_onset": b["last_onset"],
            "n_stations": b["n_stations"], "coincidence_sum": b["coincidence_sum"],
            "close_reason": b.get("close_reason"),
            "stations": [(r["station"], r["onset"], r["detection_id"], r["weight"]) for r in b["stations"]],
        }
    return out


def detection_picks(bodies: list[dict], until: float) -> dict[tuple[str, str], dict]:
    """(detection id, state) -> its pick, for detections picked before `until` (POSIX s)."""
    return {(b["id"], b["state"]): b["pick"] for b in bodies if parse_iso_utc(b["onset"]) < until}


def row_probabilities(bodies: list[dict], ids: set[str]) -> dict[tuple[str, str], float]:
    return {(b["id"], r["station"]): r["probability"] for b in bodies if b["state"] == "closed" and b["id"] in ids
            for r in b["stations"]}


@dataclass
class Env:
    dir: Path
    archive: Path
    checkpoint: Path
    start: float
    span: float
    on: float


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoint) -> Env:
    d = tmp_path_factory.mktemp("events")
    archive, start, span = write_network_archive(d / "network.mseed")
    ckpt = craft_checkpoint(tiny_checkpoint, d / "crafted.safetensors", archive)
    return Env(d, archive, ckpt, start, span, threshold(ckpt, archive, start, span))


def test_live_and_replay_publish_the_same_events(env: Env):
    server, port = start_server(env.archive, env.dir, speed=SPEED)
    publish = free_port()
    config = write_config(
        env.dir / "events.toml", server_port=port, checkpoint=env.checkpoint, runtime_dir=env.dir / "rt",
        publish_port=publish, on=env.on, off=env.on,
        extra={"seedlink": {"streams": [f"BW.{s}..EH?" for s in STATIONS]}, "associate": ASSOCIATE})
    sub = Subscriber(f"tcp://127.0.0.1:{publish}")  # connects before the publisher binds: it misses nothing
    daemon = start_daemon(config, env.dir, "events")
    out = env.dir / "replay.jsonl"
    replay = Proc([sys.executable, "-m", "quakemon.cli.app", "replay", str(env.archive), "--config", str(config),
                   "--output", str(out), "--quiet"], env.dir, "replay")
    try:
        assert replay.wait(180) == 0, replay.stderr()[-3000:]
        replayed = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        # events seeded before `until` close inside the archive: seed + window_s + hold_s + a window <= its end
        until = env.start + env.span - ASSOCIATION.window_s - ASSOCIATION.hold_s - WINDOW_S
        expected = closed_events([b for b in replayed if b["schema"] == EVENT_SCHEMA], until)
        assert expected and all(e["n_stations"] == len(STATIONS) for e in expected.values()), expected

        daemon.wait_event("daemon_ready", START_TIMEOUT)

        def live_events() -> list[dict]:
            return sub.bodies("event.")

        def data_clock() -> float:  # the newest window the daemon inferred, from its heartbeats' windows_out
            beats = sub.bodies("heartbeat")
            return max((b["windows_out"] for b in beats), default=0) / len(STATIONS)

        # every replayed event closed live, and the first pass's data went through (no other event of it is late)
        wait_for(lambda: expected.keys() <= closed_events(live_events(), until).keys(), 120,
                 "the replayed events, closed by the daemon")
        wait_for(lambda: data_clock() >= env.span - WINDOW_S + 1, 60, "the first pass through the daemon")
        time.sleep(1.0)  # the heartbeat counts windows a moment before their events go out
        live = live_events()
        for body in live:
            validate_event(body)
        assert closed_events(live, until) == expected
        assert {e["close_reason"] for e in expected.values()} == {"window"}  # by the data clock, as live
        ids = set(expected)
        live_p, replay_p = row_probabilities(live, ids), row_probabilities(replayed, ids)
        assert live_p.keys() == replay_p.keys()
        assert all(abs(live_p[k] - replay_p[k]) <= 1e-4 for k in live_p), (live_p, replay_p)
        # the detections: the same ids and picks (to the sample) live and in replay, and the events list them
        live_picks = detection_picks(sub.bodies("detection."), until)
        replay_picks = detection_picks([b for b in replayed if b["schema"] == DETECTION_SCHEMA], until)
        assert len(replay_picks) >= len(STATIONS)
        assert live_picks.keys() == replay_picks.keys()
        for key, pick in replay_picks.items():
            assert live_picks[key]["time"] == pick["time"] and live_picks[key]["method"] == pick["method"]
            assert live_picks[key]["uncertainty_s"] == pytest.approx(pick["uncertainty_s"], abs=1e-3)
        rows = [r for b in live if b["id"] in ids and b["state"] == "closed" for r in b["stations"]]
        assert rows and all(r["pick"] == live_picks[(r["detection_id"], "new")] for r in rows)
    finally:
        replay.stop()
        code = daemon.stop()
        sub.close()
        server.stop()
    assert code == 0, daemon.stderr()[-3000:]
