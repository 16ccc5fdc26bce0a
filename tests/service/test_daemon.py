"""The supervisor and the stage loops: unit tests in-process, then fault runs of `quakemon run` on loopback.

Fault runs: a hung stage stops the sd_notify WATCHDOG pings (and SIGTERM still stops the daemon), an injected
fatal CUDA error makes the daemon exit non-zero, a corrupt checkpoint fails before READY.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import obspy
import pytest
from support.pipeline import NotifySocket, free_port, start_daemon, start_server, write_archive, write_config

from quakemon.base.signals import StopFlag
from quakemon.models.contract import InputContract
from quakemon.pipeline.windowing import StationWindower
from quakemon.service import stages
from quakemon.service.config import load_config
from quakemon.service.daemon import MetricsBridge, StageProcess, Supervisor
from quakemon.service.stages.ingest import Committer, IdleFeed

START_TIMEOUT = 120.0

# -- in-process units -----------------------------------------------------------------------------------------


class _FakeSource:
    def __init__(self) -> None:
        self.committed: list = []

    def commit(self, tr) -> None:
        self.committed.append(tr)


def test_records_are_committed_only_when_no_pending_window_needs_them():
    contract = InputContract()
    windower = StationWindower(contract, 1.0, ["BW.RJOB..EH?"])
    source = _FakeSource()
    committer = Committer(source, windower)
    records = []
    for tr in obspy.read():  # 30 s; 1 s records, interleaved by start time like a SeedLink stream
        for t0 in range(30):
            records.append(tr.slice(tr.stats.starttime + t0, tr.stats.starttime + t0 + 1 - 0.01))
    records.sort(key=lambda r: r.stats.starttime)
    for tr in records[:45]:  # 15 s: no window yet, nothing may be committed
        windower.add_trace(tr)
        committer.add(tr)
    assert source.committed == []
    for tr in records[45:]:
        windower.add_trace(tr)
        committer.add(tr)
    (sched,) = windower.schedulers.values()
    next_start = sched.next_k * sched.stride_ns
    assert source.committed, "windows were cut, their oldest records must be committed"
    assert all(tr.stats.endtime.ns < next_start for tr in source.committed)
    pending = [tr for d in committer.pending.values() for tr in d]
    assert all(tr.stats.endtime.ns >= next_start - 10_000_000 for tr in pending[:1])
    assert len(source.committed) + len(pending) == len(records)


def test_records_stay_uncommitted_while_a_window_that_needs_them_is_undelivered():
    """A window cut but still queued (or in ZeroMQ's pipe) dies with a SIGKILL: its records must be read again."""
    windower = StationWindower(InputContract(), 1.0, ["BW.RJOB..EH?"])
    source, delivered, cut = _FakeSource(), [0], [0]
    committer = Committer(source, windower, lambda: delivered[0])
    windows = []
    for tr in sorted((tr.slice(tr.stats.starttime + t0, tr.stats.starttime + t0 + 0.99) for tr in obspy.read()
                      for t0 in range(30)), key=lambda r: r.stats.starttime):
        new = windower.add_trace(tr)
        committer.note_cut(new, cut[0])
        cut[0] += len(new)
        windows += new
        committer.add(tr)
    assert len(windows) >= 5
    first = windows[0].start_ns  # nothing delivered: the first window's records are all still pending
    assert all(tr.stats.endtime.ns < first for tr in source.committed)
    assert any(tr.stats.endtime.ns >= first for d in committer.pending.values() for tr in d)
    delivered[0] = 3  # the first three went out: what only they needed may go now, the fourth's records not
    committer.add(obspy.read()[0].slice(endtime=obspy.read()[0].stats.starttime))  # a tiny record triggers the check
    fourth = windows[3].start_ns
    assert any(tr.stats.endtime.ns >= first for tr in source.committed)
    assert all(tr.stats.endtime.ns < fourth for tr in source.committed)
    assert any(tr.stats.endtime.ns >= fourth for d in committer.pending.values() for tr in d)


class _SlowSource:
    def __init__(self, items: list) -> None:
        self.items = items

    def traces(self, stop: threading.Event):
        for item in self.items:
            if stop.wait(0.3):
                return
            yield item


def test_idle_feed_ticks_while_the_source_is_quiet_and_ends_with_it():
    stop = StopFlag()
    feed = IdleFeed(_SlowSource(["a", "b"]), stop, tick_s=0.05)
    got = list(feed)
    feed.close()
    assert [x for x in got if x is not None] == ["a", "b"]
    assert got.count(None) >= 3  # housekeeping ticks while waiting 0.3 s per item
    assert not feed.thread.is_alive()


@pytest.fixture
def supervisor(tmp_path):
    rt = tmp_path / "rt"
    cfg = load_config(None, {"pipeline.runtime_dir": str(rt)})
    sup = Supervisor(cfg, None, {}, list(stages.STAGES), notifier=SimpleNamespace(ready=lambda *_: True))
    yield sup
    sup.control.close(linger=0)
    sup.ctx.term()


class _FakeProc:
    def __init__(self, code=None, pid=4242) -> None:
        self.code, self.pid = code, pid

    def poll(self):
        return self.code

    def kill(self) -> None:
        self.code = -9

    def send_signal(self, sig: int) -> None:
        self.signals = [*getattr(self, "signals", []), sig]


def test_watchdog_progress_needs_every_ready_stage_to_advance(supervisor):
    now = time.monotonic()
    supervisor.ready_sent = True
    for st in supervisor.stages:
        st.proc, st.ready, st.last_advance = _FakeProc(), True, now
    assert supervisor.pipeline_progressing()
    supervisor.stages[1].last_advance = now - 10  # preprocess stopped advancing: no more pings
    assert not supervisor.pipeline_progressing()
    st = supervisor.stages[1]  # ... unless it is being restarted, which the restart policy bounds
    st.ready, st.proc, st.restart_at = False, None, now + 1
    assert supervisor.pipeline_progressing()


def test_a_stalled_stage_is_named_in_status_and_log_at_once(supervisor):
    import structlog

    # INFO whatever a test before configured (tests/conftest.py restores the configuration afterwards)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    sent = []
    supervisor.notifier = SimpleNamespace(ready=lambda *_: True, status=sent.append)
    now = time.monotonic()
    supervisor.ready_sent = True
    for st in supervisor.stages:
        st.proc, st.ready, st.last_advance = _FakeProc(), True, now
    with structlog.testing.capture_logs() as logs:
        supervisor.report_stalls()
        assert sent == [] and supervisor.stalled_stages() == []
        supervisor.stages[-1].last_advance = now - 10
        supervisor.report_stalls()
        supervisor.report_stalls()  # unchanged: not sent again
        supervisor.stages[-1].last_advance = time.monotonic()
        supervisor.report_stalls()
    name = supervisor.stages[-1].name
    assert len(sent) == 2 and sent[0].startswith(f"stalled: {name} (no progress for 10 s)"), sent
    assert not sent[1].startswith("stalled")
    assert [(e["event"], e["stage"]) for e in logs] == [("stage_stalled", name), ("stage_progress_resumed", name)]


def test_stale_control_sockets_of_dead_daemons_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    from quakemon.service.daemon import remove_stale_control_sockets

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"control-{dead.pid}"
    with socket.socket(socket.AF_UNIX) as sock:  # a real socket file, as a killed daemon leaves it
        sock.bind(str(stale))
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "quakemon"])
    try:
        running = tmp_path / f"control-{alive.pid}"
        running.touch()
        other = tmp_path / "windows"
        other.touch()
        assert remove_stale_control_sockets(str(tmp_path)) == [str(stale)]
        assert not stale.exists() and running.exists() and other.exists()
    finally:
        alive.kill()
        alive.wait()


def test_an_inference_restart_resets_preprocess_only_where_an_ingest_stage_is_rewound(supervisor):
    """A reset preprocess process drops what the ingest stage sent until that stage's rewind reaches it: without
    an ingest stage here to rewind (held, or not ready), preprocess keeps and delivers what it has."""
    by_kind = {st.kind: st for st in supervisor.stages}
    for st in supervisor.stages:
        st.proc, st.ready = _FakeProc(pid=4242 + len(st.kind)), True
    by_kind["ingest"].ready = False  # restarting
    supervisor.rewind_for(by_kind["inference"])
    assert supervisor.resetting is None and not hasattr(by_kind["preprocess"].proc, "signals")
    by_kind["ingest"].ready = True
    supervisor.rewind_for(by_kind["inference"])
    assert by_kind["preprocess"].proc.signals == [signal.SIGUSR2] and supervisor.resetting
    assert not hasattr(by_kind["ingest"].proc, "signals")  # the rewind waits for the reset's report
    by_kind["preprocess"].stats = {"resets": 1}
    supervisor.rewind_when_reset()
    assert by_kind["ingest"].proc.signals == [signal.SIGUSR2] and supervisor.resetting is None


def test_restart_backoff_and_give_up(supervisor):
    inference = next(st for st in supervisor.stages if st.kind == "inference")
    for st in supervisor.stages:
        st.proc, st.ready, st.ever_ready = _FakeProc(), True, True
    delays = []
    for _ in range(5):
        inference.proc = _FakeProc(code=-9)
        assert supervisor.check_children() == 0
        delays.append(round(inference.restart_at - time.monotonic()))
        inference.restart_at = None
    assert delays == [1, 2, 4, 8, 16]
    inference.proc = _FakeProc(code=-9)
    assert supervisor.check_children() == 1  # the 6th death within a minute: exit, systemd takes over
    fresh = StageProcess("preprocess-0", "preprocess", proc=_FakeProc(code=1))
    supervisor.stages = [fresh]
    assert supervisor.check_children() == 1  # died before it was ever ready: a configuration problem
    supervisor.stages = [StageProcess("inference", "inference", proc=_FakeProc(code=stages.EXIT_FATAL),
                                      ever_ready=True)]
    assert supervisor.check_children() == 1  # poisoned GPU: never restarted in place


def test_metrics_bridge_turns_stage_totals_into_counters():
    from quakemon.service.metrics import Metrics

    bridge = MetricsBridge(Metrics())
    ingest = StageProcess("ingest", "ingest", proc=_FakeProc(pid=1))
    inference = StageProcess("inference", "inference", proc=_FakeProc(pid=2))
    ingest.stats = {"windows_out": 10, "dropped_ingest": 1, "queue_ingest": 3, "source_gaps": 2,
                    "newest_end_s": {"BW.RJOB.": time.time() - 60.0}, "buffer_fill": {"BW.RJOB.": 0.5},
                    "corrupt_reasons": {"bad_header": 1}}
    inference.stats = {"windows": 8, "batches": 2, "batch_size": 4, "batch_seconds": 0.01, "queue_inference": 2,
                       "detections_opened": {"BW.RJOB.": 1}, "zmq_events": {"ACCEPTED": 1}}
    bridge([ingest, inference])
    ingest.stats = {**ingest.stats, "windows_out": 15, "source_gaps": 3, "corrupt_reasons": {"bad_header": 1, "nan": 2}}
    inference.proc = _FakeProc(pid=3)  # restarted: counts from zero again
    inference.stats = {**inference.stats, "windows": 4, "detections_opened": {"BW.RJOB.": 1, "GR.FUR.": 1}}
    bridge([ingest, inference])
    reg = bridge.metrics.registry
    assert reg.get_sample_value("quakemon_windows_in_total") == 15
    assert reg.get_sample_value("quakemon_windows_out_total") == 12
    assert reg.get_sample_value("quakemon_windows_dropped_total", {"reason": "ingest_queue"}) == 1
    assert reg.get_sample_value("quakemon_queue_depth", {"queue": "ingest"}) == 3
    assert 59.0 < reg.get_sample_value("quakemon_station_lag_seconds", {"station": "BW.RJOB."}) < 70.0
    assert reg.get_sample_value("quakemon_station_buffer_fill_ratio", {"station": "BW.RJOB."}) == 0.5
    assert reg.get_sample_value("quakemon_gaps_total") == 3
    assert reg.get_sample_value("quakemon_records_corrupt_total", {"reason": "bad_header"}) == 1
    assert reg.get_sample_value("quakemon_records_corrupt_total", {"reason": "nan"}) == 2
    assert reg.get_sample_value("quakemon_detections_total", {"station": "BW.RJOB."}) == 2  # 1 + 1 after restart
    assert reg.get_sample_value("quakemon_detections_total", {"station": "GR.FUR."}) == 1
    assert reg.get_sample_value("quakemon_zmq_events_total", {"event": "ACCEPTED"}) == 2
    assert reg.get_sample_value("quakemon_batch_size_count") == 2


def test_metrics_bridge_counts_the_windowers_rejections_silences_and_curve_refusals():
    from quakemon.service.metrics import Metrics

    bridge = MetricsBridge(Metrics())
    ingest = StageProcess("ingest", "ingest", proc=_FakeProc(pid=1))
    inference = StageProcess("inference", "inference", proc=_FakeProc(pid=2))
    ingest.stats = {"windower_clock_glitch": 40, "windower_duplicate_records": 2, "windower_clock_jumps": 1,
                    "windower_silent_stations": 1, "windower_station_silences": 1, "silent": ["GR.FUR."],
                    "newest_end_s": {"BW.RJOB.": time.time(), "GR.FUR.": time.time() - 90}}
    inference.stats = {"curve_rejected": {"Unknown key": 3}, "calibrated_on": {"BW.RJOB./earthquake": 0.97}}
    bridge([ingest, inference])
    ingest.stats = {**ingest.stats, "windower_clock_glitch": 45, "windower_silent_stations": 0, "silent": []}
    bridge([ingest, inference])
    reg = bridge.metrics.registry
    assert reg.get_sample_value("quakemon_records_rejected_total", {"reason": "clock_glitch"}) == 45
    assert reg.get_sample_value("quakemon_records_rejected_total", {"reason": "duplicate"}) == 2
    assert reg.get_sample_value("quakemon_clock_jumps_total") == 1
    assert reg.get_sample_value("quakemon_station_silences_total") == 1
    assert reg.get_sample_value("quakemon_silent_stations") == 0
    assert reg.get_sample_value("quakemon_station_silent", {"station": "GR.FUR."}) == 0  # data came back
    assert reg.get_sample_value("quakemon_curve_rejected_total", {"reason": "Unknown key"}) == 3
    assert reg.get_sample_value("quakemon_trigger_on", {"station": "BW.RJOB.", "label": "earthquake"}) == 0.97



# -- fault runs of the real daemon ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    path, _, _ = write_archive(d / "rjob.mseed")
    proc, port = start_server(path, d, speed=10.0)
    yield d, port
    proc.stop()


def _fault_config(server, checkpoint: Path, name: str) -> Path:
    d, port = server
    return write_config(d / f"{name}.toml", server_port=port, checkpoint=checkpoint, runtime_dir=d / f"rt-{name}",
                        publish_port=free_port(), on=0.9, off=0.5)


def test_hung_stage_stops_watchdog_pings_and_sigterm_still_stops(server, tiny_checkpoint):
    d, _ = server
    notify = NotifySocket(d / "notify-hang.sock")
    daemon = start_daemon(_fault_config(server, tiny_checkpoint, "hang"), d, "hang", watchdog_pid_self=True,
                          env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000",
                               "QUAKEMON_INJECT_HANG": "preprocess:2"})
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)
        ready = notify.wait_for("READY=1")
        assert len(ready) == 1
        daemon.wait_event("inject_hang", 60)
        hung = time.monotonic()
        assert len([t for t in notify.times("WATCHDOG=1") if t > ready[0]]) >= 2  # pinged while progressing
        time.sleep(7.0)
        late = [t - hung for t in notify.times("WATCHDOG=1") if t > hung + 4.0]
        assert late == [], f"pings {late} s after the hang (stale after 3 s)"
        daemon.wait_event("watchdog_no_progress", 5)
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(15)
        assert code == 0 and time.monotonic() - t0 < 10
        assert notify.times("STOPPING=1")
        assert daemon.events("stage_kill")  # the hung stage ignored SIGTERM and was killed after the grace time
        assert "Traceback" not in daemon.stderr()
    finally:
        daemon.stop()
        notify.close()


def test_fatal_gpu_error_makes_the_daemon_exit_non_zero(server, tiny_checkpoint):
    d, _ = server
    daemon = start_daemon(_fault_config(server, tiny_checkpoint, "fault"), d, "fault",
                          env={"QUAKEMON_INJECT_FAULT": "cuda"})
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)
        (released,) = daemon.wait_event("ingest_released", 5)
        code = daemon.wait(60)
        (fatal,) = daemon.events("inference_fatal")
        assert code == 1
        assert "illegal memory access" in fatal["error"]
        from quakemon.wire.schema import parse_iso_utc

        (stopped,) = daemon.events("daemon_stopped")
        seconds = parse_iso_utc(stopped["timestamp"]) - parse_iso_utc(released["timestamp"])
        print(f"fatal CUDA error: daemon exited {code} {seconds:.1f} s after data started to flow")
        assert seconds < 25.0  # the first 20 s window plus start-up of the stream, not "alive for hours"
        assert "Traceback" not in daemon.stderr()
    finally:
        daemon.stop()


def test_corrupt_checkpoint_fails_before_ready(server, tmp_path):
    d, _ = server
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    notify = NotifySocket(tmp_path / "n.sock")
    daemon = start_daemon(_fault_config(server, bad, "badckpt"), d, "badckpt", env={"NOTIFY_SOCKET": notify.path})
    try:
        code = daemon.wait(60)
        assert code != 0
        assert not notify.times("READY=1") and not daemon.events("stage_spawned")
        assert "Traceback" not in daemon.stderr()
    finally:
        daemon.stop()
        notify.close()

