"""Config loading: the minimal file loads, defaults fill the rest, every user mistake names file + key."""

from __future__ import annotations

import dataclasses
import textwrap
import tomllib
from pathlib import Path

import pytest

from quakemon.base.errors import ConfigError
from quakemon.cli.app import main as cli_main
from quakemon.service.config import (
    STAGES,
    Config,
    check_stages,
    load_config,
)
from quakemon.service.config_format import format_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "quakemon.toml"

MINIMAL = """\
[seedlink]
server = "127.0.0.1:18000"
streams = ["BW.RJOB..EH?", "GR.FUR..HH?"]   # NET.STA.LOC.CHA, ? and * wildcards in LOC and CHA
state_file = "auto"

[publish]
endpoint = "tcp://127.0.0.1:5557"
"""


@pytest.fixture(autouse=True)
def _runtime_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "q.toml"
    path.write_text(text)
    return path


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.seedlink.streams == ("BW.RJOB..EH?", "GR.FUR..HH?")
    assert cfg.seedlink.netto == 30.0 and cfg.seedlink.resume_policy == "earliest"
    assert cfg.model.checkpoint == "" and cfg.model.batch_size == 64 and cfg.model.device == "auto"
    assert cfg.trigger.on == 0.7 and cfg.trigger.off == 0.5 and cfg.trigger.label == "earthquake"
    assert cfg.publish.endpoint == "tcp://127.0.0.1:5557"
    run = tmp_path / "run"
    assert cfg.pipeline.runtime_dir == str(run)
    assert cfg.pipeline.windows_endpoint == f"ipc://{run}/windows"
    assert cfg.pipeline.spectra_endpoint == f"ipc://{run}/spectra"


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.batch_size = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = cfg.model  # type: ignore[misc]


def test_example_file_lists_every_key_with_its_default() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    cfg_fields = {name: {f.name for f in dataclasses.fields(type(sec))} for name, sec in
                  ((f.name, getattr(Config(), f.name)) for f in dataclasses.fields(Config))}
    assert {name: set(table) for name, table in data.items()} == cfg_fields
    example = load_config(EXAMPLE).to_dict()
    defaults = load_config(None).to_dict()
    example["seedlink"].pop("streams")
    defaults["seedlink"].pop("streams")
    assert example == defaults


def test_format_config_is_loadable_toml_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), {"model.batch_size": 8, "trigger.label": 'quote"d'})
    text = format_config(cfg)
    assert "batch_size = 8" in text
    again = load_config(write(tmp_path, text))
    assert again == cfg


def test_to_dict_is_plain_data(tmp_path: Path) -> None:
    d = load_config(write(tmp_path, MINIMAL)).to_dict()
    assert d["seedlink"]["streams"] == ["BW.RJOB..EH?", "GR.FUR..HH?"]
    assert d["model"]["batch_size"] == 64


def test_int_accepted_for_float_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "[window]\nstride_s = 2\n"))
    assert cfg.window.stride_s == 2.0 and isinstance(cfg.window.stride_s, float)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[seedlink]\nstrems = []\n", ["seedlink.strems", "did you mean seedlink.streams"]),
        ("[seedlnk]\nserver = 'a:1'\n", ["[seedlnk]", "did you mean [seedlink]"]),
        ("[model]\nbatch_size = 0\n", ["model.batch_size", "1", "4096", "got 0"]),
        ("[model]\nbatch_size = 5000\n", ["model.batch_size", "got 5000"]),
        ("[model]\nbatch_size = 'big'\n", ["model.batch_size", "an integer", "got 'big'"]),
        ("[model]\nbatch_size = true\n", ["model.batch_size", "an integer", "got True"]),
        ("[model]\nbatch_size = 1.5\n", ["model.batch_size", "an integer", "got 1.5"]),
        ("[model]\ndevice = 'gpu'\n", ["model.device", "cuda:N", "got 'gpu'"]),
        ("[model]\nprecision = 'int8'\n", ["model.precision", '"bf16"', "got 'int8'"]),
        ("[model]\non_fatal_gpu_error = 'retry'\n", ["model.on_fatal_gpu_error", '"exit"', "got 'retry'"]),
        ("[seedlink]\nserver = 'seedlink://host:18000'\n", ["seedlink.server", "host:port", "seedlink://"]),
        ("[seedlink]\nserver = 'host:99999'\n", ["seedlink.server", "got 'host:99999'"]),
        ("[seedlink]\nstreams = 'BW.RJOB..EH?'\n", ["seedlink.streams", "array of strings"]),
        ("[seedlink]\nstreams = ['BW.*..EH?']\n", ["seedlink.streams", "station explicit", "'BW.*..EH?'"]),
        ("[seedlink]\nstreams = ['BW.RJOB.EH?']\n", ["seedlink.streams", "'BW.RJOB.EH?'"]),
        ("[seedlink]\nstreams = ['BW.RJOB..EH?', 'BW.RJOB..EH?']\n", ["seedlink.streams", "more than once"]),
        ("[seedlink]\nstreams = ['BW.RJOB..EH?', 'bw.rjob..eh?']\n", ["seedlink.streams", "more than once"]),
        ("[seedlink]\nstreams = ['BW.RJOB..EHZZ']\n", ["seedlink.streams", "channel 1-3", "'BW.RJOB..EHZZ'"]),
        ("[seedlink]\nresume_policy = 'latest'\n", ["seedlink.resume_policy", '"earliest"', "got 'latest'"]),
        ("[seedlink]\nnetto = 0\n", ["seedlink.netto", "> 0", "got 0"]),
        ("[seedlink]\nnetto = nan\n", ["seedlink.netto", "got nan"]),
        ("[seedlink.timeouts]\nnetto = 3\n", ["seedlink.timeouts"]),
        ("[window]\nstride_s = -1.0\n", ["window.stride_s", "> 0", "got -1.0"]),
        ("[window]\nmax_missing_fraction = 1.5\n", ["window.max_missing_fraction", "<= 1", "got 1.5"]),
        ("[trigger]\non = 0.4\noff = 0.6\n", ["trigger.off", "off <= trigger.on", "got 0.6"]),
        ("[trigger]\non = 1.2\n", ["trigger.on", "<= 1", "got 1.2"]),
        ("[trigger]\nlabel = ''\n", ["trigger.label", "non-empty"]),
        ("[trigger]\nsplit_on_new_p = 'yes'\n", ["trigger.split_on_new_p", "got 'yes'"]),
        ("[pipeline]\npreprocess_workers = 65\n", ["pipeline.preprocess_workers", "<= 64", "got 65"]),
        ("[pipeline]\nwindows_endpoint = 'localhost:5'\n", ["pipeline.windows_endpoint", "tcp://", "'localhost:5'"]),
        ("[pipeline]\nwindows_endpoint = 'inproc://a'\nspectra_endpoint = 'inproc://a'\n",
         ["pipeline.spectra_endpoint", "inproc://a"]),
        ("[publish]\nendpoint = 'tcp://127.0.0.1'\n", ["publish.endpoint", "got 'tcp://127.0.0.1'"]),
        ("[publish]\ncurve_secret_key = '/k'\n", ["publish.curve_allowed_keys", "'/k'"]),
        ("[metrics]\nlisten = '9108'\n", ["metrics.listen", "host:port", "got '9108'"]),
        ("[logging]\nformat = 'xml'\n", ["logging.format", '"json"', "got 'xml'"]),
        ("[logging]\nlevel = 'loud'\n", ["logging.level", "got 'loud'"]),
        ("model = 3\n", ["[model] must be a table", "got 3"]),
    ],
)
def test_bad_values_name_file_key_expected_and_actual(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert info.value.exit_code == 2


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_config(write(tmp_path, "[seedlink\nserver = 1\n"))


def test_overrides_win_and_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    cfg = load_config(path, {"model.device": "cpu", "model.batch_size": "16", "trigger.on": 0.9})
    assert (cfg.model.device, cfg.model.batch_size, cfg.trigger.on) == ("cpu", 16, 0.9)
    assert cfg.seedlink.streams == ("BW.RJOB..EH?", "GR.FUR..HH?")  # the rest of the file still applies
    with pytest.raises(ConfigError, match=r"model\.batch_size.*got 'x'"):
        load_config(path, {"model.batch_size": "x"})
    with pytest.raises(ConfigError, match=r"model\.devce.*did you mean model\.device"):
        load_config(path, {"model.devce": "cpu"})
    assert load_config(path, {"model.device": None}).model.device == "auto"  # a CLI flag that was not given


def test_run_requires_streams(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL), require_streams=True).seedlink.streams
    with pytest.raises(ConfigError, match=r"seedlink\.streams: expected at least one selector.*got \[\]"):
        load_config(write(tmp_path, "[publish]\nendpoint = 'tcp://127.0.0.1:5557'\n"), require_streams=True)


def test_streams_are_stream_selectors_normalised_to_upper_case(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL.replace('"GR.FUR..HH?"', '" gr.fur.*.hh* "')))
    assert cfg.seedlink.streams == ("BW.RJOB..EH?", "GR.FUR.*.HH*")


def test_check_stages_is_the_one_stage_check(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    no_streams = load_config(None)
    assert check_stages(None) == list(STAGES) == ["ingest", "preprocess", "inference"]
    assert check_stages("inference, preprocess", key="--stages") == ["inference", "preprocess"]
    assert check_stages(["inference"], no_streams) == ["inference"]  # an inference-only host needs no streams
    assert check_stages(None, cfg) == list(STAGES)
    for bad in ("ingest,gpu", ",", ["gpu"], []):
        with pytest.raises(ConfigError, match=r"^--stages: expected a comma-separated subset of "
                                              r"ingest,preprocess,inference, got "):
            check_stages(bad, key="--stages")
    for stages in (None, ["ingest"], "preprocess,ingest"):
        with pytest.raises(ConfigError, match=r"^config: seedlink\.streams: expected at least one selector.*got \[\]"):
            check_stages(stages, no_streams)


def test_path_keys_expand_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/quakemon.service")
    cfg = load_config(write(tmp_path, MINIMAL.replace("[publish]", "[publish]\n"
                                                      'curve_secret_key = "${CREDENTIALS_DIRECTORY}/server.key"\n'
                                                      'curve_allowed_keys = "/etc/quakemon/clients"')))
    assert cfg.publish.curve_secret_key == "/run/credentials/quakemon.service/server.key"


def test_check_config_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check-config", str(write(tmp_path, MINIMAL))]) == 0
    out = capsys.readouterr().out
    assert 'streams = ["BW.RJOB..EH?", "GR.FUR..HH?"]' in out and "batch_size = 64" in out
    assert f'state_file = "{tmp_path / "state" / "seedlink.state"}"' in out  # "auto", resolved
    assert cli_main(["check-config", str(write(tmp_path, "[model]\nbatch_size = 0\n"))]) == 2
    err = capsys.readouterr().err
    assert "model.batch_size" in err and "got 0" in err


def test_state_file_auto_follows_systemd_then_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$STATE_DIRECTORY (the first of several, as systemd lists them), else $XDG_STATE_HOME/quakemon (an absolute
    one only), else ~/.local/state/quakemon; the journal "auto" follows the state file."""
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/one:{tmp_path}/two")
    cfg = load_config(None)
    assert cfg.seedlink.state_file == f"{tmp_path}/one/seedlink.state"
    assert cfg.publish.journal == f"{tmp_path}/one/seedlink.journal.sqlite"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert load_config(None).seedlink.state_file == str(tmp_path / "xdg" / "quakemon" / "seedlink.state")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for xdg in ("", "relative/state"):
        monkeypatch.setenv("XDG_STATE_HOME", xdg)
        home = load_config(None)
        assert home.seedlink.state_file == str(tmp_path / "home" / ".local" / "state" / "quakemon" / "seedlink.state")
        assert home.publish.journal == str(tmp_path / "home" / ".local" / "state" / "quakemon" /
                                           "seedlink.journal.sqlite")


def test_explicit_and_empty_state_file_are_kept(tmp_path: Path) -> None:
    explicit = load_config(None, {"seedlink.state_file": str(tmp_path / "s" / "x.state")})
    assert explicit.seedlink.state_file == str(tmp_path / "s" / "x.state")
    assert explicit.publish.journal == str(tmp_path / "s" / "x.journal.sqlite")
    off = load_config(None, {"seedlink.state_file": ""})
    assert (off.seedlink.state_file, off.publish.journal) == ("", "")
    from_env = load_config(write(tmp_path, MINIMAL.replace('"auto"', '"${STATE_DIRECTORY}/mine.state"')))
    assert from_env.seedlink.state_file == str(tmp_path / "state" / "mine.state")


def test_shipped_config_resolves_to_the_users_state_directory_outside_systemd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Outside systemd the shipped config writes under ~/.local/state/quakemon (not /var/lib), and check-config
    lists the resolved paths without creating them."""
    for var in ("STATE_DIRECTORY", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    assert cli_main(["check-config", str(EXAMPLE)]) == 0
    state_dir = tmp_path / "home" / ".local" / "state" / "quakemon"
    out = capsys.readouterr().out
    assert f"#   seedlink.state_file = {state_dir / 'seedlink.state'}\n" in out
    assert f"#   publish.journal = {state_dir / 'seedlink.journal.sqlite'}\n" in out
    assert list((tmp_path / "home").iterdir()) == []


def test_operations_recipe_configs_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TOML block in docs/operations.md's Recipes section is a valid config (with the shipped streams)."""
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "credentials"))
    text = (EXAMPLE.parents[1] / "docs" / "operations.md").read_text()
    recipes = text[text.index("\n## Recipes\n"):]
    blocks = [b.split("```", 1)[0] for b in recipes.split("```toml\n")[1:]]
    assert len(blocks) == 4
    public, trigger, calibrated, hosts = (load_config(write(tmp_path, textwrap.dedent(b))) for b in blocks)
    assert public.seedlink.streams == ("GE.UGM..HH?", "GE.APE..HH?")
    assert public.publish.journal == str(tmp_path / "state" / "seedlink.journal.sqlite")
    assert (trigger.trigger.on, trigger.trigger.off) == (0.9, 0.5)
    assert calibrated.trigger.calibration_settings().history_s == 21600.0
    assert hosts.pipeline.curve_secret_key == str(tmp_path / "credentials" / "stages.key_secret")
    assert hosts.pipeline.spectra_endpoint == "tcp://gpuhost.example.org:5556"
    on_gpu = load_config(write(tmp_path, textwrap.dedent(blocks[3])), {"pipeline.spectra_endpoint": "tcp://*:5556"})
    assert on_gpu.pipeline.spectra_endpoint == "tcp://*:5556"


def test_split_on_new_p_is_off_by_default_and_can_be_set(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).trigger.split_on_new_p is False
    cfg = load_config(write(tmp_path, MINIMAL + "[trigger]\nsplit_on_new_p = true\n"))
    assert cfg.trigger.split_on_new_p is True


def test_trigger_calibration_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert (cfg.trigger.calibration, cfg.trigger.calibration_rate, cfg.trigger.calibration_history) == (
        "off", 1.0, 21600.0)
    assert cfg.trigger.calibration_settings() is None
    on = load_config(write(tmp_path, MINIMAL + '[trigger]\ncalibration = "rate"\ncalibration_rate = 4\n'
                                             "calibration_history = 3600\n"
                                             '[trigger.overrides]\n"BW.RJOB" = { on = 0.9 }\n'))
    settings = on.trigger.calibration_settings()
    assert (settings.mode, settings.rate_per_day, settings.history_s) == ("rate", 4.0, 3600.0)
    kwargs = on.trigger.detection_kwargs()
    assert kwargs["calibration"] == settings and kwargs["overrides"] == {"BW.RJOB": {"on": 0.9}}
    assert (kwargs["on"], kwargs["retrigger_hold_s"], kwargs["split_on_new_p"]) == (0.7, 30.0, False)
    for bad, key in (('calibration = "auto"', "trigger.calibration"), ("calibration_rate = -1", "calibration_rate"),
                     ("calibration_history = 60", "calibration_history")):
        with pytest.raises(ConfigError, match=key):
            load_config(write(tmp_path, MINIMAL + f"[trigger]\n{bad}\n"))
