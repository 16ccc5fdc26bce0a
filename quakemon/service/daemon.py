"""`quakemon run`: the supervisor that starts the stage processes and owns the service lifecycle.

startup -> main loop -> shutdown, as uvicorn/gunicorn do it:
- startup: check the config, the paths the stages write (`quakemon.service.paths`) and the checkpoint (a bad one exits
  non-zero before READY), remove the control sockets that daemons no longer running left in the runtime directory,
  bind the control socket (removed again at shutdown), start each stage as a child process
  (`quakemon.service.stage_main`), all at once so that they import in parallel; ingest is started with --hold and
  reads SeedLink only once the local preprocess and inference stages are ready (SIGUSR1), so no window is dropped
  while the model loads. Children write to the supervisor's stderr (their stdout is redirected there too), get SIGTERM
  when the supervisor dies (PR_SET_PDEATHSIG, plus a parent-pid check), and never see NOTIFY_SOCKET/WATCHDOG_*: only
  the supervisor talks to systemd (the unit's NotifyAccess=main, KillMode=mixed).
- main loop (5 Hz): read stage status messages; READY=1 once every stage has reported ready (the inference
  stage only after its model is loaded and warmed up); WATCHDOG=1 only while every running stage's loop
  advanced within the last `STALE_S` seconds, so a hung stage stops the pings and systemd restarts the
  service (a stage waiting for its restart, or starting, counts as alive for `STARTUP_GRACE_S`); STATUS=
  with stations, windows and lag. A stage that stops advancing is named at once: a `stage_stalled` WARNING,
  STATUS= "stalled: <stage> ..." (sent when the set of stalled stages changes) and the watchdog's
  `watchdog_no_progress` line (`stalled_stages`).
  A stage that dies is restarted with exponential backoff (1 s doubling to 30 s); one that dies before it was
  ever ready, or more than `MAX_RESTARTS` times in `RESTART_WINDOW_S`, or with the fatal-GPU exit code, makes
  the daemon exit 1 (systemd's Restart=on-failure takes over), unless model.on_fatal_gpu_error = "cpu". A
  restarted preprocess or inference stage gets the windows the dead process held again (`Supervisor.rewind_for`).
- reload (SIGHUP, `systemctl reload`; the handler only sets a flag): RELOADING=1, the config file is read and
  checked again and applied without restarting a stage, or refused as a whole (`quakemon.service.reload`);
  READY=1 once every stage runs the new config (or it was refused). The stages run the config the supervisor
  wrote to the runtime directory (`running-config.toml`), so a stage restarted later runs the same one.
- shutdown (SIGTERM/SIGINT; handlers only set a flag): STOPPING=1, then stages stop in data-flow order
  (ingest first, which saves its SeedLink state, inference last), each with SIGTERM and a 3 s grace before
  SIGKILL; exit 0 well inside systemd's TimeoutStopSec.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq

from quakemon.base.errors import QuakemonError
from quakemon.base.signals import StopFlag, install_stop_handlers, set_on_signals
from quakemon.service import reload as reloading
from quakemon.service.config import EXIT_FATAL, STAGES, Config, check_journal, check_stages
from quakemon.service.paths import check_writable_paths
from quakemon.service.runtime_lock import RuntimeLock, remove_stale_control_sockets

log = structlog.get_logger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
BACKOFF_MAX_S = 30.0
STOP_GRACE_S = 3.0
STALE_S = 3.0
STARTUP_GRACE_S = 120.0
RELOAD_TIMEOUT_S = 30.0  # stages that have not applied a reload by then are named (`reload_incomplete`)


@dataclass
class StageProcess:
    """One supervised stage: its child process and what its latest status message said."""

    name: str
    kind: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    ready: bool = False
    ever_ready: bool = False
    spawned_at: float = 0.0
    last_status: float = 0.0
    last_advance: float = 0.0
    loops: int = -1
    stats: dict[str, Any] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)
    restart_at: float | None = None
    held: bool = False  # ingest started with --hold, waiting for SIGUSR1


class Supervisor:
    """Starts, watches, restarts and stops the stage processes; the only process that talks to systemd."""

    def __init__(self, cfg: Config, config_path: str | None, overrides: dict[str, Any], stages: list[str],
                 notifier=None) -> None:
        from quakemon.service.sdnotify import Notifier

        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides
        self.notifier = notifier or Notifier()
        self.stop = StopFlag()
        self.ctx = zmq.Context()
        os.makedirs(cfg.pipeline.runtime_dir, mode=0o700, exist_ok=True)
        self.runtime_lock = RuntimeLock(cfg.pipeline.runtime_dir)  # a second daemon here stops with ConfigError
        self.control_path = os.path.join(cfg.pipeline.runtime_dir, f"control-{os.getpid()}")
        self.control_endpoint = f"ipc://{self.control_path}"
        if len(self.control_path) > 107:
            raise QuakemonError(f"pipeline.runtime_dir: expected a path short enough for a unix socket "
                                f"(<= ~90 bytes), got {cfg.pipeline.runtime_dir!r}")
        remove_stale_control_sockets(cfg.pipeline.runtime_dir)
        self.control = self.ctx.socket(zmq.PULL)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(self.control_endpoint)
        self.stages: list[StageProcess] = []
        for kind in stages:
            if kind == "preprocess":
                self.stages += [StageProcess(f"preprocess-{i}", kind) for i in range(cfg.pipeline.preprocess_workers)]
            else:
                self.stages.append(StageProcess(kind, kind))
        self.ready_sent = False
        self.resetting: list[tuple[StageProcess, int, int]] | None = None  # see `rewind_when_reset`
        self.started = time.monotonic()
        self.stopping_since: float | None = None
        self.metrics: Any = None
        self.metrics_stop: Any = None
        self.stalled: list[str] = []  # stages that stopped advancing, as last reported
        self.snapshot = reloading.write_snapshot(cfg)  # what the stages run (after the lock: ours to write)
        self.reload_requested = threading.Event()
        self.reload: Reload | None = None  # the reload the stages are applying
        self.reloads = {"ok": 0, "refused": 0, "incomplete": 0}

    # -- lifecycle ----------------------------------------------------------------------------------------
    def install_signals(self) -> None:
        """SIGTERM and SIGINT only set the stop flag, SIGHUP the reload flag; the main loop notices them within one
        round."""
        install_stop_handlers(self.stop)
        set_on_signals(self.reload_requested, [signal.SIGHUP])

    def spawn(self, st: StageProcess, hold: bool = False) -> None:
        cmd = [sys.executable, "-m", "quakemon.service.stage_main", st.kind, "--control", self.control_endpoint,
               "--parent", str(os.getpid()), "--config", self.snapshot] + (["--hold"] if hold else [])
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        st.proc = subprocess.Popen(cmd, env={**env, **st.env}, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno())
        st.ready = False
        st.loops = -1
        st.spawned_at = st.last_status = st.last_advance = time.monotonic()
        st.restart_at = None
        st.held = hold
        log.info("stage_spawned", stage=st.name, kind=st.kind, pid=st.proc.pid, hold=hold)

    def run(self) -> int:
        from quakemon.service.sdnotify import Watchdog

        self.notifier.status("starting stages")
        downstream = any(st.kind != "ingest" for st in self.stages)
        for st in self.stages:  # all at once (imports in parallel); ingest holds until downstream is ready
            self.spawn(st, hold=st.kind == "ingest" and downstream)
        watchdog = Watchdog(self.notifier, status_fn=self.status_text,
                            detail_fn=lambda: {"stalled_stages": self.stalled_stages()})
        watchdog.start()
        code = 0
        try:
            while not self.stop.is_set():
                self.read_status(0.2)
                code = self.check_children()
                if code:
                    break
                self.start_ingest_when_downstream_ready()
                self.rewind_when_reset()
                if not self.ready_sent and all(st.ready for st in self.stages):
                    self.ready_sent = True
                    self.notifier.ready(self.status_text())
                    log.info("daemon_ready", stages=[st.name for st in self.stages],
                             seconds=round(time.monotonic() - self.started, 1))
                if self.ready_sent:
                    self.handle_reload()
                if self.pipeline_progressing():
                    watchdog.progress()
                self.report_stalls()
                if self.metrics is not None:
                    try:
                        self.metrics(self.stages)
                    except Exception as exc:  # metrics must never take the service down
                        log.error("metrics_update_failed", error=repr(exc), action="metrics off")
                        self.metrics = None
        finally:
            self.stopping_since = time.monotonic()
            watchdog.stop()
            self.notifier.stopping("stopping" if not code else "stopping after a fatal stage error")
            log.info("daemon_stopping", reason="signal" if self.stop.is_set() else "stage failure", code=code)
            self.shutdown()
        return code

    def read_status(self, timeout_s: float) -> None:
        if not self.control.poll(int(timeout_s * 1000)):
            return
        by_pid = {st.proc.pid: st for st in self.stages if st.proc is not None}
        while True:
            try:
                body = json.loads(self.control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            except ValueError:
                continue
            st = by_pid.get(body.get("pid"))
            if st is None:
                continue
            now = time.monotonic()
            st.last_status = now
            loops = int(body.get("loops", 0))
            if loops != st.loops:
                st.last_advance = now
            st.loops = loops
            st.stats = body.get("stats") or {}
            if body.get("ready") and not st.ready:
                st.ready = st.ever_ready = True
                log.info("stage_ready", stage=st.name, pid=st.proc.pid)

    # -- reload (SIGHUP) -------------------------------------------------------------------------------------
    def handle_reload(self) -> None:
        """Start a requested reload (when none is in progress), and finish the one in progress."""
        if self.reload is not None:
            self.reload.poll(self)
        if self.reload is None and self.reload_requested.is_set():
            self.reload_requested.clear()
            self.start_reload()

    def start_reload(self) -> None:
        """RELOADING=1; re-read and check the config file; refuse it (READY=1 at once) or hand it to the stages."""
        from quakemon.service.config import load_config

        self.notifier.reloading("reloading the config")
        log.info("reload_requested", config=self.config_path)
        try:
            new = load_config(self.config_path, self.overrides)
            check_startup(new, sorted({st.kind for st in self.stages}), self.config_path)
            changed = reloading.validate_reload(self.cfg, new)
            if changed:
                reloading.write_snapshot(new)
        except (QuakemonError, OSError) as exc:  # OSError: the snapshot could not be written
            self.reloads["refused"] += 1
            log.error("reload_refused", reason=str(exc), action="the running config stays",
                      reloads_total=sum(self.reloads.values()), **self.reloads)
            self.notifier.ready(self.status_text())
            return
        self.cfg = new
        self.reload = Reload(reloading.config_digest(new), changed, time.monotonic())
        self.reload.poll(self)

    def start_ingest_when_downstream_ready(self) -> None:
        """Release a held ingest (SIGUSR1) once it and every other local stage are ready (first start only)."""
        waiting = [st for st in self.stages if st.held and st.ready and st.proc is not None]
        if waiting and all(st.ready for st in self.stages if st.kind != "ingest"):
            for st in waiting:
                st.held = False
                st.proc.send_signal(signal.SIGUSR1)
                log.info("ingest_released", stage=st.name, pid=st.proc.pid)

    def rewind_for(self, st: StageProcess) -> None:
        """Re-send the windows a killed downstream process held (`quakemon.service.stages.ingest`, "Rewind"):
        preprocess: ingest rewinds (SIGUSR2) before the new process connects; inference: preprocess resets first
        (SIGUSR2, "Reset" in `quakemon.service.stages.preprocess`), ingest rewinds once that is reported, so
        windows stay in order; without an ingest stage here to rewind, nothing is reset."""
        if st.kind == "preprocess":
            self.rewind_ingest()
        elif st.kind == "inference" and self.rewindable():
            self.resetting = [(p, p.proc.pid, int(p.stats.get("resets", 0)) + 1) for p in self.stages
                              if p.kind == "preprocess" and p.ready and p.proc is not None]
            for p, _, _ in self.resetting:
                p.proc.send_signal(signal.SIGUSR2)  # type: ignore[union-attr]
            self.rewind_when_reset()

    def rewind_when_reset(self) -> None:
        """Rewind ingest once each preprocess signalled by `rewind_for` reported its reset (or was replaced)."""
        if self.resetting is not None and all(p.proc is None or p.proc.pid != pid or int(p.stats.get("resets", 0))
                                              >= target for p, pid, target in self.resetting):
            self.resetting = None
            self.rewind_ingest()

    def rewindable(self) -> list[StageProcess]:
        return [st for st in self.stages if st.kind == "ingest" and st.ready and not st.held and st.proc is not None]

    def rewind_ingest(self) -> None:
        for st in self.rewindable():
            st.proc.send_signal(signal.SIGUSR2)  # type: ignore[union-attr]
            log.info("ingest_rewind_requested", stage=st.name, pid=st.proc.pid)  # type: ignore[union-attr]

    def stage_alive(self, st: StageProcess, now: float) -> bool:
        """A ready stage must have advanced its loop within STALE_S; a starting one gets STARTUP_GRACE_S."""
        if st.ready:
            return now - st.last_advance < STALE_S
        if st.proc is None or st.restart_at is not None:
            return True  # waiting for its restart: bounded by MAX_RESTARTS / RESTART_WINDOW_S
        return now - st.spawned_at < STARTUP_GRACE_S

    def pipeline_progressing(self) -> bool:
        """True when every stage is alive (see `stage_alive`); before READY, start-up is TimeoutStartSec's job."""
        return not self.stalled_stages()

    def stalled_stages(self) -> list[str]:
        """Names of the stages that are not alive (see `stage_alive`); none before READY."""
        if not self.ready_sent:
            return []
        now = time.monotonic()
        return [st.name for st in self.stages if not self.stage_alive(st, now)]

    def report_stalls(self) -> None:
        """Name a stage that stopped (WARNING, STATUS= at once) or resumed (INFO) when the stalled set changes."""
        stalled = self.stalled_stages()
        if stalled == self.stalled:
            return
        now = time.monotonic()
        by_name = {st.name: st for st in self.stages}
        for name in stalled:
            if name not in self.stalled:
                st = by_name[name]
                log.warning("stage_stalled", stage=name, pid=st.proc.pid if st.proc else None,
                            no_progress_s=round(now - (st.last_advance if st.ready else st.spawned_at), 1),
                            effect="watchdog pings stop; systemd restarts the service after WatchdogSec")
        for name in self.stalled:
            if name not in stalled:
                log.info("stage_progress_resumed", stage=name)
        self.stalled = stalled
        self.notifier.status(self.status_text())

    def check_children(self) -> int:
        if self.stop.is_set():
            return 0  # stopping: children exiting now is expected (systemd may signal the whole group)
        now = time.monotonic()
        for st in self.stages:
            if st.restart_at is not None:
                if now >= st.restart_at and not self.stop.is_set():
                    self.spawn(st)
                    self.rewind_for(st)
                continue
            code = st.proc.poll() if st.proc else None
            if code is None:
                if not st.ready and now - st.spawned_at > STARTUP_GRACE_S and st.proc is not None:
                    log.error("stage_start_timeout", stage=st.name, seconds=STARTUP_GRACE_S, action="kill")
                    st.proc.kill()
                continue
            log.error("stage_died", stage=st.name, pid=st.proc.pid, code=code, ever_ready=st.ever_ready)
            if code == EXIT_FATAL and st.kind == "inference":
                if self.cfg.model.on_fatal_gpu_error == "cpu" and st.env.get("QUAKEMON_FORCE_DEVICE") != "cpu":
                    log.warning("inference_fallback_cpu", reason="fatal GPU error")
                    st.env["QUAKEMON_FORCE_DEVICE"] = "cpu"
                    self.spawn(st)
                    self.rewind_for(st)
                    continue
                return 1
            if code == EXIT_FATAL:
                log.error("stage_fatal", stage=st.name, code=code, action="exit")
                return 1
            if not st.ever_ready:
                log.error("stage_failed_at_startup", stage=st.name, code=code, action="exit")
                return 1
            st.restarts = [t for t in st.restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(st.restarts) > MAX_RESTARTS:
                log.error("stage_keeps_dying", stage=st.name, restarts=len(st.restarts), window_s=RESTART_WINDOW_S)
                return 1
            delay = min(BACKOFF_MAX_S, 2.0 ** (len(st.restarts) - 1))
            st.ready = False
            st.proc = None
            st.restart_at = now + delay
            log.warning("stage_restart_scheduled", stage=st.name, delay_s=delay)
        return 0

    def status_text(self) -> str:
        stats: dict[str, Any] = {}
        for st in self.stages:
            stats.update(st.stats)
        text = f"{stats.get('stations', 0)} stations, {stats.get('windows', 0)} windows inferred"
        oldest_end = stats.get("oldest_end_s")
        if isinstance(oldest_end, int | float):
            text += f", lag {max(0.0, time.time() - oldest_end):.1f} s"
        silent = stats.get("windower_silent_stations")
        if isinstance(silent, int) and silent:
            text += f", {silent} silent"
        stalled = self.stalled_stages()
        if stalled:
            now = time.monotonic()
            by_name = {st.name: st for st in self.stages}
            text = "stalled: " + ", ".join(f"{n} (no progress for {now - by_name[n].last_advance:.0f} s)"
                                           for n in stalled) + "; " + text
        return text if self.ready_sent else "starting: " + text

    def shutdown(self) -> None:
        order = {k: i for i, k in enumerate(STAGES)}
        for st in sorted(self.stages, key=lambda s: order.get(s.kind, 99)):
            proc = st.proc
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("stage_kill", stage=st.name, pid=proc.pid)
                proc.kill()
                proc.wait(2.0)
        if self.metrics_stop is not None:
            self.metrics_stop()
        self.control.close(linger=0)
        self.ctx.term()
        for path in (self.control_path, self.snapshot):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("control_socket_not_removed" if path == self.control_path else "snapshot_not_removed",
                            path=path, error=str(exc))
        self.runtime_lock.release()
        log.info("daemon_stopped", seconds=round(time.monotonic() - self.stopping_since, 2)
                 if self.stopping_since else None)


@dataclass
class Reload:
    """A reload the stages are applying: they get SIGHUP once they are running (ready), and it is done when every
    stage that applies a part (`quakemon.service.reload.RELOAD_STAGES`) reports the new config's digest."""

    digest: str
    changed: list[str]
    started: float
    signalled: set[int] = field(default_factory=set)  # pids

    def poll(self, sup: Supervisor) -> None:
        """Signal the stages not yet signalled; READY=1 and `reload_ok` (or `reload_incomplete` after
        RELOAD_TIMEOUT_S) when they are done."""
        waiting = []
        for st in sup.stages:
            if st.kind not in reloading.RELOAD_STAGES or st.stats.get("config_digest") == self.digest:
                continue
            waiting.append(st.name)
            if self.changed and st.ready and st.proc is not None and st.proc.pid not in self.signalled:
                self.signalled.add(st.proc.pid)
                st.proc.send_signal(signal.SIGHUP)
        seconds = round(time.monotonic() - self.started, 2)
        if waiting and seconds < RELOAD_TIMEOUT_S:
            return
        result = "incomplete" if waiting else "ok"
        sup.reloads[result] += 1
        (log.warning if waiting else log.info)(f"reload_{result}", changed=self.changed, seconds=seconds,
                                               stages_not_reloaded=waiting, reloads_total=sum(sup.reloads.values()),
                                               **sup.reloads)
        sup.reload = None
        sup.notifier.ready(sup.status_text())


def check_startup(cfg: Config, stages: list[str] | None, config_path: str | None = None) -> list[str]:
    """The checks a config passes before the stages start, and again before a reload: the stage names and the
    streams the ingest stage needs, the checkpoint, the journal (ConfigError, exit 2). Returns the stages."""
    from quakemon.models.checkpoint import read_metadata, resolve_checkpoint

    stages = check_stages(stages, cfg)  # stage names and the streams the ingest stage needs: ConfigError
    where = f"config file {config_path!r}" if config_path else "config"
    check_writable_paths(cfg, stages, where=where)  # every path these stages write; else exit 2, before READY
    read_metadata(resolve_checkpoint(cfg.model.checkpoint))  # a bad checkpoint fails here, before READY
    if "inference" in stages:
        check_journal(cfg, where)  # an unusable publish.journal fails here (exit 2), before READY
    return stages


def run_daemon(cfg: Config, config_path: str | None, overrides: dict[str, Any] | None = None,
               stages: list[str] | None = None) -> int:
    """Start the stages (all by default) and supervise them until SIGTERM/SIGINT; return the exit code."""
    stages = check_startup(cfg, stages, config_path)
    sup = Supervisor(cfg, config_path, overrides or {}, stages)
    sup.install_signals()
    if cfg.metrics.listen:
        sup.metrics, sup.metrics_stop = _metrics_updater(cfg)
    log.info("daemon_starting", stages=stages, pid=os.getpid())
    return sup.run()


class MetricsBridge:
    """Feeds the stage processes' status counters into `quakemon.service.metrics.Metrics` (served by the supervisor).

    Stages report cumulative totals; counters are incremented by the difference since the previous report
    of the same process (a restarted stage, with a new pid, counts from zero again). Labelled totals arrive as
    {label: total} maps (records_corrupt by reason, detections by station, zmq_events by event).
    """

    COUNTERS = (("ingest", "windows_out", "windows_in"), ("ingest", "source_records", "records"),
                ("ingest", "source_duplicates", "records_duplicate"), ("ingest", "source_reconnects", "reconnects"),
                ("ingest", "source_gaps", "gaps"), ("inference", "windows", "windows_out"),
                ("ingest", "windower_clock_jumps", "clock_jumps"),
                ("ingest", "windower_station_silences", "station_silences"),
                ("inference", "backfill_detections", "backfill_detections"))
    LABELLED = (("ingest", "corrupt_reasons", "records_corrupt", "reason"),
                ("inference", "detections_opened", "detections", "station"),
                ("inference", "zmq_events", "zmq_events", "event"),
                ("inference", "curve_rejected", "curve_rejected", "reason"),
                ("preprocess", "messages_rejected_reasons", "messages_rejected", "reason"),
                ("inference", "messages_rejected_reasons", "messages_rejected", "reason"),
                ("inference", "backfill_spans", "backfill_spans", "outcome"))
    # the station windower's rejected records (its counters, reported by ingest as windower_*), by reason
    REJECTED = (("windower_clock_glitch", "clock_glitch"), ("windower_late_records", "late"),
                ("windower_duplicate_records", "duplicate"), ("windower_implausible_rate_records", "implausible_rate"),
                ("windower_rate_change_records", "rate_change"))
    DROPPED = (("ingest", "dropped_ingest", "ingest_queue"), ("preprocess", "dropped_preprocess", "preprocess_queue"),
               ("inference", "dropped_inference", "inference_queue"))
    QUEUES = (("ingest", "queue_ingest"), ("preprocess", "queue_preprocess"), ("inference", "queue_inference"))

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics
        self._last: dict[tuple[str, int, str, str], float] = {}

    def _delta(self, st: StageProcess, key: str, value: Any, label: str = "") -> float:
        if not isinstance(value, int | float) or st.proc is None:
            return 0.0
        k = (st.name, st.proc.pid, key, label)
        prev = self._last.get(k, 0.0)
        self._last[k] = value
        return value - prev if value >= prev else value

    def __call__(self, stages: list[StageProcess]) -> None:
        m = self.metrics
        depth: dict[str, float] = {}
        silent_total = 0
        now = time.time()
        for st in stages:
            for kind, key, name in self.COUNTERS:
                if st.kind == kind and (d := self._delta(st, key, st.stats.get(key))) > 0:
                    getattr(m, name).inc(d)
            for kind, key, name, label in self.LABELLED:
                totals = st.stats.get(key) if st.kind == kind else None
                for value, total in (totals.items() if isinstance(totals, dict) else ()):
                    if (d := self._delta(st, key, total, str(value))) > 0:
                        getattr(m, name).labels(**{label: str(value)}).inc(d)
            for key, reason in self.REJECTED if st.kind == "ingest" else ():
                if (d := self._delta(st, key, st.stats.get(key))) > 0:
                    m.records_rejected.labels(reason=reason).inc(d)
            for kind, key, reason in self.DROPPED:
                if st.kind == kind and (d := self._delta(st, key, st.stats.get(key))) > 0:
                    m.windows_dropped.labels(reason=reason).inc(d)
            for kind, key in self.QUEUES:
                if st.kind == kind:
                    depth[kind] = depth.get(kind, 0.0) + float(st.stats.get(key, 0) or 0)
            if st.kind == "ingest":
                silent_total += int(st.stats.get("windower_silent_stations", 0) or 0)
                silent = set(st.stats.get("silent") or ())  # station names, when the stage reports them
                for station in silent:
                    m.station_silent.labels(station=station).set(1)
                for station, end in (st.stats.get("newest_end_s") or {}).items():
                    m.station_lag.labels(station=station).set(max(now - float(end), 0.0))
                    if station not in silent:
                        m.station_silent.labels(station=station).set(0)
                for station, fill in (st.stats.get("buffer_fill") or {}).items():
                    m.station_buffer_fill.labels(station=station).set(float(fill))
            for key, on in (st.stats.get("calibrated_on") or {}).items() if st.kind == "inference" else ():
                station, _, label = str(key).rpartition("/")
                m.trigger_on.labels(station=station, label=label).set(float(on))
            if st.kind == "inference" and self._delta(st, "batches", st.stats.get("batches")) > 0:
                m.batch_size.observe(float(st.stats.get("batch_size", 0) or 0))  # the latest batch, sampled
                m.inference_seconds.observe(float(st.stats.get("batch_seconds", 0) or 0))
        for queue, value in depth.items():
            m.queue_depth.labels(queue=queue).set(value)
        m.silent_stations.set(silent_total)


def _metrics_updater(cfg: Config) -> tuple[MetricsBridge, Any]:
    """Serve /metrics at metrics.listen; returns (bridge fed with the stages each loop, stop function)."""
    from quakemon.service.metrics import Metrics, start_metrics_server

    bridge = MetricsBridge(Metrics())
    port, stop = start_metrics_server(cfg.metrics.listen, bridge.metrics.registry)
    log.info("metrics_serving", listen=cfg.metrics.listen, port=port)
    return bridge, stop
