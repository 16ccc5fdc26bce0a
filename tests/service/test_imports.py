"""The supervisor, the config loader, `quakemon check-config` and the ingest and preprocessing stages never import
torch (only the inference stage, and preprocessing on a GPU, need it): a process without torch is much smaller.

Each check runs in a fresh interpreter, so that nothing imported by the test process hides an import (the lean
modules share one, each checked right after its own import). The last
test runs a real daemon on loopback and reads which of its processes have libtorch mapped, the inference stage
being the control that the check sees torch where it is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.pipeline import ROOT, Subscriber, children, free_port, start_daemon, start_server, wait_for, write_archive
from support.pipeline import write_config as write_daemon_config

LEAN_MODULES = [
    "quakemon.service.daemon",
    "quakemon.service.stage_main",
    "quakemon.service.config",
    "quakemon.service.stages",
    "quakemon.service.stages.ingest",
    "quakemon.service.stages.preprocess",
    "quakemon.pipeline.transforms",
    "quakemon.pipeline.detect",
    "quakemon.cli.app",
]


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


@pytest.fixture(scope="module")
def torch_after_import() -> dict[str, bool]:
    """{module: whether importing it brought torch in}, for LEAN_MODULES. One fresh interpreter imports them in
    turn and reports after each; while torch is absent, a module that brings it in is the one just imported (the
    earlier ones are cached and imported nothing more). Should one bring torch in, each module after it is checked
    in a fresh interpreter of its own."""
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "    print(name, 'torch' in sys.modules)\n"
            "    if 'torch' in sys.modules:\n"
            "        break\n")
    out = subprocess.run([sys.executable, "-c", code, *LEAN_MODULES], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    found = {name: flag == "True" for name, flag in (line.split() for line in out.stdout.splitlines())}
    for name in LEAN_MODULES[len(found):]:
        found[name] = run_python(f"import sys, {name}\nprint('torch' in sys.modules)") == "True"
    return found


@pytest.mark.parametrize("module", LEAN_MODULES)
def test_module_imports_without_torch(module, torch_after_import):
    assert torch_after_import[module] is False


def test_the_check_passes_for_a_module_that_imports_torch():
    """The control: the same check sees torch where it is imported (the inference engine)."""
    assert run_python("import sys, quakemon.pipeline.engine\nprint('torch' in sys.modules)") == "True"


def write_config(tmp_path: Path, checkpoint: Path) -> Path:
    return write_daemon_config(tmp_path / "quakemon.toml", server_port=free_port(), checkpoint=checkpoint,
                               runtime_dir=tmp_path / "rt", publish_port=free_port(), on=0.5, off=0.5,
                               extra={"model": {"device": "auto"}})  # fmt: skip


def test_config_loader_and_check_config_do_not_import_torch(tmp_path, tiny_checkpoint):
    config = write_config(tmp_path, tiny_checkpoint)
    code = (
        "import sys\n"
        "from quakemon.service.config import load_config\n"
        f"load_config({str(config)!r})\n"
        "from quakemon.cli import main\n"
        f"code = main(['check-config', {str(config)!r}])\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    assert run_python(code).splitlines()[-1] == "0 False"


def test_ingest_and_preprocess_stages_build_start_and_transform_without_torch(tmp_path, tiny_checkpoint):
    """The stage objects as the supervisor's child builds them (device "auto" on a host without a GPU driver),
    started, and a batch with a NaN gap transformed: still no torch."""
    config = write_config(tmp_path, tiny_checkpoint)
    code = (
        "import sys, numpy as np\n"
        "from quakemon.base.signals import StopFlag\n"
        "from quakemon.pipeline.detect import WindowMeta\n"
        "from quakemon.service.config import load_config\n"
        "from quakemon.service.stage_main import build_stage\n"
        "from quakemon.service.stages.messages import Batch, WINDOWS\n"
        f"cfg = load_config({str(config)!r})\n"
        "ingest = build_stage('ingest', cfg, None, StopFlag())\n"
        "pre = build_stage('preprocess', cfg, None, StopFlag())\n"
        "assert pre.start()\n"
        "data = np.random.default_rng(0).standard_normal((3, 3, 2000)).astype(np.float32)\n"
        "data[1, 0, 10:50] = np.nan\n"
        "pre.transform([Batch(WINDOWS, tuple(WindowMeta(f'XX.S{i}.', 0, 0) for i in range(3)), {'data': data})])\n"
        "assert pre.windows == 3 and pre.device is None\n"
        "pre.stop()\n"
        "print('torch' in sys.modules)\n"
    )
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this host has a GPU driver: device 'auto' may rightly load torch for the preprocessing stage")
    assert run_python(code).splitlines()[-1] == "False"


def mapped_torch(pid: int) -> bool:
    """Whether the process has torch's shared library mapped (/proc/PID/maps)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def stage_of(pid: int) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return args[args.index(b"quakemon.service.stage_main") + 1].decode() if b"quakemon.service.stage_main" in args \
        else ""


@pytest.mark.slow
def test_running_daemon_maps_torch_only_in_the_inference_stage(tmp_path, tiny_checkpoint):
    """A real `quakemon run` with SeedLink data flowing: supervisor, ingest and preprocess without libtorch."""
    archive, _, _ = write_archive(tmp_path / "rjob.mseed")
    server, port = start_server(archive, tmp_path, speed=10.0)
    publish = free_port()
    config = write_daemon_config(tmp_path / "run.toml", server_port=port, checkpoint=tiny_checkpoint,
                                 runtime_dir=tmp_path / "rt", publish_port=publish, on=0.5, off=0.5)
    sub = Subscriber(f"tcp://127.0.0.1:{publish}", "heartbeat")
    daemon = start_daemon(config, tmp_path, "daemon")
    try:
        daemon.wait_event("daemon_ready", 120)
        wait_for(lambda: any(int(b.get("windows_out") or 0) > 0 for b in sub.bodies()), 120, "inferred windows")
        stages = {stage_of(pid): pid for pid in children(daemon.pid)}
        assert {"ingest", "preprocess", "inference"} <= set(stages), stages
        mapped = {name: mapped_torch(pid) for name, pid in stages.items() if name}
        mapped["supervisor"] = mapped_torch(daemon.pid)
        assert mapped == {"supervisor": False, "ingest": False, "preprocess": False, "inference": True}
    finally:
        daemon.stop()
        sub.close()
        server.stop()


def test_preprocess_device_asks_torch_only_where_a_gpu_may_be_used(monkeypatch, tmp_path, tiny_checkpoint):
    """"cpu", and "auto" without a GPU driver: the CPU, without torch's device query; "auto" with a driver (a
    stand-in file here, as no GPU exists on the test host): torch decides (here: no CUDA, so the CPU)."""
    from quakemon.pipeline import engine
    from quakemon.service.config import load_config
    from quakemon.service.stages import preprocess

    asked = []
    original = engine.pick_device

    def spy(wanted):
        asked.append(wanted)
        return original(wanted)

    monkeypatch.setattr(engine, "pick_device", spy)
    monkeypatch.delenv("QUAKEMON_FORCE_DEVICE", raising=False)
    cfg = load_config(str(write_config(tmp_path, tiny_checkpoint)))  # model.device "auto"
    monkeypatch.setattr(preprocess, "GPU_DRIVER_PATHS", (str(tmp_path / "no-driver"),))
    assert preprocess.preprocess_device(cfg) is None and asked == []
    driver = tmp_path / "driver"
    driver.write_text("NVRM version: stand-in\n")
    monkeypatch.setattr(preprocess, "GPU_DRIVER_PATHS", (str(driver),))
    assert preprocess.preprocess_device(cfg) is None and asked == ["auto"]
    monkeypatch.setenv("QUAKEMON_FORCE_DEVICE", "cpu")
    assert preprocess.preprocess_device(cfg) is None and asked == ["auto"]  # "cpu": torch not asked
