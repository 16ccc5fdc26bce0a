"""[trigger] calibration in the running daemon: `quakemon serve` -> `quakemon run` on a noisy station.

The archive is 18 minutes of Gaussian noise at one station, and the crafted model's probabilities on it spread
over (0, 1), so with `on` at the 95th percentile of the noise windows' probabilities the plain trigger keeps
firing all along. With `calibration = "rate"` (a 10-minute history) the station triggers at `on` until its
history is full; from then on its threshold is the lowest that its last 10 minutes crossed at most once a day,
above the noise, and the detections stop (a later noise window higher than any of the last 10 minutes may still
cross it, rarely). The threshold in effect reaches /metrics as quakemon_trigger_on.
"""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.pipeline import (
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

from quakemon.pipeline.settings import CalibrationSettings
from quakemon.wire.schema import parse_iso_utc

BLOCKS = (False,) * 36  # 30 s blocks of noise: 18 minutes
HISTORY_S = 600.0
SETTLED_S = HISTORY_S + 60.0  # the warm-up, then the next slot (a twelfth of the history) has begun
SPEED = 20.0
WINDOW_S = 20.0  # the tiny checkpoint's window length


def onsets(bodies: list[dict]) -> list[float]:
    return [parse_iso_utc(b["onset"]) for b in bodies if b.get("state") == "new"]


def trigger_on(port: int) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = [s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == "quakemon_trigger_on" and s.labels.get("station") == "BW.RJOB."]
    return values[0] if values else None


@pytest.mark.timeout(300)
def test_calibration_stops_a_noisy_stations_detections_once_warmed_up(tmp_path, tiny_checkpoint):
    archive, start, span = write_event_network(tmp_path / "noise.mseed", ("RJOB",), BLOCKS, seed=11)
    ckpt = craft_checkpoint(tiny_checkpoint, tmp_path / "crafted.safetensors", archive)
    _, series = replay_series(ckpt, [archive])
    (s,) = series.values()
    on = float(np.quantile(np.asarray(s.probabilities, np.float64)[:, 1], 0.95))
    plain, _ = replay_series(ckpt, [archive], on=on, off=on)
    calibrated, _ = replay_series(ckpt, [archive], on=on, off=on,
                                  calibration=CalibrationSettings(mode="rate", history_s=HISTORY_S))
    settled = start + SETTLED_S
    plain_late = [t for t in onsets(plain) if t >= settled]
    assert len(plain_late) >= 5, onsets(plain)  # the noise keeps crossing `on` after the warm-up
    assert len([t for t in onsets(calibrated) if t >= settled]) <= 2, onsets(calibrated)
    assert [t for t in onsets(calibrated) if t < start + HISTORY_S]  # the warm-up triggers at `on`

    server, port = start_server(archive, tmp_path, speed=SPEED, loop=False)
    publish, metrics = free_port(), free_port()
    config = write_config(tmp_path / "cal.toml", server_port=port, checkpoint=ckpt, runtime_dir=tmp_path / "rt",
                          publish_port=publish, on=on, off=on,
                          extra={"seedlink": {"streams": ["BW.RJOB..EH?"]},
                                 "metrics": {"listen": f"127.0.0.1:{metrics}"},
                                 "trigger": {"calibration": "rate", "calibration_history": HISTORY_S}})
    sub = Subscriber(f"tcp://127.0.0.1:{publish}")
    daemon = start_daemon(config, tmp_path, "cal")
    try:
        daemon.wait_event("daemon_ready", 120)

        def data_clock() -> float:  # windows the daemon inferred, from its heartbeats
            return max((b["windows_out"] for b in sub.bodies("heartbeat")), default=0)

        wait_for(lambda: data_clock() >= span - WINDOW_S - 5, span / SPEED + 90, "the archive through the daemon")
        live = onsets(sub.bodies("detection."))
        assert [t for t in live if t < start + HISTORY_S], live  # at `on` while warming up
        assert len([t for t in live if t >= settled]) <= 2, live  # then the calibrated threshold holds
        assert wait_for(lambda: (v := trigger_on(metrics)) is not None and v > on and v, 30,
                        "the calibrated on in /metrics") > on
    finally:
        sub.close()
        code = daemon.stop()
        server.stop()
    assert code == 0, daemon.stderr()[-3000:]
