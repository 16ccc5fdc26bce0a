"""Hot reload, part by part: [trigger.overrides], which keys a reload may change, the stage side of a reload,
thresholds changed under open detections, SeedLink re-subscription against a real server, RELOADING=1.

The whole daemon on SIGHUP is tested in test_reload_daemon.py.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.pipeline import NotifySocket, wait_for
from support.seedlink import collect, make_records, record_ids, rid

from quakemon.base.errors import ConfigError
from quakemon.ingest.seedlink import SeedLinkSource
from quakemon.models.contract import InputContract
from quakemon.pipeline.associate import Associator
from quakemon.pipeline.trigger import TriggerBank
from quakemon.pipeline.windowing import StationWindower
from quakemon.service.config import Config, load_config
from quakemon.service.config_format import format_config
from quakemon.service.reload import (
    ReloadableStage,
    changed_keys,
    config_digest,
    reselect_windower,
    validate_reload,
    write_snapshot,
)
from quakemon.service.sdnotify import Notifier
from quakemon.tools.serve import SeedLinkServer

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = """\
[trigger]
on = 0.7
off = 0.5
[trigger.overrides]
"BW" = { on = 0.8 }
"BW.RJOB" = { off = 0.3, min_duration = 1 }
"""


def write(tmp_path: Path, text: str, name: str = "q.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- [trigger.overrides] -----------------------------------------------------------------------------------------


def test_trigger_overrides_load_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, OVERRIDES))
    assert cfg.to_dict()["trigger"]["overrides"] == {"BW": {"on": 0.8}, "BW.RJOB": {"min_duration": 1.0, "off": 0.3}}
    assert load_config(write(tmp_path, format_config(cfg), "again.toml")) == cfg
    assert load_config(None).trigger.overrides == ()


@pytest.mark.parametrize("table, message", [
    ('"BW.RJOB.00" = { on = 0.8 }', 'a "NET" or "NET.STA" code as each key'),
    ('"BW.*" = { on = 0.8 }', 'a "NET" or "NET.STA" code as each key'),
    ('"BW" = { onn = 0.8 }', "not onn = 0.8 for BW"),
    ('"BW" = { on = 1.5 }', "not on = 1.5 for BW"),
    ('"BW" = { off = 0 }', "not off = 0 for BW"),
    ('"BW" = { min_duration = -1 }', "not min_duration = -1 for BW"),
    ('"BW" = { on = true }', "not on = True for BW"),
    ('"BW" = 0.8', "a table of on, off, min_duration for each key"),
    ('"BW" = {}', "a table of on, off, min_duration for each key"),
    ('"BW" = { off = 0.8 }', "off <= on for BW (on 0.7, off 0.8 with the global values)"),  # global on 0.7
    ('"BW" = { on = 0.6 }\n"BW.RJOB" = { off = 0.65 }', "off <= on for BW.RJOB (on 0.6, off 0.65"),  # network on
])
def test_trigger_overrides_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = write(tmp_path, f"[trigger]\non = 0.7\noff = 0.5\n[trigger.overrides]\n{table}\n")
    with pytest.raises(ConfigError, match="trigger.overrides") as exc:
        load_config(path)
    assert message in str(exc.value) and str(path) in str(exc.value)


# -- what a reload may change ------------------------------------------------------------------------------------


def _changed(cfg: Config, **sections: dict[str, Any]) -> Config:
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)
                                       for name, values in sections.items()})


def test_a_reload_may_change_streams_thresholds_and_association_only() -> None:
    cfg = load_config(None, {"seedlink.streams": ["BW.RJOB..EH?"]})
    new = _changed(cfg, seedlink={"streams": ("BW.RJOB..EH?", "BW.RJB2..EH?")}, trigger={"on": 0.9},
                   associate={"threshold": 2.0})
    assert validate_reload(cfg, new) == ["associate.threshold", "seedlink.streams", "trigger.on"]
    assert validate_reload(cfg, cfg) == []
    for section, values, keys in (("publish", {"endpoint": "tcp://127.0.0.1:6000"}, "publish.endpoint"),
                                  ("model", {"checkpoint": "/x.safetensors", "batch_size": 8},
                                   "model.batch_size, model.checkpoint"),
                                  ("associate", {"enabled": True}, "associate.enabled"),
                                  ("seedlink", {"server": "10.0.0.1:18000"}, "seedlink.server")):
        with pytest.raises(Exception, match=f"^{keys}: changed, but only a restart applies"):
            validate_reload(cfg, _changed(cfg, **{section: values}))


def test_the_snapshot_loads_back_to_the_same_config_and_digest(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, OVERRIDES), {"pipeline.runtime_dir": str(tmp_path / "rt"),
                                                  "seedlink.streams": ["BW.RJOB..EH?"]})
    (tmp_path / "rt").mkdir()
    again = load_config(write_snapshot(cfg))
    assert again == cfg and config_digest(again) == config_digest(cfg)
    assert config_digest(_changed(cfg, trigger={"on": 0.75})) != config_digest(cfg)
    assert changed_keys(cfg, _changed(cfg, trigger={"on": 0.75})) == ["trigger.on"]


class Recorder(ReloadableStage):
    """A stage whose part of a reload is to record it (or fail with `error`)."""

    name = "recorder"

    def __init__(self, cfg: Config, reload_config) -> None:
        self.cfg = cfg
        self.reload_event = threading.Event()
        self.reload_config = reload_config
        self.applied: list[list[str]] = []
        self.error: Exception | None = None

    def apply_reload(self, new: Config, changed: list[str]) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        self.applied.append(changed)
        return {"note": "applied"}


def test_a_stage_applies_a_reload_or_keeps_its_config(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    old = load_config(None)
    new = [_changed(old, trigger={"on": 0.9})]
    stage = Recorder(old, lambda: new[0])
    stage.maybe_reload()  # no SIGHUP: nothing happens
    assert stage.cfg is old and stage.reload_stats() == {"config_digest": config_digest(old)}
    with capture_logs() as logs:
        stage.reload_event.set()
        stage.maybe_reload()
    assert stage.cfg == new[0] and stage.applied == [["trigger.on"]] and not stage.reload_event.is_set()
    assert stage.reload_stats() == {"config_digest": config_digest(new[0])}
    assert logs[-1]["event"] == "config_reloaded" and logs[-1]["changed"] == ["trigger.on"]

    running = stage.cfg
    for bad, reason in ((_changed(running, publish={"endpoint": "tcp://127.0.0.1:6000"}), "publish.endpoint"),
                        (_changed(running, trigger={"on": 0.95}), "cannot")):
        new[0] = bad
        stage.error = ConfigError("cannot") if reason == "cannot" else None
        with capture_logs() as logs:
            stage.reload_event.set()
            stage.maybe_reload()
        assert stage.cfg is running and stage.applied == [["trigger.on"]]
        assert logs[-1]["event"] == "reload_refused" and reason in logs[-1]["reason"], logs


# -- thresholds under open detections ----------------------------------------------------------------------------


def test_overrides_give_networks_and_stations_their_own_thresholds() -> None:
    bank = TriggerBank(0.7, 0.5, 2.0, ["noise", "earthquake"],
                       overrides={"BW": {"on": 0.8}, "BW.RJOB": {"off": 0.3, "min_duration": 1.0}})
    assert bank.thresholds("BW.RJOB.") == (0.8, 0.3, 1.0)
    assert bank.thresholds("BW.RJB2.00") == (0.8, 0.5, 2.0)
    assert bank.thresholds("GR.FUR.") == (0.7, 0.5, 2.0)
    trig = bank.trigger("BW.RJOB.", "earthquake")
    assert (trig.on, trig.off, trig.min_duration_s) == (0.8, 0.3, 1.0)
    with pytest.raises(ConfigError, match=r"trigger.overrides.BW: trigger.off must be in \(0, trigger.on=0.4\]"):
        TriggerBank(0.7, 0.5, 2.0, ["noise", "earthquake"], overrides={"BW": {"on": 0.4}})


def _feed(bank: TriggerBank, station: str, k: int, p: float) -> list:
    return bank.update(station, float(k), k + 20.0, {"noise": 1 - p, "earthquake": p})


def test_reconfigure_keeps_open_detections_and_applies_from_the_next_window() -> None:
    bank = TriggerBank(0.7, 0.5, 0.0, ["noise", "earthquake"])
    (opened,) = _feed(bank, "BW.RJOB.", 0, 0.8)
    assert _feed(bank, "GR.FUR.", 0, 0.8)[0].state == "new"
    assert not _feed(bank, "BW.RJOB.", 1, 0.6)  # at or above off 0.5: still open
    assert bank.reconfigure(0.7, 0.5, 0.0, 0.0, {"BW.RJOB": {"off": 0.65}}) == ["BW.RJOB."]
    (closed,) = _feed(bank, "BW.RJOB.", 2, 0.6)  # below the new off: the same detection closes
    assert (closed.state, closed.close_reason, closed.detection) == ("closed", "off", opened.detection)
    assert not _feed(bank, "GR.FUR.", 1, 0.6)  # the global off is unchanged

    with pytest.raises(ConfigError, match="trigger.overrides.GR"):
        bank.reconfigure(0.7, 0.5, 0.0, 0.0, {"GR": {"off": 0.9}})
    assert bank.thresholds("BW.RJOB.") == (0.7, 0.65, 0.0) and bank.thresholds("GR.FUR.") == (0.7, 0.5, 0.0)


def test_associator_retune_takes_the_new_settings() -> None:
    assoc = Associator(3.0, 5.0, {"BW.RJOB": 2.0})
    assoc.retune(Associator(2.0, 8.0, {"BW.RJB2": 1.5}, hold_s=4.0, retrigger_s=9.0))
    assert (assoc.threshold, assoc.window_s, assoc.weights, assoc.hold_s, assoc.retrigger_s) == (
        2.0, 8.0, {"BW.RJB2": 1.5}, 4.0, 9.0)


# -- SeedLink: new selectors, one new handshake, nothing lost ----------------------------------------------------


def test_set_streams_resubscribes_and_loses_no_record_of_the_stations_that_stay() -> None:
    records = make_records((("BW", "RJOB"), ("BW", "RJB2")))
    rjob = set(record_ids(records, lambda r: r.sta == "RJOB"))
    rjb2 = set(record_ids(records, lambda r: r.sta == "RJB2"))
    with SeedLinkServer(records, speed=3.0) as srv:
        src = SeedLinkSource(srv.address, ["BW.RJOB..EH?"], backoff_initial=0.1, netto=5.0)
        seen: dict[str, list] = {"before": [], "after": []}

        def until(got: list) -> bool:
            phase = "after" if seen["before"] and len(seen["before"]) >= len(rjob) // 3 else "before"
            seen[phase].append(rid(got[-1]))
            if phase == "before" and len(seen["before"]) == len(rjob) // 3:
                with pytest.raises(ConfigError, match="explicit"):
                    src.set_streams(["BW.*..EH?"])  # refused: nothing changes
                assert src.stations == ["BW.RJOB"]
                src.set_streams(["BW.RJOB..EH?", "BW.RJB2..EH?"])
            return rjob <= {rid(t) for t in got}

        try:
            got = collect(src, until, 30)
            got += collect(src, lambda g: False, 0.5)
        finally:
            src.close()
        commands = [c for _, c in srv.history]
    ids = [rid(t) for t in got]
    assert {i for i in ids if i in rjob} == rjob and len([i for i in ids if i in rjob]) == len(rjob)  # once each
    assert {i for i in ids if i in rjb2}, "the added station delivers records"
    assert all(i in rjob for i in seen["before"])
    assert commands.count("STATION BW_RJOB") == 2 and commands.count("STATION BW_RJB2") == 1  # SeedLink 4
    assert src.stats["reconnects"] == 0 and src.stats["gaps"] == 0


def test_reselect_windower_drops_removed_stations_and_keeps_their_counts() -> None:
    import obspy

    contract = InputContract()
    windower = StationWindower(contract, 1.0, ["BW.RJOB..EH?", "BW.RJB2..EH?"], silence_s=1.0)
    for sta in ("RJOB", "RJB2"):
        st = obspy.read()
        for tr in st:
            tr.stats.station = sta
            tr.data = tr.data.astype(np.float64)
        windower.add_traces(st)
    before = windower.counters()
    assert before["windows_emitted"] > 0 and before["stations"] == 2
    assert reselect_windower(windower, ["BW.RJOB..EH?"], contract.component_order) == ["BW.RJB2."]
    after = windower.counters()
    assert windower.stations == [("BW.RJOB.", "EH")] and after["stations"] == 1
    assert after["windows_emitted"] == before["windows_emitted"]
    assert "BW.RJB2." not in windower.silence.last
    st = obspy.read()
    for tr in st:
        tr.stats.station = "RJB2"
    assert windower.add_traces(st) == [] and windower.counters()["unselected_records"] == 3


# -- systemd -------------------------------------------------------------------------------------------------------


def test_reloading_sends_monotonic_usec(tmp_path: Path) -> None:
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert Notifier(sock.path).reloading("reloading the config")
        (message,) = wait_for(lambda: [m for _, m in sock.messages], 5, "the RELOADING=1 datagram")
    finally:
        sock.close()
    lines = message.splitlines()
    assert lines[0] == "RELOADING=1" and lines[2] == "STATUS=reloading the config"
    usec = int(lines[1].removeprefix("MONOTONIC_USEC="))
    assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_the_unit_reloads_with_sighup() -> None:
    text = (ROOT / "systemd" / "quakemon.service").read_text()
    assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in text and "\nType=notify\n" in text
