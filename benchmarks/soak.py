"""Soak and fault suite: `quakemon run` on looped real recordings while faults are injected, then checked.

    python benchmarks/soak.py                                   # a few minutes: both upstreams, 1 fault per kind
    python benchmarks/soak.py --minutes 30 --faults-per-kind 10 --upstream serve --out soak.json

For each upstream (`quakemon serve --loop`, and EarthScope's ringserver when QUAKEMON_RINGSERVER or PATH has
it) the script writes a config, starts the daemon (a real `quakemon run` subprocess; journal and catch-up server
on, as by default) and a resuming subscriber (`quakemon listen --resume POSITION --json`), and over `--minutes`
injects faults round-robin, evenly spaced; each waits until every stage is ready again and has run `settle_s`
(10 s), so the fault phase lasts longer where restarts are slow:

    kill_ingest, kill_preprocess, kill_inference   SIGKILL of that stage process (the daemon restarts it)
    kill_daemon        SIGKILL of the daemon and its stages; started again with the same config and state file
    upstream_kill      SIGKILL of the SeedLink server, started again (same port, same ring) after 3 s
    upstream_stall     SIGSTOP of the server for 5 s, or 15 s (longer than seedlink.netto: a reconnect); SIGCONT
    subscriber_stall   SIGSTOP of the subscriber for 8 s, then SIGCONT
    subscriber_restart SIGKILL of the subscriber, started again with the same position file
    corrupt            (ringserver) garbled copies of records already fed, fed beside the real records

Then the data stops, the daemon drains and gets SIGTERM, the subscriber catches up with the journal, and the data
the server sent (recomputed for `serve --loop`, recorded for the ringserver feed) is replayed with `quakemon
replay` and the same config. Detections are compared up to a cutoff (the newest record the daemon processed,
less `--margin` seconds of data): lost, duplicated, re-id'd, extra (`soak_parts.compare`). Resident memory and
open file descriptors of the daemon's processes are sampled every 2 s. The exit code is 1 when a detection was
lost, duplicated or re-id'd, when the subscriber missed a journaled detection, or when the daemon exited by
itself; 0 otherwise (extras, and a subscriber that gave up and was started again, are reported). Host clock
steps are not injected (that needs privileges); data clock glitches are the subject of
tests/service/test_clock_glitch.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from soak_parts import (  # noqa: E402
    DEMO_FILES,
    LogWatch,
    Proc,
    RingUpstream,
    Sampler,
    ServeUpstream,
    attribute,
    compare,
    journal_detections,
    read_listen,
    ringserver_path,
    stage_pids,
)

from quakemon.base.net import free_port  # noqa: E402

STAGE_KINDS = ("ingest", "preprocess", "inference")
KINDS = ("kill_ingest", "kill_preprocess", "kill_inference", "kill_daemon", "upstream_kill", "upstream_stall",
         "subscriber_stall", "subscriber_restart", "corrupt")


def streams() -> list[str]:
    from obspy import read

    ids = set()
    for path in DEMO_FILES:
        for tr in read(str(path), headonly=True):
            s = tr.stats
            ids.add(f"{s.network}.{s.station}.{s.location}.{s.channel[:2]}?")
    return sorted(ids)


def write_config(path: Path, server: str, publish_port: int, catchup_port: int) -> Path:
    lines = ["[seedlink]", f'server = "{server}"', f"streams = {json.dumps(streams())}",
             f'state_file = "{path.with_suffix(".state")}"', "netto = 10.0", "reconnect_backoff_max = 2.0", "",
             "[model]", 'device = "cpu"', 'precision = "fp32"', "",
             "[pipeline]", f'runtime_dir = "{path.parent / "rt"}"', "heartbeat_interval_s = 1.0", "",
             "[publish]", f'endpoint = "tcp://127.0.0.1:{publish_port}"',
             f'catchup_endpoint = "tcp://127.0.0.1:{catchup_port}"', "",
             "[logging]", 'level = "info"', 'format = "json"', ""]
    path.write_text("\n".join(lines))
    return path


class Soak:
    """One soak run against one upstream; `run()` returns the results (also written as JSON by `main`)."""

    def __init__(self, upstream: str, workdir: Path, minutes: float, faults_per_kind: int, speed: float,
                 kinds: tuple[str, ...], margin_s: float, quiet_s: float = 10.0, settle_s: float = 10.0,
                 log: Any = print) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir, self.minutes, self.speed, self.margin_s, self.log = workdir, minutes, speed, margin_s, log
        self.quiet_s = quiet_s  # the drain ends when the state file has not changed for this long
        self.settle_s = settle_s  # healthy this long before the next fault
        self.overrun_s = 600.0  # the fault phase goes on at most this long past `minutes` to inject the plan
        self.logs = LogWatch()
        self.up_since: float | None = None
        self.warmup_s = 30.0
        port = free_port()
        if upstream == "serve":
            self.up: ServeUpstream | RingUpstream = ServeUpstream(workdir, port, speed)
        else:
            binary = ringserver_path()
            if binary is None:
                raise SystemExit("soak: ringserver not found (set QUAKEMON_RINGSERVER or put it on PATH)")
            self.up = RingUpstream(workdir, port, speed, binary)
        self.kinds = tuple(k for k in kinds if k != "corrupt" or self.up.corrupts)
        self.plan = [k for _ in range(faults_per_kind) for k in self.kinds]
        self.publish_port, self.catchup_port = free_port(), free_port()
        self.config = write_config(workdir / "quakemon.toml", self.up.address, self.publish_port, self.catchup_port)
        self.position = workdir / "position.json"
        self.listen_out = workdir / "published.jsonl"
        self.daemon: Proc | None = None
        self.listen: subprocess.Popen | None = None
        self.daemons = self.listens = 0
        self.faults: list[dict[str, Any]] = []
        self.unexpected_exits: list[dict[str, Any]] = []
        self.subscriber_exits: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    # processes ------------------------------------------------------------------------------------------------
    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def start_daemon(self) -> None:
        self.daemons += 1
        self.daemon = Proc([sys.executable, "-m", "quakemon", "run", "--config", str(self.config)],
                           self.dir, f"daemon-{self.daemons}")

    def start_listen(self) -> None:
        """`quakemon listen --resume`, its stdout appended to one file across restarts."""
        self.listens += 1
        args = [sys.executable, "-m", "quakemon", "listen", f"tcp://127.0.0.1:{self.publish_port}",
                "--resume", str(self.position), "--catchup", f"tcp://127.0.0.1:{self.catchup_port}", "--json"]
        with self.listen_out.open("ab") as out, (self.dir / f"listen-{self.listens}.err").open("wb") as err:
            self.listen = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=_env(),
                                           cwd=REPO)

    def daemon_pid(self) -> int | None:
        d = self.daemon
        return d.pid if d is not None and d.proc.poll() is None else None

    def check_listen(self) -> None:
        """Start the subscriber again when it exited by itself (it gives up when the catch-up server does not
        answer for 60 s, e.g. during a slow daemon restart); each such exit is reported with its last line."""
        if self.listen is not None and self.listen.poll() is not None:
            err = (self.dir / f"listen-{self.listens}.err").read_text(errors="replace").strip().splitlines()
            self.subscriber_exits.append({"t": self.now(), "code": self.listen.returncode,
                                          "error": err[-1] if err else ""})
            self.log(f"  [{self.now():7.1f}s] subscriber exited by itself with {self.listen.returncode}; starting it "
                     "again")
            self.start_listen()

    def check_daemon(self) -> None:
        """A daemon that exited by itself is a finding; start it again, as systemd's Restart= would."""
        self.check_listen()
        d = self.daemon
        if d is not None and d.proc.poll() is not None:
            self.unexpected_exits.append({"t": self.now(), "code": d.proc.returncode, "log": d.name})
            self.log(f"  [{self.now():7.1f}s] daemon exited by itself with {d.proc.returncode}; starting it again")
            d.stop()
            self.start_daemon()

    # faults ---------------------------------------------------------------------------------------------------
    def inject(self, kind: str) -> dict[str, Any] | None:
        """Inject one fault; None when it cannot be injected now (e.g. the stage is restarting)."""
        if kind.startswith("kill_") and kind[5:] in STAGE_KINDS:
            pid = self.daemon_pid() and stage_pids(self.daemon_pid()).get(kind[5:])
            if not pid:
                return None
            os.kill(pid, signal.SIGKILL)
            return {"pid": pid}
        if kind == "kill_daemon":
            assert self.daemon is not None
            pids = [*stage_pids(self.daemon.pid).values(), self.daemon.pid]
            for pid in pids:
                with _gone():
                    os.kill(pid, signal.SIGKILL)
            self.daemon.wait(10)
            self.daemon.stop()
            self.start_daemon()
            return {"pids": pids}
        if kind == "upstream_kill":
            pid = self.up.pid()
            self.up.kill()
            time.sleep(3)
            self.up.start()
            return {"pid": pid}
        if kind == "upstream_stall":
            stall = 15.0 if sum(f["kind"] == kind for f in self.faults) % 2 else 5.0
            return self._stopped(self.up.pid(), stall)
        if kind == "subscriber_stall":
            return self._stopped(self.listen.pid if self.listen else None, 8.0)
        if kind == "subscriber_restart":
            assert self.listen is not None
            self.listen.kill()
            self.listen.wait(10)
            time.sleep(1)
            self.start_listen()
            return {}
        if kind == "corrupt":
            n = self.up.corrupt()  # type: ignore[union-attr]
            return {"records": n} if n else None
        raise ValueError(f"unknown fault kind {kind!r}")

    @staticmethod
    def _stopped(pid: int | None, seconds: float) -> dict[str, Any] | None:
        if pid is None:
            return None
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        return {"pid": pid, "stopped_s": seconds}

    # the run --------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.up.start()
        self.start_daemon()
        assert self.daemon is not None
        self.daemon.wait_event("daemon_ready", 180)
        self.start_listen()
        self.daemon.wait_event("seedlink_connected", 60)
        self.up.begin()
        self.log(f"  [{self.now():7.1f}s] daemon ready; {len(self.plan)} faults over {self.minutes:g} min")
        sampler = self.sampler = Sampler(self.daemon_pid, self.warm)
        try:
            self._faults()
            self._drain()
        finally:
            sampler.close()
            if self.daemon is not None:
                self.daemon.stop()
            if self.listen is not None:
                _terminate(self.listen)
            self.up.close()
        return self._results(sampler)

    def healthy(self) -> bool:
        """The current daemon is ready and every stage it (re)spawned is ready again; keeps `up_since`."""
        d = self.daemon
        ok = False
        if d is not None and d.proc.poll() is None:
            counts = self.logs.update(d.err_path)
            ok = counts["daemon_ready"] >= 1 and counts["stage_ready"] >= counts["stage_spawned"]
        if not ok:
            self.up_since = None
        elif self.up_since is None:
            self.up_since = time.monotonic()
        return ok

    def warm(self) -> bool:
        """Every process has been up for `warmup_s` (memory figures are taken from here on)."""
        return self.up_since is not None and time.monotonic() - self.up_since >= self.warmup_s

    def _faults(self) -> None:
        """The plan, evenly spread over `minutes`; each fault waits until the daemon has been healthy for settle_s
        (a fault on a half-restarted daemon tests the restart, not the run), so the phase may last longer."""
        start = time.monotonic()
        end = start + self.minutes * 60
        step = self.minutes * 60 / (len(self.plan) + 1)
        plan, due, healthy_since = list(self.plan), start + step, None
        while (plan or time.monotonic() < end) and time.monotonic() < end + self.overrun_s:
            time.sleep(0.5)
            self.check_daemon()
            if not self.healthy():
                healthy_since = None
                continue
            if not plan:
                continue
            healthy_since = healthy_since or time.monotonic()
            if time.monotonic() < max(due, healthy_since + self.settle_s):
                continue
            kind, at, wall = plan[0], self.now(), time.time()
            detail = self.inject(kind)
            if detail is None:
                continue
            plan.pop(0)
            healthy_since = None
            self.faults.append({"kind": kind, "t": at, "wall": round(wall, 3), **detail})
            self.log(f"  [{at:7.1f}s] {kind} {detail}")
            due = max(due + step, time.monotonic())
        self.fault_phase_s = round(time.monotonic() - start, 1)
        self.not_injected = plan

    def _drain(self) -> None:
        """Stop the data, let the daemon finish what it received, stop it, let the subscriber catch up."""
        self.up.stop_data()
        assert self.daemon is not None
        self.check_daemon()
        state = self.config.with_suffix(".state")
        last, quiet_since, deadline = None, time.monotonic(), time.monotonic() + 120
        while time.monotonic() < deadline and time.monotonic() - quiet_since < self.quiet_s:
            time.sleep(1)
            mark = state.read_text() if state.exists() else None
            if mark != last:
                last, quiet_since = mark, time.monotonic()
        journal = self.config.with_suffix(".journal.sqlite")
        self._caught_up(set(journal_detections(journal)), 120)  # the catch-up server is the daemon's
        self.sampler.close()  # a stopping daemon's figures are not the run's
        self.daemon_code = self.daemon.stop(30)
        self.published_at = journal_detections(journal)  # with the "closed" of the shutdown
        self.journal_seqs = set(self.published_at)
        self._caught_up(self.journal_seqs, 15)

    def _caught_up(self, want: set[int], timeout: float) -> bool:
        """Wait until the subscriber printed every seq in `want`; False after `timeout` (reported, not raised)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_listen()
            if want <= {d["seq"] for d in read_listen(self.listen_out)[0]}:
                return True
            time.sleep(1)
        return False

    def _results(self, sampler: Sampler) -> dict[str, Any]:
        state = json.loads(self.config.with_suffix(".state").read_text())
        if not state["stations"]:
            raise RuntimeError(f"the daemon processed no data; see the logs in {self.dir}")
        newest = max(s["time"] for s in state["stations"].values())
        reference = self.dir / "reference.mseed"
        data = [raw for t, raw in self.up.reference(newest) if t <= newest + self.margin_s]
        reference.write_bytes(b"".join(data))
        out = self.dir / "replay.jsonl"
        subprocess.run([sys.executable, "-m", "quakemon", "replay", str(reference), "--config",
                        str(self.config), "--output", str(out), "--quiet"], check=True, env=_env(),
                       stdout=subprocess.DEVNULL, stderr=(self.dir / "replay.err").open("wb"))
        replayed = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        published, again = read_listen(self.listen_out)
        cmp = compare(published, replayed, newest - self.margin_s)
        attribute(cmp, self.published_at, self.faults)
        for i in range(1, self.daemons + 1):
            self.logs.update(self.dir / f"daemon-{i}.err")
        return {
            "upstream": self.up.name, "minutes": self.minutes, "speed": self.speed, "margin_s": self.margin_s,
            "faults": self.faults, "faults_per_kind": dict(Counter(f["kind"] for f in self.faults)),
            "faults_not_injected": self.not_injected, "unexpected_exits": self.unexpected_exits,
            "subscriber_exits": self.subscriber_exits,
            "daemon_exit_code": self.daemon_code, "daemon_starts": self.daemons,
            "records_rejected_by_daemon": self.logs.counts["seedlink_record_rejected"],
            "corrupt_records_fed": getattr(self.up, "corrupt_fed", 0),
            "stage_restarts": self.logs.counts["stage_restart_scheduled"], "fault_phase_s": self.fault_phase_s,
            "subscriber": {"received": len(published), "redelivered_same_seq": again,
                           "journaled_detections": len(self.journal_seqs),
                           "missing": sorted(self.journal_seqs - {d["seq"] for d in published})},
            "comparison": cmp, "memory_fds": sampler.summary(), "warmup_s": self.warmup_s,
            "samples": sampler.samples, "workdir": str(self.dir),
        }


class _gone:
    """Ignore ProcessLookupError (a stage that exited between listing and killing)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, *_: object) -> bool:
        return exc_type is ProcessLookupError


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _env() -> dict[str, str]:
    from support.pipeline import _env as test_env

    return test_env()


def failures(result: dict[str, Any]) -> list[str]:
    """What makes a run fail: losses, duplicates, re-ids, a subscriber gap, a daemon that exited by itself."""
    cmp = result["comparison"]
    out = [f"{n} {what}" for what in ("lost", "duplicated", "re_ids") if (n := len(cmp[what]))]
    if result["subscriber"]["missing"]:
        out.append(f"subscriber missed {len(result['subscriber']['missing'])} journaled detections")
    if result["unexpected_exits"]:
        out.append(f"{len(result['unexpected_exits'])} unexpected daemon exits")
    if result["daemon_exit_code"] != 0:
        out.append(f"daemon exit code {result['daemon_exit_code']} at SIGTERM")
    return out


def summary(result: dict[str, Any]) -> str:
    cmp = result["comparison"]
    lines = [f"upstream {result['upstream']}: {result['minutes']:g} min at {result['speed']:g}x real time, "
             f"fault phase {result['fault_phase_s']:.0f} s, {result['daemon_starts']} daemon start(s), "
             f"{result['stage_restarts']} stage restart(s)",
             "  faults: " + ", ".join(f"{k} {n}" for k, n in result["faults_per_kind"].items())]
    if result["faults_not_injected"]:
        lines.append(f"  not injected (no time left): {', '.join(result['faults_not_injected'])}")
    if result["corrupt_records_fed"]:
        lines.append(f"  corrupt records fed {result['corrupt_records_fed']}, "
                     f"rejected by the daemon {result['records_rejected_by_daemon']}")
    sub = result["subscriber"]
    lines.append(f"  subscriber: {sub['received']} detection messages, {len(sub['missing'])} of "
                 f"{sub['journaled_detections']} journaled missing, {sub['redelivered_same_seq']} redelivered "
                 "(same seq, at a subscriber kill)")
    lines.append(f"  detections (\"new\", windows up to {result['margin_s']:g} s of data before the end): replay "
                 f"{cmp['replay_new']}, published {cmp['published_new']}, matched {cmp['matched']}; lost "
                 f"{len(cmp['lost'])}, duplicated {len(cmp['duplicated'])}, re-id'd {len(cmp['re_ids'])}, "
                 f"extra {len(cmp['extra'])}")
    for what in ("lost", "duplicated", "re_ids", "extra"):
        for item in cmp[what]:
            lines.append(f"    {what}: {json.dumps(item)}")
    for kind, m in result["memory_fds"].items():
        lines.append(f"  {kind:<10} last process, over {m['observed_s']:.0f} s after warm-up: RSS "
                     f"{m['rss_warm_mib']:.0f} -> {m['rss_end_mib']:.0f} MiB ({m['rss_growth_pct']:+.1f} %), fds "
                     f"{m['fds_warm']} -> {m['fds_end']} (max {m['fds_max']}); {m['pids']} process(es), largest "
                     f"RSS {m['rss_max_any_mib']:.0f} MiB, most fds {m['fds_max_any']}")
    if result["unexpected_exits"]:
        lines.append(f"  daemon exited by itself: {result['unexpected_exits']}")
    for ex in result["subscriber_exits"]:
        lines.append(f"  subscriber exited by itself at {ex['t']:.0f} s (started again): {ex['error']}")
    return "\n".join(lines)


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=2.0, help="fault phase per upstream")
    p.add_argument("--faults-per-kind", type=int, default=1)
    p.add_argument("--upstream", choices=["serve", "ringserver", "both"], default="both")
    p.add_argument("--speed", type=float, default=5.0, help="data time per wall-clock time")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds")
    p.add_argument("--margin", type=float, default=150.0,
                   help="seconds of data before the newest processed record left out of the comparison")
    p.add_argument("--workdir", default=None, help="logs, configs, journals (default: a new temporary folder)")
    p.add_argument("--out", default="soak.json", help="JSON results")
    args = p.parse_args(argv)
    import tempfile

    signal.signal(signal.SIGTERM, _interrupted)  # clean up the processes (finally blocks) on SIGTERM too
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="quakemon-soak-"))
    ups = ["serve", "ringserver"] if args.upstream == "both" else [args.upstream]
    results, failed = [], []
    print(f"soak: {machine()}; work folder {root}")
    for up in ups:
        print(f"upstream {up}")
        soak = Soak(up, root / up, args.minutes, args.faults_per_kind, args.speed, kinds, args.margin)
        result = soak.run()
        results.append(result)
        print(summary(result))
        failed += [f"{up}: {f}" for f in failures(result)]
    Path(args.out).write_text(json.dumps({"machine": machine(), "argv": sys.argv[1:], "runs": results,
                                          "failures": failed}, indent=1))
    print(f"results: {args.out}" + (f"; FAILED: {'; '.join(failed)}" if failed else "; no loss, no duplicate"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
