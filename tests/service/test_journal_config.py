"""[publish] journal keys: defaults derived from the state file and the PUB endpoint, and `quakemon run` refusing
an unusable journal (exit 2, naming the key and the file) before it starts any stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.pipeline import ROOT, write_config

from quakemon.base.errors import ConfigError
from quakemon.service.config import check_journal, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "q.toml"
    path.write_text(text)
    return path


def test_journal_defaults_to_the_state_file_and_catchup_to_the_next_port(tmp_path):
    state = tmp_path / "state" / "seedlink.state"
    cfg = load_config(_write(tmp_path, f'[seedlink]\nstate_file = "{state}"\n'
                                       '[publish]\nendpoint = "tcp://127.0.0.1:6000"\n'))
    assert cfg.publish.journal == str(tmp_path / "state" / "seedlink.journal.sqlite")
    assert cfg.publish.catchup_endpoint == "tcp://127.0.0.1:6001"
    assert (cfg.publish.journal_synchronous, cfg.publish.journal_retention_days) == ("full", 30.0)
    wild = load_config(None, {"publish.endpoint": "tcp://*:6000"})
    assert wild.publish.catchup_endpoint == "tcp://*:6001"
    ipc = load_config(None, {"publish.endpoint": f"ipc://{tmp_path}/pub"})
    assert ipc.publish.catchup_endpoint == f"ipc://{tmp_path}/pub.catchup"
    anyport = load_config(None, {"publish.endpoint": "tcp://127.0.0.1:*"})
    assert anyport.publish.catchup_endpoint == "tcp://127.0.0.1:*"


def test_journal_off_and_bad_values(tmp_path):
    off = load_config(None, {"publish.journal": ""})
    assert (off.publish.journal, off.publish.catchup_endpoint) == ("", "")
    no_state = load_config(None, {"seedlink.state_file": ""})
    assert no_state.publish.journal == ""
    with pytest.raises(ConfigError, match="publish.catchup_endpoint"):
        load_config(None, {"publish.journal": "", "publish.catchup_endpoint": "tcp://127.0.0.1:7000"})
    with pytest.raises(ConfigError, match="publish.catchup_endpoint.*65536"):
        load_config(None, {"publish.endpoint": "tcp://127.0.0.1:65535"})
    with pytest.raises(ConfigError, match="publish.catchup_endpoint"):
        load_config(None, {"publish.catchup_endpoint": "tcp://127.0.0.1:5557"})
    with pytest.raises(ConfigError, match="publish.journal_synchronous"):
        load_config(None, {"publish.journal_synchronous": "off"})
    with pytest.raises(ConfigError, match="publish.journal_max_bytes"):
        load_config(None, {"publish.journal_max_bytes": "-1"})


def test_check_journal_names_the_key_and_the_file(tmp_path):
    bad = tmp_path / "journal.sqlite"
    bad.write_text("not a database\n" * 10)
    cfg = load_config(None, {"publish.journal": str(bad)})
    with pytest.raises(ConfigError, match=f"publish.journal: journal '{bad}' is not a quakemon journal"):
        check_journal(cfg)
    good = load_config(None, {"publish.journal": str(tmp_path / "new.sqlite")})
    check_journal(good)
    assert (tmp_path / "new.sqlite").exists()


def test_run_refuses_an_unusable_journal_with_exit_2(tmp_path, tiny_checkpoint):
    journal = tmp_path / "q.journal.sqlite"  # write_config's state file is q.state
    journal.mkdir()  # a directory where the journal file should be
    config = write_config(tmp_path / "q.toml", server_port=18000, checkpoint=tiny_checkpoint,
                          runtime_dir=tmp_path / "rt", publish_port=5999, on=0.5, off=0.5)
    proc = subprocess.run([sys.executable, "-m", "quakemon.cli.app", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "publish.journal" in proc.stderr and str(journal) in proc.stderr
    assert "daemon_starting" not in proc.stderr
