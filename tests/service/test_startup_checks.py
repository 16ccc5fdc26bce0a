"""Start-up path checks: `quakemon run` refuses (exit 2, naming the key, the path and why) a path it would write
but cannot, before any stage starts; `quakemon check-config` reports the same problems and creates nothing.

The failures are built so that they fail for root too (a path under a regular file, a directory where a file
belongs); for the unwritable directory (mode 0500), a root test process runs the daemon without the capabilities
that let root ignore file modes, as the systemd unit does (CapabilityBoundingSet= empty). A read-only filesystem
cannot be mounted here, so that case has no test.
"""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.pipeline import ROOT

from quakemon.base.errors import ConfigError
from quakemon.service.config import load_config
from quakemon.service.paths import WRITTEN_PATHS, check_writable_paths, path_problem, written_paths

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def write_config(path: Path, *, state_file: Path | str, runtime_dir: Path, journal: str = "auto") -> Path:
    path.write_text(f'[seedlink]\nserver = "127.0.0.1:18000"\nstreams = ["BW.RJOB..EH?"]\nstate_file = "{state_file}"\n'
                    f'[pipeline]\nruntime_dir = "{runtime_dir}"\n[publish]\njournal = "{journal}"\n'
                    '[logging]\nformat = "json"\n')
    return path


def _drop_dac_capabilities() -> None:
    """In the child before exec: drop root's file-mode overrides from the bounding set, so that after exec the
    process is denied what the file modes deny (for a non-root user this changes nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def quakemon(*args: str, modes_bind_root: bool = False) -> subprocess.CompletedProcess:
    """`python -m quakemon ARGS` from the repository root; text output. modes_bind_root: run as root without the
    capabilities that override file modes (see `_drop_dac_capabilities`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
    drop = _drop_dac_capabilities if modes_bind_root and os.geteuid() == 0 else None
    return subprocess.run([sys.executable, "-m", "quakemon", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env, stdin=subprocess.DEVNULL, preexec_fn=drop)


def assert_refused(proc: subprocess.CompletedProcess, *parts: str) -> None:
    """Exit 2 with one error line that holds every part, no traceback, and no stage started."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert all(p in proc.stderr for p in parts), (parts, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "daemon_starting" not in proc.stderr


# -- the check itself ----------------------------------------------------------------------------------------


def test_every_written_path_key_is_declared_once_and_exists() -> None:
    keys = [wp.key for wp in WRITTEN_PATHS]
    assert len(keys) == len(set(keys))
    assert {"seedlink.state_file", "publish.journal", "pipeline.runtime_dir"} <= set(keys)
    cfg = load_config(None)
    for wp in WRITTEN_PATHS:
        section, _, key = wp.key.partition(".")
        assert isinstance(getattr(getattr(cfg, section), key), str), wp.key
        assert wp.kind in ("file", "replaced", "dir")


def test_missing_directories_are_created_only_when_asked(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b" / "seedlink.state"
    assert path_problem(str(state), "replaced", create=False) is None  # tmp_path is writable: b can be made
    assert not (tmp_path / "a").exists()  # check-config creates nothing
    assert path_problem(str(state), "replaced", create=True) is None
    assert (tmp_path / "a" / "b").is_dir() and stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    assert path_problem(str(tmp_path / "rt" / "x"), "dir", create=True) is None and (tmp_path / "rt" / "x").is_dir()


def test_each_unusable_path_names_the_reason(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("x")
    under_file = path_problem(str(regular / "sub" / "seedlink.state"), "replaced", create=True)
    assert under_file == f"{str(regular)!r} is not a directory, so {str(regular / 'sub')!r} cannot be created"
    assert path_problem(str(tmp_path), "replaced", create=True) == "it is a directory, expected a file"
    assert path_problem(str(tmp_path), "file", create=False) == "it is a directory, expected a file"
    assert path_problem(str(regular), "dir", create=True) == "it is not a directory"
    assert path_problem(str(regular), "file", create=True) is None  # an existing writable file is fine


def test_check_names_every_problem_and_only_the_paths_of_the_given_stages(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("x")
    cfg = load_config(write_config(tmp_path / "q.toml", state_file=regular / "seedlink.state",
                                   runtime_dir=tmp_path / "rt", journal=str(tmp_path)))
    with pytest.raises(ConfigError) as exc:
        check_writable_paths(cfg, where="cfg")
    text = str(exc.value)
    assert f"cfg: seedlink.state_file: cannot write {str(regular / 'seedlink.state')!r}: {str(regular)!r} is not a " \
           "directory" in text
    assert f"cfg: publish.journal: cannot write {str(tmp_path)!r}: it is a directory, expected a file" in text
    checked = check_writable_paths(cfg, ["preprocess"])  # preprocess writes neither file
    assert [(wp.key, p) for wp, p in checked] == [("pipeline.runtime_dir", str(tmp_path / "rt"))]
    off = load_config(None, {"seedlink.state_file": "", "pipeline.runtime_dir": str(tmp_path / "rt")})
    assert [wp.key for wp, _ in written_paths(off)] == ["pipeline.runtime_dir"]  # "" = off: nothing to check


# -- the daemon and check-config -----------------------------------------------------------------------------


def test_run_refuses_a_state_file_under_a_regular_file(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("x")
    state = regular / "seedlink.state"
    config = write_config(tmp_path / "q.toml", state_file=state, runtime_dir=tmp_path / "rt", journal="")
    why = f"{str(regular)!r} is not a directory"
    assert_refused(quakemon("run", "--config", str(config)), "seedlink.state_file", str(state), why)
    assert_refused(quakemon("check-config", str(config)), "seedlink.state_file", str(state), why)
    # a host that runs no ingest stage does not write the state file
    assert quakemon("check-config", str(config), "--stages", "preprocess,inference").returncode == 0


def test_run_refuses_a_state_file_that_is_a_directory(tmp_path: Path) -> None:
    state = tmp_path / "seedlink.state"
    state.mkdir()
    config = write_config(tmp_path / "q.toml", state_file=state, runtime_dir=tmp_path / "rt", journal="")
    parts = ("seedlink.state_file", f"cannot write {str(state)!r}: it is a directory, expected a file")
    assert_refused(quakemon("run", "--config", str(config)), *parts)
    assert_refused(quakemon("check-config", str(config)), *parts)


def test_run_refuses_a_runtime_dir_that_is_a_file(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    runtime.write_text("x")
    config = write_config(tmp_path / "q.toml", state_file=tmp_path / "s.state", runtime_dir=runtime)
    assert_refused(quakemon("run", "--config", str(config), "--stages", "preprocess"), "pipeline.runtime_dir",
                   f"cannot write {str(runtime)!r}: it is not a directory")


def test_run_refuses_an_unwritable_state_directory(tmp_path: Path) -> None:
    """chmod 0500 on the state file's directory (root runs the daemon with file modes binding it)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = write_config(tmp_path / "q.toml", state_file=locked / "seedlink.state", runtime_dir=tmp_path / "rt",
                          journal=str(tmp_path / "journal.sqlite"))
    why = f"cannot write {str(locked / 'seedlink.state')!r}: directory {str(locked)!r} is not writable " \
          "(Permission denied)"
    try:
        assert_refused(quakemon("run", "--config", str(config), modes_bind_root=True), "seedlink.state_file", why)
        assert_refused(quakemon("check-config", str(config), modes_bind_root=True), "seedlink.state_file", why)
    finally:
        locked.chmod(0o700)
    assert not (tmp_path / "journal.sqlite").exists()  # refused before anything was written


def test_run_refuses_an_unwritable_journal_and_an_uncreatable_runtime_dir(tmp_path: Path) -> None:
    """A read-only (0400) journal, written in place, is refused; a read-only state file is not: it is replaced by a
    rename, for which only its directory must be writable. A runtime_dir to be made in a 0500 directory is refused."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    state, journal = tmp_path / "seedlink.state", tmp_path / "seedlink.journal.sqlite"
    for path in (state, journal):
        path.write_text("")
        path.chmod(0o400)
    config = write_config(tmp_path / "q.toml", state_file=state, runtime_dir=locked / "rt")
    try:
        proc = quakemon("run", "--config", str(config), modes_bind_root=True)
        assert_refused(proc, f"publish.journal: cannot write {str(journal)!r}: the file is not writable (Permission "
                       "denied)", f"pipeline.runtime_dir: cannot write {str(locked / 'rt')!r}: directory "
                       f"{str(locked / 'rt')!r} cannot be created (Permission denied)")
        assert "seedlink.state_file" not in proc.stderr
        check = quakemon("check-config", str(config), modes_bind_root=True)  # creates nothing, says so
        assert_refused(check, f"directory {str(locked)!r} (to create {str(locked / 'rt')!r} in) is not writable")
    finally:
        locked.chmod(0o700)


def test_check_config_prints_the_resolved_paths_and_creates_nothing(tmp_path: Path) -> None:
    state = tmp_path / "new" / "seedlink.state"
    config = write_config(tmp_path / "q.toml", state_file=state, runtime_dir=tmp_path / "rt")
    proc = quakemon("check-config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert f"#   seedlink.state_file = {state}\n" in proc.stdout
    assert f"#   publish.journal = {tmp_path / 'new' / 'seedlink.journal.sqlite'}\n" in proc.stdout
    assert f"#   pipeline.runtime_dir = {tmp_path / 'rt'}\n" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.toml"]
