"""The systemd unit: required directives, `systemd-analyze verify` silent, exposure <= 2.0, W^X-safe inference.

systemd-analyze works without systemd as PID 1 (CI containers). Where it is missing, the tests that need it
skip with the command that installs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "quakemon.service"
GPU_DROPIN = ROOT / "systemd" / "quakemon-gpu.conf"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed; install with: apt-get update && apt-get install -y systemd"
)


def directives(text: str) -> dict[str, list[str]]:
    """Key -> values in order (keys repeat in unit files), ignoring comments and section headers."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_the_operational_directives() -> None:
    d = directives(UNIT.read_text())
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "Restart": "on-failure",
        "TimeoutStopSec": "30", "DynamicUser": "yes", "StateDirectory": "quakemon", "RuntimeDirectory": "quakemon",
        "ConfigurationDirectory": "quakemon", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "", "UMask": "0077",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "SystemCallArchitectures": "native",
        "ProtectProc": "invisible", "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes",
    }
    for key, value in expected.items():
        assert d.get(key, [None])[-1] == value, (key, d.get(key))
    assert d["ExecStart"] == ["/usr/local/bin/quakemon run --config /etc/quakemon/quakemon.toml"]
    assert "@system-service" in d["SystemCallFilter"]
    for key in ("RestartSec", "StartLimitIntervalSec", "StartLimitBurst", "TimeoutStartSec"):
        assert key in d, key


def runnable_copy(tmp_path: Path, *extra: Path) -> Path:
    """The unit (plus drop-ins, appended as systemd would merge them) with ExecStart on an existing binary:
    verify checks that the command is executable, and quakemon is not installed at /usr/local/bin here."""
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/quakemon", f"ExecStart={sys.executable} -m quakemon")
    for path in extra:
        text += "\n" + path.read_text()
    copy = tmp_path / "quakemon.service"
    copy.write_text(text)
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
@pytest.mark.parametrize("dropins", [(), (GPU_DROPIN,)], ids=["cpu", "gpu"])
def test_verify_prints_nothing(tmp_path: Path, dropins: tuple[Path, ...]) -> None:
    result = analyze("verify", str(runnable_copy(tmp_path, *dropins)))
    assert result.stdout + result.stderr == "", result.stdout + result.stderr  # exit code is 0 even on typos


@needs_analyze
def test_verify_reports_a_typo(tmp_path: Path) -> None:
    """Control: the check above can fail (verify exits 0 here, but prints the problem)."""
    unit = runnable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfy"))
    result = analyze("verify", str(unit))
    assert "notfy" in result.stdout + result.stderr


@needs_analyze
@pytest.mark.parametrize("dropins", [(), (GPU_DROPIN,)], ids=["cpu", "gpu"])
def test_security_exposure_at_most_2(tmp_path: Path, dropins: tuple[Path, ...]) -> None:
    unit = runnable_copy(tmp_path, *dropins)
    result = analyze("security", "--offline=true", "--threshold=20", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for quakemon\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_without_hardening_scores_worse(tmp_path: Path) -> None:
    """Control for the exposure test: a bare unit scores far above 2.0, so the parse and threshold are live."""
    if ANALYZE is None:
        pytest.skip("systemd-analyze not installed; install with: apt-get update && apt-get install -y systemd")
    bare = tmp_path / "quakemon.service"
    bare.write_text(f"[Service]\nType=notify\nExecStart={sys.executable}\n")
    result = analyze("security", "--offline=true", "--no-pager", str(bare))
    match = re.search(r"Overall exposure level for quakemon\.service: (\d+\.\d+)", result.stdout)
    assert match and float(match.group(1)) > 5.0, result.stdout


# prctl(PR_SET_MDWE=65, PR_MDWE_REFUSE_EXEC_GAIN=1): the kernel's own W^X switch, as MemoryDenyWriteExecute.
WX_CHILD = textwrap.dedent(
    """
    import ctypes, sys
    if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
        sys.exit(3)
    from quakemon.wire.security import adapt_to_write_xor_execute, write_xor_execute_enforced
    assert write_xor_execute_enforced()
    assert adapt_to_write_xor_execute()
    import timm, torch
    stem = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7, 2, 3), torch.nn.BatchNorm2d(64), torch.nn.ReLU())
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=(17, 32),
                            patch_size=1, in_chans=64, depth=2).eval()
    with torch.inference_mode():
        x = torch.randn(4, 3, 33, 64)
        p = vit(stem.eval()(x)).softmax(-1)
    assert torch.isfinite(p).all()
    print("forward ok")
    """
)


def test_cpu_inference_under_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes: with W^X enforced (the kernel's PR_SET_MDWE, the same rule), a conv stem +
    ViT forward works once adapt_to_write_xor_execute() has turned torch's JIT-compiling oneDNN backend off."""
    probe = subprocess.run([sys.executable, "-c", "import ctypes, sys; "
                            "sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"], timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3): cannot enforce W^X in a test process")
    result = subprocess.run([sys.executable, "-c", WX_CHILD], capture_output=True, text=True,
                            timeout=240, check=False, cwd=ROOT)
    assert result.returncode == 0 and "forward ok" in result.stdout, result.stdout + result.stderr
