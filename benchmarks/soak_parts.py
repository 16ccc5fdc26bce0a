"""Parts of the soak and fault suite (`benchmarks/soak.py`): upstream servers, process sampling, the comparison.

- `ServeUpstream`: `quakemon serve --loop` as a subprocess on a fixed port, so that a restart is found again. The
  reference data is recomputed from the archive exactly as the server loops it (pass k shifted by k x the
  archive's span, `quakemon.tools.serve_records.retime_record`).
- `RingUpstream`: EarthScope's ringserver (`tests/support/ringserver.py`), fed by a thread that writes the looped
  archive into its scan folder at `speed` times real time; the reference is what was fed. Corrupt records are
  fed beside the real ones: copies of records already fed whose Steim frames are overwritten with random bytes.
- `Sampler`: resident memory and open file descriptors of the daemon and its stage processes over time.
- `compare`: published detections (what a resuming subscriber received) against a replay of the same data.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from support.pipeline import Proc, children, wait_for  # noqa: E402
from support.ringserver import ENV as RINGSERVER_ENV  # noqa: E402
from support.ringserver import RingServer  # noqa: E402

from quakemon.tools.serve_records import TICKS, Record, load_records, retime_record  # noqa: E402
from quakemon.wire.schema import parse_iso_utc  # noqa: E402

DEMO_FILES = sorted((REPO / "quakemon" / "assets" / "demo").glob("*.mseed"))
REID_S = 1.0  # a detection of the same station whose pick is this close, under another id, is "re-id'd"


def demo_records() -> tuple[list[Record], int]:
    """The demo archive's 512-byte records in serving order, and the span (ticks) each loop pass is shifted by."""
    records = load_records(DEMO_FILES)
    t0 = min(r.start for r in records)
    return records, round((max(r.end for r in records) - t0) * TICKS)


def looped(records: list[Record], span_ticks: int, passes: int) -> list[tuple[float, bytes]]:
    """(start, raw) of `passes` loop passes, as `quakemon serve --loop` sends them."""
    out = []
    for k in range(passes):
        shift = k * span_ticks
        out += [(r.start + shift / TICKS, retime_record(r.raw, shift, r.little_endian)) for r in records]
    return out


def garble(raw: bytes, rng: random.Random) -> bytes:
    """A record with its fixed header and blockette 1000 intact and its data frames random bytes."""
    return raw[:64] + bytes(rng.getrandbits(8) for _ in range(len(raw) - 64))


class ServeUpstream:
    """`quakemon serve --loop` on `port`, restartable; SIGSTOP/SIGCONT for stalls."""

    name = "serve"
    corrupts = False

    def __init__(self, workdir: Path, port: int, speed: float) -> None:
        self.workdir, self.port, self.speed = workdir, port, speed
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        args = [sys.executable, "-m", "quakemon", "--log-level", "warning", "serve", *map(str, DEMO_FILES), "--port",
                str(self.port), "--loop", "--speed", str(self.speed)]
        proc = self.proc = Proc(args, self.workdir, f"serve-{self.starts}")
        wait_for(lambda: _listening(self.port) or proc.proc.poll() is not None, 30, "quakemon serve to listen")
        if proc.proc.poll() is not None:
            raise RuntimeError(f"quakemon serve exited with {proc.proc.returncode}: {proc.stderr()[-2000:]}")

    def begin(self) -> None:
        """Nothing to do: `DATA` without a sequence number streams `serve`'s archive from its start."""

    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.proc.poll() is None else None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc.stop()

    def stop_data(self) -> None:
        """No more data: the server stops (the daemon has what it received)."""
        if self.proc is not None:
            self.proc.stop()

    def reference(self, until: float) -> list[tuple[float, bytes]]:
        records, span = demo_records()
        t0 = min(r.start for r in records)
        passes = int((until - t0) * TICKS // span) + 2
        return looped(records, span, passes)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class RingUpstream:
    """ringserver fed with the looped demo archive at `speed` x real time from a thread; corrupt records on demand."""

    name = "ringserver"
    corrupts = True

    def __init__(self, workdir: Path, port: int, speed: float, binary: Path, seed: int = 0) -> None:
        self.ring = RingServer(binary, workdir / "rs", port, max_packet=512)  # short: ringserver limits config lines
        self.port, self.speed = port, speed
        self.fed: list[tuple[float, bytes]] = []
        self.corrupt_fed = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.ring.start()

    def begin(self) -> None:
        """Start feeding. Call it once the daemon is connected: a SeedLink client without a resume position gets
        the data that arrives after it connected, so records fed before would not be the daemon's to miss."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._feed, name="ring-feeder", daemon=True)
            self._thread.start()

    def _feed(self) -> None:
        records, span = demo_records()
        t0 = min(r.start for r in records)
        began = time.monotonic()
        k, pending = 0, []
        while not self._stop.wait(1.0):
            now = t0 + (time.monotonic() - began) * self.speed
            while not pending or pending[-1][0] <= now:
                pending += looped(records, span, k + 1)[k * len(records):]
                k += 1
            due = [p for p in pending if p[0] <= now]
            if not due:
                continue
            pending = pending[len(due):]
            with self._lock:
                self.fed += due
                self.ring.feed(b"".join(raw for _, raw in due))

    def corrupt(self, n: int = 3) -> int:
        """Feed `n` garbled copies of records fed before; returns how many."""
        with self._lock:
            if len(self.fed) < n:
                return 0
            bad = [garble(raw, self._rng) for _, raw in self._rng.sample(self.fed[-200:], n)]
            self.ring.feed(b"".join(bad), name=f"corrupt{self.corrupt_fed:04d}.mseed")
            self.corrupt_fed += n
        return n

    def pid(self) -> int | None:
        proc = self.ring.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill(self) -> None:
        self.ring.kill()

    def stop_data(self) -> None:
        """No more data fed; the server stays up so that the daemon gets whatever the ring holds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def reference(self, until: float) -> list[tuple[float, bytes]]:
        with self._lock:
            return sorted(self.fed, key=lambda p: p[0])

    def close(self) -> None:
        self.stop_data()
        self.ring.stop()
        self.ring.kill()


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def ringserver_path() -> Path | None:
    import shutil

    found = os.environ.get(RINGSERVER_ENV) or shutil.which("ringserver")
    return Path(found) if found and Path(found).is_file() else None


# -- processes ------------------------------------------------------------------------------------------------


def stage_kind(pid: int) -> str | None:
    """The stage a daemon child runs (`ingest`, `preprocess`, `inference`), from its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    if "quakemon.service.stage_main" in args:
        i = args.index("quakemon.service.stage_main")
        return args[i + 1] if i + 1 < len(args) else None
    return None


def stage_pids(daemon_pid: int) -> dict[str, int]:
    return {kind: pid for pid in children(daemon_pid) if (kind := stage_kind(pid))}


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Sampler:
    """Every `interval` s: (t, process kind, pid, RSS KiB, open fds, warm) for the daemon and each stage process.

    `daemon_pid()` gives the current daemon (it is restarted under the sampler); `warm()` says whether the
    pipeline has been up long enough for the sample to count as after warm-up.
    """

    def __init__(self, daemon_pid: Any, warm: Any, interval: float = 2.0) -> None:
        self._daemon_pid, self._warm = daemon_pid, warm
        self.interval = interval
        self.samples: list[tuple[float, str, int, int, int, bool]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            pid = self._daemon_pid()
            if pid is None:
                continue
            t, warm = round(time.monotonic() - self.t0, 1), bool(self._warm())
            for kind, p in [("daemon", pid), *stage_pids(pid).items()]:
                rss, fds = rss_kib(p), fd_count(p)
                if rss is not None and fds is not None:
                    self.samples.append((t, kind, p, rss, fds, warm))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict[str, Any]:
        """Per process kind: RSS (MiB) and open fds of the process alive at the end, from its first warm sample to
        its last (growth %); the largest RSS and fd count of any process of the kind."""
        out: dict[str, Any] = {}
        for kind in sorted({s[1] for s in self.samples}):
            rows = [s for s in self.samples if s[1] == kind]
            mine = [s for s in rows if s[2] == rows[-1][2]]
            warm = [s for s in mine if s[5]] or mine[-1:]
            first, last = warm[0], warm[-1]
            out[kind] = {
                "pids": len({s[2] for s in rows}), "observed_s": round(last[0] - first[0], 1),
                "rss_warm_mib": round(first[3] / 1024, 1), "rss_end_mib": round(last[3] / 1024, 1),
                "rss_growth_pct": round(100 * (last[3] - first[3]) / first[3], 1),
                "rss_max_any_mib": round(max(s[3] for s in rows) / 1024, 1),
                "fds_warm": first[4], "fds_end": last[4], "fds_max": max(s[4] for s in warm),
                "fds_max_any": max(s[4] for s in rows)}
        return out


class LogWatch:
    """Counts events in a daemon's JSON log as it grows (reads only what was appended since the last call)."""

    EVENTS = ("daemon_ready", "stage_spawned", "stage_ready", "stage_restart_scheduled", "stage_died",
              "seedlink_record_rejected")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._files: dict[Path, int] = {}
        self._per_file: dict[Path, Counter[str]] = {}

    def update(self, path: Path) -> Counter[str]:
        """Read what `path` gained; returns the counts of that file alone."""
        offset = self._files.get(path, 0)
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except OSError:
            return Counter()
        chunk = chunk[: chunk.rfind(b"\n") + 1]
        self._files[path] = offset + len(chunk)
        mine = self._per_file.setdefault(path, Counter())
        for name in self.EVENTS:
            n = chunk.count(f'"event": "{name}"'.encode())
            mine[name] += n
            self.counts[name] += n
        return mine


# -- comparison -----------------------------------------------------------------------------------------------


def read_listen(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Detection bodies of a `quakemon listen --resume --json` output, once per seq; and how many came again."""
    seen: dict[int, dict[str, Any]] = {}
    again = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            body = json.loads(line)
        except ValueError:
            continue
        if not str(body.get("schema", "")).startswith("quakemon.detection"):
            continue
        if body["seq"] in seen:
            again += 1
        seen[body["seq"]] = body
    return [seen[s] for s in sorted(seen)], again


def _end(det: dict[str, Any]) -> float:
    return parse_iso_utc(det["last_window_end"])


def _brief(det: dict[str, Any]) -> dict[str, Any]:
    return {"id": det["id"], "station": det["station"], "onset": det["onset"], "seq": det.get("seq"),
            "last_window_end": det["last_window_end"]}


def compare(published: list[dict[str, Any]], replayed: list[dict[str, Any]], cutoff: float) -> dict[str, Any]:
    """Published "new" detections against the replay's, both limited to windows ending at or before `cutoff`.

    lost: in the replay, not published (nor re-id'd); duplicated: one id published as "new" more than once;
    re_ids: a replay detection published under another id (same station, pick within REID_S); extra: published,
    not in the replay.
    """
    pub = [d for d in published if d["state"] == "new" and _end(d) <= cutoff]
    rep = [d for d in replayed if d.get("state") == "new" and _end(d) <= cutoff]
    per_id = Counter(d["id"] for d in pub)
    rep_ids, pub_ids = {d["id"] for d in rep}, set(per_id)
    missing = [d for d in rep if d["id"] not in pub_ids]
    unknown = [d for d in pub if d["id"] not in rep_ids]
    re_ids = []
    for d in missing:
        onset = parse_iso_utc(d["onset"])
        twin = next((p for p in unknown if p["station"] == d["station"]
                     and abs(parse_iso_utc(p["onset"]) - onset) <= REID_S), None)
        if twin is not None:
            re_ids.append({"replay": _brief(d), "published": _brief(twin)})
    twins = {r["published"]["id"] for r in re_ids}
    lost = [_brief(d) for d in missing if d["id"] not in {r["replay"]["id"] for r in re_ids}]
    return {
        "cutoff": cutoff, "replay_new": len(rep), "published_new": len(pub),
        "matched": len(rep_ids & pub_ids), "lost": lost,
        "duplicated": [[_brief(d) for d in pub if d["id"] == i] for i, n in per_id.items() if n > 1],
        "re_ids": re_ids, "extra": [_brief(d) for d in unknown if d["id"] not in twins],
    }


def journal_detections(path: Path) -> dict[int, float]:
    """{seq: publication time (s since the epoch)} of every detection message the journal holds."""
    from quakemon.wire.journal import JournalReader

    out: dict[int, float] = {}
    with JournalReader(path) as reader:
        after = 0
        while page := reader.after(after, 10_000):
            out.update((m.seq, float(m.time)) for m in page if m.topic.startswith("detection"))
            after = page[-1].seq
    return out


def attribute(cmp: dict[str, Any], published_at: dict[int, float], faults: list[dict[str, Any]]) -> None:
    """Add to each published detection in `cmp` its publication time and the last fault injected before it."""
    import datetime as dt

    items = [*cmp["extra"], *(r["published"] for r in cmp["re_ids"]), *(d for dup in cmp["duplicated"] for d in dup)]
    for item in items:
        when = published_at.get(item["seq"])
        item["published_at"] = None if when is None else dt.datetime.fromtimestamp(when, dt.UTC).isoformat()
        if when is None:
            continue
        before = [f for f in faults if f["wall"] <= when]
        item["after_fault"] = ({"kind": before[-1]["kind"], "t": before[-1]["t"],
                                "s_before": round(when - before[-1]["wall"], 1)} if before else None)
