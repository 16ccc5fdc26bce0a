"""`quakemon demo`: the whole system on bundled real recordings, in about a minute, with no network.

1. `quakemon serve` (in-process) streams the bundled archive (quakemon/assets/demo: five real stations from
   ObsPy's test data, three of them recording local earthquakes) over SeedLink on 127.0.0.1.
2. `quakemon run` starts as a real daemon subprocess against it, with the bundled model.
3. A subscriber prints each detection as it is published: its P pick (UTC date and time, uncertainty, method)
   and its latency.
4. When the archive has been streamed, the daemon gets SIGTERM; the demo prints a summary (detections against
   the catalogue P arrivals) and writes a PNG of waveforms, probabilities and detections.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from quakemon.base.net import free_port
from quakemon.wire.schema import parse_iso_utc

DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"
#: A detection whose P pick lies within this many seconds of a catalogued P detected it.
MATCH_S = 10.0


def _picks() -> dict[str, list[float]]:
    from obspy import UTCDateTime

    picks: dict[str, list[float]] = {}
    lines = (DEMO_DIR / "demo_picks.csv").read_text().splitlines()[1:]
    for line in lines:
        net, sta, loc, p = line.split(",")
        picks.setdefault(f"{net}.{sta}.{loc}", []).append(UTCDateTime(p).timestamp)
    return picks


def _config(tmp: Path, server: str, streams: list[str], publish: str) -> Path:
    path = tmp / "demo.toml"
    path.write_text(
        "[seedlink]\n"
        f'server = "{server}"\nstreams = {json.dumps(streams)}\nstate_file = "{tmp / "seedlink.state"}"\n'
        "netto = 10.0\n\n"
        f'[pipeline]\nruntime_dir = "{tmp}"\n\n'
        f'[publish]\nendpoint = "{publish}"\n\n'
        '[logging]\nlevel = "warning"\nformat = "console"\n'
    )
    return path


def _line(body: dict) -> str:
    lat = body.get("latency_s")
    lat_s = f"latency {lat:.2f} s" if isinstance(lat, int | float) else ""
    end = f" end {body['end'][11:22]}" if body.get("end") else ""
    pick = body.get("pick") or {}
    quality = f" ±{pick['uncertainty_s']:.2f} s {pick['method']}" if pick else ""
    return (f"  {body['state']:>6}  {body['station']:<12} {body['label']} p={body['probability']:.2f} "
            f"(peak {body['peak_probability']:.2f})  P {body['onset'][:10]} {body['onset'][11:22]}{quality}{end}  "
            f"{lat_s}")


def run_demo(duration_s: float | None = None, plot: str | None = "quakemon-demo.png", speed: float = 2.0) -> int:
    from obspy import read

    from quakemon.base.logs import configure_logging
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.tools.serve import SeedLinkServer
    from quakemon.tools.serve_records import load_records

    configure_logging("warning", "console")
    files = sorted(DEMO_DIR.glob("*.mseed"))
    ckpt_path = resolve_checkpoint(None)
    archive = read(str(DEMO_DIR / "*.mseed"))
    span = max(tr.stats.endtime for tr in archive) - min(tr.stats.starttime for tr in archive)
    streams = sorted({f"{tr.stats.network}.{tr.stats.station}.{tr.stats.location}.{tr.stats.channel[:2]}?"
                      for tr in archive})
    picks = _picks()
    print(f"quakemon demo: {len(streams)} stations of real recordings ({span:.0f} s), bundled model "
          f"{ckpt_path.name}, streamed at {speed:g}x real time")

    records = load_records(files)
    server = SeedLinkServer(records, host="127.0.0.1", port=0, speed=speed).start()
    tmp = Path(tempfile.mkdtemp(prefix="quakemon-demo-"))
    publish = f"tcp://127.0.0.1:{free_port()}"
    config = _config(tmp, server.address, streams, publish)
    print(f"  serving on {server.address}; daemon publishes on {publish}; logs in {tmp / 'daemon.log'}")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(publish)
    log_file = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - closed in finally
    daemon = subprocess.Popen([sys.executable, "-m", "quakemon", "run", "--config", str(config)],
                              stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    detections: list[dict] = []
    start = time.monotonic()
    deadline = start + (duration_s if duration_s else 45.0 + span / max(speed, 0.1))
    stream_end: float | None = None
    last_windows, quiet_since = -1, None
    heartbeat = None
    code = 0
    try:
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                print(f"  daemon exited early with code {daemon.returncode}; see {tmp / 'daemon.log'}")
                code = 1
                break
            if sub.poll(200):
                topic, body = sub.recv_multipart()
                msg = json.loads(body)
                if topic.startswith(b"detection."):
                    detections.append(msg)
                    print(_line(msg), flush=True)
                elif topic == b"heartbeat":
                    if heartbeat is None:
                        print(f"  daemon ready after {time.monotonic() - start:.1f} s (device {msg.get('device')}, "
                              f"precision {msg.get('precision')})", flush=True)
                    heartbeat = msg
            if stream_end is None and server.packets_sent >= len(records):
                stream_end = time.monotonic()
            if stream_end is not None and heartbeat is not None:
                if heartbeat.get("windows_out") != last_windows:
                    last_windows, quiet_since = heartbeat.get("windows_out"), time.monotonic()
                elif quiet_since is not None and time.monotonic() - quiet_since > 3.0:
                    break
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
                code = 1
    finally:
        sub.close(0)
        ctx.term()
        server.stop()
        log_file.close()
    _summary(detections, heartbeat, picks)
    if plot:
        _plot(archive, load_checkpoint(ckpt_path), detections, picks, plot)
    if daemon.returncode not in (0, None) and code == 0:
        print(f"  daemon exit code {daemon.returncode}; see {tmp / 'daemon.log'}")
        code = 1
    return code


def _summary(detections: list[dict], heartbeat: dict | None, picks: dict[str, list[float]]) -> None:
    new = [d for d in detections if d["state"] == "new"]
    hits = 0
    print("\nsummary")
    if heartbeat:
        print(f"  windows inferred {heartbeat.get('windows_out')}, dropped {heartbeat.get('dropped')}, "
              f"stations {heartbeat.get('stations')}")
    for station in sorted(set(picks) | {d["station"] for d in new}):
        ps = picks.get(station, [])
        mine = [parse_iso_utc(d["onset"]) for d in new if d["station"] == station]  # the detections' P picks
        matched = [p for p in ps if any(abs(o - p) <= MATCH_S for o in mine)]
        hits += len(matched)
        errors = [min(mine, key=lambda o, p=p: abs(o - p)) - p for p in matched]
        false = [o for o in mine if not any(abs(o - p) <= MATCH_S for p in ps)]
        what = f"{len(ps)} catalogued earthquake(s)" if ps else "noise only"
        err = f", pick - P {', '.join(f'{e:+.2f} s' for e in errors)}" if errors else ""
        print(f"  {station:<12} {what:<26} detected {len(matched)}/{len(ps)}{err}, other detections {len(false)}")
    lat = [d["latency_s"] for d in new if isinstance(d.get("latency_s"), int | float)]
    if lat:
        print(f"  latency (window's last sample arrival -> publication): max {max(lat):.2f} s")
    print(f"  {hits} real earthquake(s) detected of {sum(len(v) for v in picks.values())}")


def _plot(archive, ckpt, detections, picks, png) -> None:
    """Probabilities from an in-process replay of the same archive, with the detections received live."""
    from quakemon.pipeline.runner import DetectionRunner
    from quakemon.tools.plot import plot_detections

    runner = DetectionRunner(ckpt, keep_series=True)
    list(runner.add_traces(archive.copy()))
    runner.finish()
    path = plot_detections(archive, runner.series, detections, ckpt.labels, png, picks=picks,
                           title="quakemon demo: live detections on real recordings")
    print(f"  plot written to {os.path.abspath(path)}")
