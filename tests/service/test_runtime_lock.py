"""One daemon per runtime_dir: a second one refuses to start, naming the holder; a dead holder blocks nothing."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from support.pipeline import ROOT, write_config

from quakemon.base.errors import ConfigError
from quakemon.base.net import free_port
from quakemon.service.runtime_lock import RuntimeLock

HOLD = "import sys, time; from quakemon.service.runtime_lock import RuntimeLock; " \
       "lock = RuntimeLock(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def hold(runtime_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(runtime_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, stdin=subprocess.DEVNULL)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_with_the_first_ones_pid_until_it_dies(tmp_path):
    holder = hold(tmp_path)
    try:
        with pytest.raises(ConfigError, match=rf"runtime_dir .*pid {holder.pid}"):
            RuntimeLock(str(tmp_path))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    lock = RuntimeLock(str(tmp_path))  # the kernel dropped the dead holder's lock; the stale file is no obstacle
    lock.release()
    RuntimeLock(str(tmp_path)).release()  # released: free again


def test_quakemon_run_refuses_a_runtime_dir_in_use(tmp_path, tiny_checkpoint):
    runtime = tmp_path / "rt"
    runtime.mkdir()
    config = write_config(tmp_path / "q.toml", server_port=free_port(), checkpoint=tiny_checkpoint,
                          runtime_dir=runtime, publish_port=free_port(), on=0.7, off=0.5)
    holder = hold(runtime)
    try:
        proc = subprocess.run([sys.executable, "-m", "quakemon", "run", "--config", str(config)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "runtime_dir" in proc.stderr and str(holder.pid) in proc.stderr
