"""quakemon.base.files.atomic_write: the old file or the new one, never a half-written one."""

from __future__ import annotations

import pytest

from quakemon.base.files import atomic_write, remove_partial_writes


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    assert atomic_write(path, lambda fh: fh.write(b"new")) == path
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")

    def half(fh):
        fh.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_remove_partial_writes_removes_only_unfinished_temporaries(tmp_path):
    atomic_write(tmp_path / "kept.xml", lambda fh: fh.write(b"whole"))
    stale = tmp_path / ".event.xml.abc123.tmp"  # what a SIGKILL between mkstemp and rename leaves
    stale.write_bytes(b"half")
    (tmp_path / ".hidden").write_text("not ours")
    assert remove_partial_writes(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "kept.xml"]
