"""`quakemon` CLI (quakemon.cli): names, exit codes (0 ok, 2 usage/config, 1 runtime), messages, wiring.

Cheap checks run the real command in a subprocess (`python -m quakemon ...`); checks that would start heavy
work (the daemon, a replay, the demo, parameter counting) call `main([...])` in-process with the stage function
replaced by a recorder, whose call is bound against the real function's signature.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
import types
from pathlib import Path

import pytest

import quakemon
from quakemon.cli import app as cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "config" / "quakemon.toml"
SUBCOMMANDS = ("run", "replay", "serve", "listen", "check-config", "keygen", "export", "bridge", "train", "evaluate",
               "demo", "bench", "params", "associate")
MINIMAL = """\
[seedlink]
server = "127.0.0.1:18000"
streams = {streams}
state_file = ""

[model]
checkpoint = {checkpoint}

[publish]
endpoint = "tcp://127.0.0.1:5557"
"""


def quakemon_cmd(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m quakemon ARGS` and return the completed process (text output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "quakemon", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=env, stdin=subprocess.DEVNULL)


def write_config(path: Path, streams: str = '["BW.RJOB..EH?"]', checkpoint: str = '""') -> Path:
    path.write_text(MINIMAL.format(streams=streams, checkpoint=checkpoint))
    return path


def record_calls(monkeypatch, module: str, name: str, result=0) -> list[dict]:
    """Replace module.name by a recorder that checks each call against the real signature; return its calls."""
    mod = importlib.import_module(module)
    real = getattr(mod, name)
    calls: list[dict] = []

    def fake(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)  # TypeError if the CLI calls it wrongly
        calls.append(dict(bound.arguments))
        return result

    monkeypatch.setattr(mod, name, fake)
    return calls


# -- help, version, usage errors -----------------------------------------------------------------------------


def test_top_level_help_lists_every_subcommand():
    proc = quakemon_cmd("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_help_exits_0(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: quakemon " + name)


def test_listen_help_is_listens_own():
    """The pass-through hands --help to quakemon.tools.listen, so its real flags are listed."""
    proc = quakemon_cmd("listen", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--timeout" in proc.stdout and "--topic" in proc.stdout


def test_version_prints_package_version():
    proc = quakemon_cmd("--version")
    assert proc.returncode == 0
    assert quakemon.__version__ in proc.stdout


@pytest.mark.parametrize("argv", [
    [],                                              # no subcommand
    ["frobnicate"],                                  # unknown subcommand
    ["run"],                                         # --config is required
    ["serve", "x.mseed", "--port", "70000"],         # port out of range
    ["serve", "x.mseed", "--first-seq", "XYZ"],      # not hex
    ["--log-level", "loud", "params"],               # bad global option
    ["--log-level", "loud", "listen", "tcp://127.0.0.1:1"],  # validated before a pass-through too
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


# -- check-config ----------------------------------------------------------------------------------------------


def test_check_config_prints_resolved_toml(tmp_path):
    proc = quakemon_cmd("check-config", str(EXAMPLE_CONFIG))
    assert proc.returncode == 0, proc.stderr
    resolved = tomllib.loads(proc.stdout)
    example = tomllib.loads(EXAMPLE_CONFIG.read_text())
    assert resolved["seedlink"]["streams"] == example["seedlink"]["streams"]
    assert resolved["pipeline"]["windows_endpoint"] != "auto"  # resolved, not echoed
    again = tmp_path / "resolved.toml"
    again.write_text(proc.stdout)
    assert quakemon_cmd("check-config", str(again)).returncode == 0  # the output is itself a valid config


def test_check_config_typo_names_key_and_suggests(tmp_path):
    bad = tmp_path / "typo.toml"
    bad.write_text('[seedlink]\nserver = "127.0.0.1:18000"\nstrems = ["BW.RJOB..EH?"]\n')
    proc = quakemon_cmd("check-config", str(bad))
    assert proc.returncode == 2
    assert "seedlink.strems" in proc.stderr and "seedlink.streams" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_missing_file_exits_2(tmp_path):
    proc = quakemon_cmd("check-config", str(tmp_path / "absent.toml"))
    assert proc.returncode == 2
    assert "absent.toml" in proc.stderr and "Traceback" not in proc.stderr


# -- run ---------------------------------------------------------------------------------------------------------


def test_run_typo_in_config_exits_2(tmp_path):
    bad = tmp_path / "typo.toml"
    bad.write_text('[seedlink]\nstrems = ["BW.RJOB..EH?"]\n')
    proc = quakemon_cmd("run", "--config", str(bad))
    assert proc.returncode == 2
    assert "seedlink.strems" in proc.stderr and "did you mean seedlink.streams" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_without_streams_exits_2_naming_the_key(tmp_path):
    cfg = write_config(tmp_path / "empty.toml", streams="[]")
    proc = quakemon_cmd("run", "--config", str(cfg))
    assert proc.returncode == 2
    assert "seedlink.streams" in proc.stderr
    assert "Traceback" not in proc.stderr and "daemon_starting" not in proc.stderr


@pytest.mark.parametrize("via_flag", [False, True])
def test_run_missing_checkpoint_fails_before_any_stage(tmp_path, via_flag):
    missing = tmp_path / "nowhere" / "model.safetensors"
    if via_flag:
        cfg = write_config(tmp_path / "q.toml")
        proc = quakemon_cmd("run", "--config", str(cfg), "--model", str(missing))
    else:
        cfg = write_config(tmp_path / "q.toml", checkpoint=f'"{missing}"')
        proc = quakemon_cmd("run", "--config", str(cfg))
    assert proc.returncode == 2
    assert ("--model" if via_flag else "model.checkpoint") in proc.stderr
    assert str(missing) in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "daemon_starting" not in proc.stderr and "stage_spawned" not in proc.stderr


def test_run_unknown_stage_exits_2(tmp_path, capsys):
    cfg = write_config(tmp_path / "q.toml")
    assert cli.main(["run", "--config", str(cfg), "--stages", "ingest,gpu"]) == 2
    assert "--stages" in capsys.readouterr().err


def test_run_calls_daemon_with_config_overrides_and_stages(tmp_path, monkeypatch):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"not checked here: run_daemon is replaced")
    cfg_path = write_config(tmp_path / "q.toml")
    calls = record_calls(monkeypatch, "quakemon.service.daemon", "run_daemon", result=0)
    assert cli.main(["run", "--config", str(cfg_path), "--model", str(ckpt), "--set", "window.stride_s=0.5",
                     "--stages", "preprocess,inference"]) == 0
    (call,) = calls
    assert call["cfg"].model.checkpoint == str(ckpt)
    assert call["cfg"].window.stride_s == 0.5
    assert call["config_path"] == str(cfg_path)
    assert call["overrides"] == {"model.checkpoint": str(ckpt), "window.stride_s": "0.5"}
    assert call["stages"] == ["preprocess", "inference"]


def test_run_inference_only_host_needs_no_streams(tmp_path, monkeypatch):
    """require_streams applies only where the ingest stage runs (multi-host deployments)."""
    cfg_path = write_config(tmp_path / "q.toml", streams="[]")
    calls = record_calls(monkeypatch, "quakemon.service.daemon", "run_daemon", result=0)
    assert cli.main(["run", "--config", str(cfg_path), "--stages", "inference"]) == 0
    assert calls[0]["stages"] == ["inference"]


def test_runtime_error_exits_1_without_traceback(tmp_path, monkeypatch, capsys):
    from quakemon.base.errors import CheckpointError

    def broken(*args, **kwargs):
        raise CheckpointError("m.safetensors: sha256 is abc, expected def")

    monkeypatch.setattr("quakemon.service.daemon.run_daemon", broken)
    assert cli.main(["run", "--config", str(write_config(tmp_path / "q.toml"))]) == 1
    assert capsys.readouterr().err.strip() == "quakemon: error: m.safetensors: sha256 is abc, expected def"


# -- replay, demo, bench, params, train/evaluate wiring ----------------------------------------------------------


def test_replay_missing_path_or_checkpoint_exits_2(tmp_path, capsys):
    assert cli.main(["replay", str(tmp_path / "absent.mseed"), "--quiet"]) == 2
    assert "absent.mseed" in capsys.readouterr().err
    archive = tmp_path / "a.mseed"
    archive.write_bytes(b"")
    assert cli.main(["replay", str(archive), "--model", str(tmp_path / "none.safetensors")]) == 2
    assert "--model" in capsys.readouterr().err


def test_replay_wiring(tmp_path, monkeypatch, capsys):
    from quakemon.pipeline.runner import ReplayResult

    archive = tmp_path / "a.mseed"
    archive.write_bytes(b"")
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"")
    sentinel = object()
    loads = record_calls(monkeypatch, "quakemon.models.checkpoint", "load_checkpoint", result=sentinel)
    detection = {"state": "new", "station": "BW.RJOB."}
    replays = record_calls(monkeypatch, "quakemon.pipeline.runner", "replay",
                           result=ReplayResult([detection], {}, 7, {}, ["noise", "earthquake"]))
    out = tmp_path / "d.jsonl"
    assert cli.main(["replay", str(archive), "--model", str(ckpt), "--select", "BW.RJOB..EH?", "-o", str(out),
                     "--quiet"]) == 0
    assert Path(loads[0]["path"]) == ckpt
    (call,) = replays
    assert call["paths"] == [str(archive)] and call["checkpoint"] is sentinel
    assert call["selectors"] == ["BW.RJOB..EH?"] and call["progress"] is False
    assert "7 windows, 1 detections" in capsys.readouterr().err
    assert out.exists()


def test_replay_triggers_with_every_trigger_key_of_its_config(tmp_path, monkeypatch):
    """A replay with --config triggers as the daemon with that config would: hold, split, overrides, calibration."""
    from quakemon.pipeline.runner import ReplayResult
    from quakemon.pipeline.settings import CalibrationSettings

    archive = tmp_path / "a.mseed"
    archive.write_bytes(b"")
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"")
    config = tmp_path / "site.toml"
    config.write_text('[trigger]\non = 0.8\nretrigger_hold = 5.0\nsplit_on_new_p = true\ncalibration = "rate"\n'
                      'calibration_history = 7200\n[trigger.overrides]\n"BW.RJOB" = { on = 0.9 }\n')
    record_calls(monkeypatch, "quakemon.models.checkpoint", "load_checkpoint", result=object())
    replays = record_calls(monkeypatch, "quakemon.pipeline.runner", "replay",
                           result=ReplayResult([], {}, 0, {}, ["noise", "earthquake"]))
    assert cli.main(["replay", str(archive), "--model", str(ckpt), "--config", str(config), "--quiet"]) == 0
    trigger = replays[0]["trigger"]
    assert (trigger["on"], trigger["off"], trigger["retrigger_hold_s"], trigger["split_on_new_p"]) == (0.8, 0.5, 5.0,
                                                                                                       True)
    assert trigger["overrides"] == {"BW.RJOB": {"on": 0.9}} and trigger["trigger_label"] == "earthquake"
    assert trigger["calibration"] == CalibrationSettings(mode="rate", rate_per_day=1.0, history_s=7200.0)


def test_demo_wiring(monkeypatch):
    calls = record_calls(monkeypatch, "quakemon.tools.demo", "run_demo", result=0)
    assert cli.main(["demo", "--duration", "5", "--speed", "4", "--plot", ""]) == 0
    assert calls == [{"duration_s": 5.0, "plot": None, "speed": 4.0}]


def test_bench_wiring(monkeypatch):
    calls = record_calls(monkeypatch, "quakemon.tools.bench", "bench_main", result=0)
    assert cli.main(["bench", "--quick", "--device", "cpu", "--precision", "fp32"]) == 0
    args = calls[0]["args"]
    assert args.quick and args.device == "cpu" and args.precision == "fp32" and args.stride_s is None


@pytest.mark.parametrize("name", ["train_main", "evaluate_main"])
def test_train_and_evaluate_wiring(name, monkeypatch):
    calls = record_calls(monkeypatch, "quakemon.cli.train", name, result=0)
    argv = (["train", "--data", "synthetic:8", "-o", "x.safetensors", "--epochs", "1"] if name == "train_main"
            else ["evaluate", "--data", "synthetic:8", "--json"])
    assert cli.main(argv) == 0
    assert calls[0]["args"].data == ["synthetic:8"]


def test_params_prints_the_table(monkeypatch, capsys):
    """The table itself (real markdown_table); counting every backbone is slow and tested with the models."""
    from quakemon.models.backbones import Backbone

    counts = {b.name: {4: 1_234_567, 12: 7_654_321} for b in Backbone}
    monkeypatch.setattr("quakemon.models.params.parameter_counts", lambda *a, **k: counts)
    assert cli.main(["params"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| Backbone | timm model | Params (depth=4) | Params (depth=12) |")
    for b in Backbone:
        assert f"| {b.name} | {b.timm_name} | 1,234,567 | 7,654,321 |" in out


# -- keygen ------------------------------------------------------------------------------------------------------


def test_keygen_writes_0600_secret(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert cli.main(["keygen", str(keys), "--name", "pub"]) == 0
    secret, public = keys / "pub.key_secret", keys / "pub.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert public.is_file() and "secret-key" not in public.read_text()
    assert "secret-key" in secret.read_text()
    assert str(secret) in capsys.readouterr().out


def test_keygen_into_unusable_directory_exits_1(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["keygen", str(blocker / "keys")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("quakemon: error:") and str(blocker) in err and "Traceback" not in err


# -- serve and listen (real subprocesses on 127.0.0.1) -----------------------------------------------------------


def test_serve_wiring_matches_real_signature(monkeypatch):
    calls = record_calls(monkeypatch, "quakemon.tools.serve", "serve", result=0)
    assert cli.main(["serve", "a.mseed", "b", "--port", "0", "--port-file", "p", "--first-seq", "1A",
                     "--retime-now", "--loop", "--speed", "0"]) == 0
    call = calls[0]
    assert call["paths"] == ["a.mseed", "b"] and call["port"] == 0 and call["port_file"] == "p"
    assert call["first_seq"] == 0x1A and call["retime"] is True and call["loop"] is True and call["speed"] == 0


def test_serve_subprocess_answers_hello_and_stops_on_sigterm(tmp_path):
    import obspy

    archive = tmp_path / "rjob.mseed"
    st = obspy.read()
    for tr in st:
        tr.data = tr.data.round().astype("int32")
    st.write(str(archive), format="MSEED", reclen=512)
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "quakemon", "serve", str(archive), "--port", "0",
                             "--port-file", str(port_file), "--speed", "0", "--first-seq", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 45
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate(timeout=5)[1].decode()
            assert time.monotonic() < deadline, "serve never wrote its port file"
            time.sleep(0.1)
        port = int(port_file.read_text())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"HELLO\r\n")
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = conn.recv(4096)
                assert chunk, f"connection closed after {reply!r}"
                reply += chunk
            assert reply.startswith(b"SeedLink v")
            conn.sendall(b"DATA\r\n")
            packet = b""
            while len(packet) < 8:
                chunk = conn.recv(520 - len(packet))
                assert chunk, f"connection closed after {packet!r}"
                packet += chunk
            assert packet[:8] == b"SL000010"  # --first-seq 10 (hex) numbers the first record
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_serve_missing_archive_exits_nonzero_without_traceback(tmp_path):
    proc = quakemon_cmd("serve", str(tmp_path / "absent.mseed"), "--port", "0")
    assert proc.returncode == 1
    assert "absent.mseed" in proc.stderr and "Traceback" not in proc.stderr


def test_listen_with_timeout_and_no_publisher_returns_0(free_port):
    proc = quakemon_cmd("listen", f"tcp://127.0.0.1:{free_port()}", "--timeout", "1", "--json", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


# -- pass-throughs (listen, associate) ---------------------------------------------------------------------------


def test_passthrough_hands_argv_unchanged(monkeypatch):
    seen: list[list[str]] = []
    fake = types.ModuleType("fake_listen")
    fake.main = lambda argv: seen.append(list(argv)) or 3
    monkeypatch.setitem(sys.modules, "fake_listen", fake)
    monkeypatch.setitem(cli.PASSTHROUGH, "listen", "fake_listen")
    assert cli.main(["--log-level", "debug", "listen", "--json", "tcp://127.0.0.1:1", "--topic", "detection"]) == 3
    assert seen == [["--json", "tcp://127.0.0.1:1", "--topic", "detection"]]


def test_passthrough_module_absent_is_a_clear_runtime_error(monkeypatch, capsys):
    monkeypatch.setitem(cli.PASSTHROUGH, "associate", "quakemon.no_such_module_for_this_test")
    assert cli.main(["associate", "--help"]) == 1
    err = capsys.readouterr().err
    assert "quakemon associate" in err and "quakemon.no_such_module_for_this_test" in err


def test_associate_calls_associate_main(monkeypatch):
    calls = record_calls(monkeypatch, "quakemon.service.associate_main", "main", result=0)
    assert cli.main(["associate", "--some-flag", "x"]) == 0
    assert [list(v) for v in calls[0].values()] == [["--some-flag", "x"]]
