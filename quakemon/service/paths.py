"""The files the daemon writes: where the "auto" path keys point, and the start-up check that each can be written.

`check_writable_paths` runs before any stage starts (and in `quakemon check-config`), so that an unusable path
stops the daemon with a `ConfigError` (exit 2) naming the key, the path and the reason, instead of failing later
in a running stage. Every config key that names a path the daemon writes is declared once, in `WRITTEN_PATHS`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from quakemon.base.errors import ConfigError
from quakemon.base.files import path_problem

STATE_FILE_NAME = "seedlink.state"


def default_runtime_dir() -> str:
    """pipeline.runtime_dir "auto": $RUNTIME_DIRECTORY (systemd RuntimeDirectory=; the first of several), else
    $XDG_RUNTIME_DIR/quakemon, else <tmp>/quakemon-<uid>."""
    env = os.environ.get("RUNTIME_DIRECTORY") or (
        os.path.join(os.environ["XDG_RUNTIME_DIR"], "quakemon") if os.environ.get("XDG_RUNTIME_DIR") else ""
    )
    return env.split(":")[0] if env else os.path.join(tempfile.gettempdir(), f"quakemon-{os.getuid()}")


def default_state_file() -> str:
    """seedlink.state_file "auto": $STATE_DIRECTORY/seedlink.state (systemd StateDirectory=; the first of several),
    else $XDG_STATE_HOME/quakemon/seedlink.state, else ~/.local/state/quakemon/seedlink.state (the XDG default;
    a relative $XDG_STATE_HOME is ignored, as the XDG specification asks)."""
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return os.path.join(state_dir, STATE_FILE_NAME)
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "quakemon", STATE_FILE_NAME)


@dataclass(frozen=True, slots=True)
class WrittenPath:
    """A config key ("section.key") naming a path the daemon writes, and how: "file" (opened and written in place),
    "replaced" (written to a temporary file beside it and renamed over it: only its directory must be writable) or
    "dir"; `stages` are the stages of `quakemon run` that write it, () = the supervisor, whatever stages run."""

    key: str
    kind: str
    stages: tuple[str, ...] = ()


#: Every path key the daemon writes; a new one adds its line here and is checked at start-up and by check-config.
WRITTEN_PATHS = (
    WrittenPath("pipeline.runtime_dir", "dir"),
    WrittenPath("seedlink.state_file", "replaced", ("ingest",)),
    WrittenPath("publish.journal", "file", ("inference",)),
    WrittenPath("archive.probabilities", "dir", ("inference",)),
)


def written_paths(cfg: Any, stages: Iterable[str] | None = None) -> list[tuple[WrittenPath, str]]:
    """(declaration, resolved path) for each WRITTEN_PATHS key that is set ("" = off) and written by one of
    `stages` (None = every stage)."""
    wanted = None if stages is None else set(stages)
    out = []
    for wp in WRITTEN_PATHS:
        section, _, key = wp.key.partition(".")
        path = getattr(getattr(cfg, section), key)
        if path and (wanted is None or not wp.stages or wanted & set(wp.stages)):
            out.append((wp, path))
    return out


def check_writable_paths(cfg: Any, stages: Sequence[str] | None = None, *, create: bool = True,
                         where: str = "config") -> list[tuple[WrittenPath, str]]:
    """Check every path that `stages` (None = all) of the daemon write; return them as `written_paths` does.

    Raises ConfigError (exit 2) naming, for each unusable path, the key, the path and why (prefixed by `where`).
    `create`: make missing directories, as `quakemon run` does; check-config passes False and creates nothing.
    """
    paths = written_paths(cfg, stages)
    problems = [f"{wp.key}: cannot write {path!r}: {why}" for wp, path in paths
                if (why := path_problem(path, wp.kind, create=create))]
    if problems:
        raise ConfigError(f"{where}: " + f"; {where}: ".join(problems))
    return paths
