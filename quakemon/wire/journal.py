"""The publisher's journal: every published detection and event, in seq order, in one SQLite file.

The journal is what makes delivery survive restarts. The publisher appends each message (seq, epoch, topic,
publication time, JSON body) and commits it *before* sending it on the PUB socket, so a message a subscriber has
seen is always in the journal, and any seq a subscriber missed can be fetched from it afterwards
(:mod:`quakemon.wire.catchup`). Heartbeats are not journaled: their seqs appear as holes in the journal.

Contract:

* ``seq`` is the table's primary key and only grows. :meth:`Journal.open` reads the largest seq stored, and a
  publisher opened on the journal continues from it with a new epoch, so a restart shows as an epoch change,
  never as a seq gap or a repeated seq (heartbeat seqs excepted). Retention never deletes the newest message,
  so the largest seq survives any pruning.
* Durability: the file is in WAL mode and every :meth:`Journal.append` is one transaction. "Acknowledged" means
  committed: once ``append`` returns, the message survives the process being killed. With
  ``synchronous="full"`` (the default) SQLite also fsyncs the WAL on every commit, so it survives a power loss
  or kernel crash too; with ``"normal"`` the WAL is fsynced only at checkpoints, which is faster but may lose
  the last commits on power loss (never on a process crash). docs/delivery.md lists the measured rates.
* Retention: messages older than ``retention_days`` (by publication time) and, beyond ``max_bytes`` of live
  pages, the oldest messages are deleted in :meth:`Journal.prune`, which ``append`` runs every
  ``prune_every`` appends. Freed pages are reused; the file does not shrink.
* The file is refused with a :class:`JournalError` naming it when it is not a quakemon journal, fails SQLite's
  ``quick_check``, or cannot be written.

One :class:`Journal` (the writer) per file; any number of :class:`JournalReader` in other threads or processes.
A reader belongs to the thread that opened it; the writer may be handed to another thread (like the publisher
that owns it), but only one thread may use it at a time.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from quakemon.base.errors import QuakemonError

log = structlog.get_logger(__name__)

JOURNAL_FORMAT = "quakemon.journal/1"
SQLITE_MAGIC = b"SQLite format 3\x00"
SYNCHRONOUS = ("full", "normal")
MAX_PAGE = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    epoch TEXT NOT NULL,
    topic TEXT NOT NULL,
    time REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_time ON messages (time);
"""


class JournalError(QuakemonError):
    """A journal file cannot be used: not a journal, corrupt, not writable, or a write failed."""


@dataclass(frozen=True)
class JournalRecord:
    """One journaled message; ``body`` is the JSON text exactly as it was published."""

    seq: int
    epoch: str
    topic: str
    time: float
    body: str


def _check_file(path: Path) -> None:
    """Refuse early (before SQLite touches it) a path that is a directory or a non-SQLite file."""
    if path.is_dir():
        raise JournalError(f"journal {str(path)!r} is a directory; expected a journal file")
    if path.exists() and path.stat().st_size > 0:
        try:
            with open(path, "rb") as fh:
                magic = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise JournalError(f"journal {str(path)!r} cannot be read: {exc}") from exc
        if magic != SQLITE_MAGIC:
            raise JournalError(f"journal {str(path)!r} is not a quakemon journal (not an SQLite file)")


class JournalReader:
    """Read-only access to a journal: bounded pages by seq or by time, from any thread that opened it."""

    def __init__(self, path: str | Path, *, _conn: sqlite3.Connection | None = None) -> None:
        self.path = Path(path)
        if _conn is not None:
            self._conn = _conn
            return
        _check_file(self.path)
        if not self.path.is_file():
            raise JournalError(f"journal {str(self.path)!r} does not exist")
        try:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10.0,
                                         isolation_level=None)
            self._conn.execute("PRAGMA query_only=ON")
            self.journal_id = self._meta_check()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"journal {str(self.path)!r} cannot be read: {exc}") from exc

    def _meta_check(self) -> str:
        try:
            rows = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"journal {str(self.path)!r} is not a quakemon journal: {exc}") from exc
        if rows.get("format") != JOURNAL_FORMAT or "journal_id" not in rows:
            raise JournalError(f"journal {str(self.path)!r} is not a quakemon journal "
                               f"(format {rows.get('format')!r}, expected {JOURNAL_FORMAT!r})")
        return rows["journal_id"]

    def bounds(self) -> tuple[int, int]:
        """(first seq, last seq) held; (0, 0) when empty."""
        first, last = self._conn.execute("SELECT MIN(seq), MAX(seq) FROM messages").fetchone()
        return (first or 0, last or 0)

    @property
    def last_seq(self) -> int:
        return self.bounds()[1]

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def after(self, seq: int, limit: int = 500, before: int | None = None) -> list[JournalRecord]:
        """Up to `limit` messages with seq > `seq` (and < `before` when given), in seq order."""
        limit = max(1, min(int(limit), MAX_PAGE))
        upper = before if before is not None else 2**63 - 1
        cur = self._conn.execute(
            "SELECT seq, epoch, topic, time, body FROM messages WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
            (int(seq), int(upper), limit))
        return [JournalRecord(*row) for row in cur.fetchall()]

    def since(self, t: float, limit: int = 500) -> list[JournalRecord]:
        """Up to `limit` messages published at or after POSIX time `t`, in seq order.

        Page on with :meth:`after` from the last seq returned.
        """
        limit = max(1, min(int(limit), MAX_PAGE))
        row = self._conn.execute("SELECT MIN(seq) FROM messages WHERE time >= ?", (float(t),)).fetchone()
        if row[0] is None:
            return []
        return self.after(int(row[0]) - 1, limit)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Journal(JournalReader):
    """The writer: opens or creates a journal file and appends messages, one committed transaction each."""

    def __init__(self, path: str | Path, *, synchronous: str = "full", retention_days: float | None = None,
                 max_bytes: int | None = None, prune_every: int = 1000, check: bool = True) -> None:
        if synchronous not in SYNCHRONOUS:
            raise JournalError(f"journal synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
        path = Path(path)
        _check_file(path)
        if path.exists() and not os.access(path, os.W_OK):
            raise JournalError(f"journal {str(path)!r} is not writable")
        if not path.exists() and not os.access(path.parent if str(path.parent) else ".", os.W_OK):
            raise JournalError(f"journal {str(path)!r} cannot be created: directory {str(path.parent)!r} "
                               "is not writable or does not exist")
        try:
            conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {str(path)!r} cannot be opened: {exc}") from exc
        super().__init__(path, _conn=conn)
        self.synchronous = synchronous
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self.prune_every = max(1, int(prune_every))
        self._since_prune = 0
        try:
            if check:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise JournalError(f"journal {str(path)!r} is corrupt (quick_check: {result})")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise JournalError(f"journal {str(path)!r}: cannot switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                n_meta = conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0]
                if n_meta == 0:
                    if conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table'").fetchone()[0] > 2:
                        raise JournalError(f"journal {str(path)!r} is an SQLite database but not a quakemon "
                                           "journal (it has other tables)")
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                        ("format", JOURNAL_FORMAT), ("journal_id", secrets.token_hex(8)),
                        ("created", f"{time.time():.6f}")])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.journal_id = self._meta_check()
        except JournalError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalError(f"journal {str(path)!r} is corrupt, not a journal, or not writable: {exc}") from exc
        self._seq_last = self.last_seq
        log.info("journal_opened", path=str(path), journal_id=self.journal_id, last_seq=self._seq_last,
                 synchronous=synchronous, retention_days=retention_days, max_bytes=max_bytes)
        self.prune()

    @classmethod
    def open(cls, path: str | Path, **kwargs: object) -> Journal:
        """Open (or create) the journal at `path`; see the class for keyword arguments."""
        return cls(path, **kwargs)  # type: ignore[arg-type]

    @property
    def seq_last(self) -> int:
        """The largest seq appended (0 for a new journal); a publisher continues from it."""
        return self._seq_last

    def append(self, seq: int, epoch: str, topic: str, body: str | bytes, t: float | None = None) -> None:
        """Commit one message. When this returns the message is acknowledged (see the module's durability note).

        `seq` must be larger than every seq already stored; raises :class:`JournalError` otherwise or when the
        write fails (disk full, file removed, ...).
        """
        if seq <= self._seq_last:
            raise JournalError(f"journal {str(self.path)!r}: seq {seq} is not after the last seq {self._seq_last}")
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        try:
            self._conn.execute("INSERT INTO messages (seq, epoch, topic, time, body) VALUES (?, ?, ?, ?, ?)",
                               (int(seq), epoch, topic, time.time() if t is None else float(t), text))
        except sqlite3.Error as exc:
            raise JournalError(f"journal {str(self.path)!r}: append of seq {seq} failed: {exc}") from exc
        self._seq_last = int(seq)
        self._since_prune += 1
        if self._since_prune >= self.prune_every:
            self.prune()

    def live_bytes(self) -> int:
        """Bytes of pages in use (the file minus free pages)."""
        page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def prune(self, now: float | None = None) -> int:
        """Apply retention (days, then size); returns the number of messages deleted. Keeps the newest message."""
        self._since_prune = 0
        deleted = 0
        try:
            if self.retention_days is not None:
                cutoff = (time.time() if now is None else now) - float(self.retention_days) * 86400.0
                cur = self._conn.execute(
                    "DELETE FROM messages WHERE time < ? AND seq < (SELECT MAX(seq) FROM messages)", (cutoff,))
                deleted += max(0, cur.rowcount)
            if self.max_bytes is not None:
                for _ in range(10_000):  # bounded: each round deletes a tenth of what is left (at least 1)
                    if self.live_bytes() <= self.max_bytes:
                        break
                    n = self.count()
                    if n <= 1:
                        break
                    cur = self._conn.execute(
                        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages ORDER BY seq LIMIT ?) "
                        "AND seq < (SELECT MAX(seq) FROM messages)", (max(1, n // 10),))
                    deleted += max(0, cur.rowcount)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {str(self.path)!r}: pruning failed: {exc}") from exc
        if deleted:
            log.info("journal_pruned", path=str(self.path), deleted=deleted, bounds=self.bounds())
        return deleted

    def close(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass  # another connection holds the WAL; the next open checkpoints
        super().close()
