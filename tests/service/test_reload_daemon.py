"""`systemctl reload` end to end: `quakemon serve` (SeedLink on loopback) -> `quakemon run` -> SIGHUP with new configs.

The archive holds three stations (obspy.read()'s BW.RJOB event, then noise, the k-th station rolled by k seconds),
served in a loop. The daemon starts with BW.RJOB and BW.RJB3 and thresholds so low (on = off = 0.001) that every
window of the random test model is over them: each station opens one detection and keeps it open. The reload
adds BW.RJB2 and gives BW.RJB3 on = off = 1.0 ([trigger.overrides]), which no window reaches. Then:

- BW.RJB2 gets a detection, BW.RJB3's open detection closes at its next window (close_reason "off"), and BW.RJOB's
  detection stays open with the same id until the daemon stops: its trigger, buffers and resume position went
  through the reload, no SeedLink gap, no skipped window;
- no stage process was restarted, and every message the publisher sent has one epoch and consecutive seqs;
- systemd saw RELOADING=1 (with MONOTONIC_USEC=) and READY=1 after it (a fake $NOTIFY_SOCKET: systemd cannot run
  as PID 1 here);
- an invalid config (trigger.off > trigger.on) and one that changes a key needing a restart (publish.endpoint) are
  refused with the reason logged, READY=1 is sent again, and the daemon goes on with the config it ran.
"""

from __future__ import annotations

import signal
from pathlib import Path

from support.pipeline import (
    NotifySocket,
    Proc,
    Subscriber,
    free_port,
    start_daemon,
    start_server,
    wait_for,
    write_config,
    write_event_network,
)

from quakemon.wire.schema import parse_iso_utc

STATIONS = ("RJOB", "RJB2", "RJB3")
START_TIMEOUT = 120.0
SPEED = 2.0
LOW = {"on": 0.001, "off": 0.001, "min_duration": 0.0, "retrigger_hold": 0.0}
RJB3_NEVER = '"BW.RJB3" = { on = 1.0, off = 1.0 }'  # [trigger.overrides]: no window reaches p = 1


def streams(*stations: str) -> list[str]:
    return [f"BW.{s}..EH?" for s in stations]


def detections(sub: Subscriber, station: str, state: str | None = None) -> list[dict]:
    return [b for b in sub.bodies("detection.") if b["station"].startswith(f"BW.{station}.")
            and (state is None or b["state"] == state)]


def drained(sub: Subscriber) -> bool:
    """The last two heartbeats count the same windows cut, all of them inferred."""
    beats = sub.bodies("heartbeat")[-2:]
    return len(beats) == 2 and beats[0]["windows_in"] == beats[1]["windows_in"] == beats[1]["windows_out"]


def assert_refused(daemon: Proc, notify: NotifySocket, reason: str) -> None:
    """SIGHUP: the reload is refused with `reason` in the ERROR line, and READY=1 follows."""
    ready, refused = len(notify.times("READY=1")), len(daemon.events("reload_refused"))
    daemon.signal(signal.SIGHUP)
    event = daemon.wait_event("reload_refused", 30, count=refused + 1)[-1]
    assert reason in event["reason"] and event["level"] == "error", event
    wait_for(lambda: len(notify.times("READY=1")) > ready, 5, "READY=1 after a refused reload")


def test_sighup_adds_a_station_and_changes_a_threshold_without_a_restart(tmp_path: Path, tiny_checkpoint: Path):
    archive, _, _ = write_event_network(tmp_path / "network.mseed", STATIONS, (True, False, False, False), seed=0)
    server, port = start_server(archive, tmp_path, speed=SPEED)
    publish = free_port()

    def config(stations: tuple[str, ...], trigger: dict, overrides: str = "", publish_port: int = publish) -> Path:
        out = write_config(tmp_path / "reload.toml", server_port=port, checkpoint=tiny_checkpoint,
                           runtime_dir=tmp_path / "rt", publish_port=publish_port, on=LOW["on"], off=LOW["off"],
                           extra={"seedlink": {"streams": streams(*stations)}, "trigger": trigger})
        with out.open("a") as fh:
            fh.write(f"[trigger.overrides]\n{overrides}\n")
        return out

    path = config(("RJOB", "RJB3"), LOW)
    notify = NotifySocket(tmp_path / "notify.sock")
    sub = Subscriber(f"tcp://127.0.0.1:{publish}")
    daemon = start_daemon(path, tmp_path, "daemon", env={"NOTIFY_SOCKET": notify.path})
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)
        wait_for(lambda: detections(sub, "RJOB", "new") and detections(sub, "RJB3", "new"), 90,
                 "a detection at BW.RJOB and at BW.RJB3")
        assert not detections(sub, "RJB2")
        (rjob,) = detections(sub, "RJOB", "new")

        # a station added, a threshold changed
        config(("RJOB", "RJB2", "RJB3"), LOW, RJB3_NEVER)
        daemon.signal(signal.SIGHUP)
        (ok,) = daemon.wait_event("reload_ok", 60)
        assert ok["changed"] == ["seedlink.streams", "trigger.overrides"] and ok["reloads_total"] == 1
        reloaded = {e["stage"]: e for e in daemon.wait_event("config_reloaded", 10, count=2)}
        assert reloaded["ingest"]["streams_added"] == ["BW.RJB2..EH?"]
        assert reloaded["ingest"]["streams_removed"] == [] and reloaded["ingest"]["stations_dropped"] == []
        assert reloaded["inference"]["stations_retuned"] == ["BW.RJB3."]
        reloading = notify.wait_for("RELOADING=1")
        assert reloading and any(line.startswith("MONOTONIC_USEC=") for t, m in notify.messages
                                 if "RELOADING=1" in m.splitlines() for line in m.splitlines())
        assert [t for t in notify.wait_for("READY=1") if t > reloading[0]], "READY=1 after RELOADING=1"

        wait_for(lambda: detections(sub, "RJB2", "new"), 90, "a detection at the added station BW.RJB2")
        (closed,) = wait_for(lambda: detections(sub, "RJB3", "closed"), 30, "BW.RJB3 closed by its new off")
        assert closed["close_reason"] == "off"
        assert len(detections(sub, "RJB3", "new")) == 1  # on = 1.0: nothing opens again

        # refused: an invalid value, and a key that needs a restart; the daemon runs on with the config above
        config(("RJOB", "RJB2", "RJB3"), {**LOW, "on": 0.5, "off": 0.6}, RJB3_NEVER)
        assert_refused(daemon, notify, "trigger.off: expected 0 < off <= trigger.on (0.5), got 0.6")
        config(("RJOB", "RJB2", "RJB3"), LOW, RJB3_NEVER, free_port())
        assert_refused(daemon, notify, "publish.catchup_endpoint, publish.endpoint: changed, but only a restart")
        seen = len(sub.bodies("heartbeat"))
        wait_for(lambda: len(sub.bodies("heartbeat")) > seen + 2, 10, "heartbeats after the refused reloads")
        assert len(daemon.events("config_reloaded")) == 2 and len(daemon.events("reload_ok")) == 1
        assert daemon.proc.poll() is None
        connects = len(daemon.events("seedlink_connected"))  # the first session and the one after the reload
        server.stop()  # no data from here: every window cut is inferred before the stop (counted below)
        wait_for(lambda: drained(sub), 20, "every window cut inferred")
    finally:
        code = daemon.stop()
        sub.close()
        notify.close()
        server.stop()
    assert code == 0, daemon.stderr()[-3000:]

    # no stage restarted; one publisher epoch, consecutive seqs
    assert sorted(e["kind"] for e in daemon.events("stage_spawned")) == ["inference", "ingest", "preprocess"]
    bodies = [b for _, _, b in sub.messages]
    assert len({b["epoch"] for b in bodies}) == 1
    seqs = [b["seq"] for b in bodies]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # BW.RJOB went through the reload untouched: one detection, open until the daemon stopped
    assert [(b["id"], b["state"], b.get("close_reason")) for b in detections(sub, "RJOB")] == [
        (rjob["id"], "new", None), (rjob["id"], "closed", "shutdown")]
    # ... and every one of its windows was cut: one per second from its first to its last (stride 1 s)
    (stopped,) = [e for e in daemon.events("stage_stopped") if e.get("stage") == "ingest"]
    first, last = parse_iso_utc(rjob["window_start"]), parse_iso_utc(detections(sub, "RJOB")[-1]["last_window_start"])
    assert stopped["windows_by_station"]["BW.RJOB."] == round(last - first) + 1, (first, last, stopped)
    assert stopped["source_gaps"] == 0 and stopped["dropped_ingest"] == 0, stopped
    assert not daemon.events("seedlink_gap")
    assert len(daemon.events("seedlink_reselect")) == 1 and connects == 2
