"""Restart continuity of `quakemon run` with its journal: the whole daemon (supervisor and every stage) SIGKILLed
during a detection and started again. A `quakemon.client.Subscriber` that stays up through both runs receives one
"new" and one "closed" per detection, with the ids a replay of the same archive gives; the resumed detection keeps
its id (the restarted inference stage continues it from the journal), and seq only grows across the two epochs.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from support.pipeline import (
    Collector,
    calibrate,
    children,
    craft_checkpoint,
    free_port,
    replay_series,
    start_daemon,
    start_server,
    wait_for,
    write_archive,
    write_config,
)

SPEED = 4.0  # the 120 s archive streams in 30 s
START_TIMEOUT = 120.0


def test_daemon_sigkilled_during_a_detection_resumes_it_with_the_same_id(tmp_path, tiny_checkpoint):
    archive, start, span = write_archive(tmp_path / "rjob.mseed")
    ckpt = craft_checkpoint(tiny_checkpoint, tmp_path / "crafted.safetensors", archive)
    cal = calibrate(ckpt, archive, round((start + span) * 1e9))
    replay, _ = replay_series(ckpt, [archive], on=cal.on, off=cal.off)
    replay_ids = {d["id"] for d in replay}
    complete = {(d["id"], d["state"]) for d in cal.detections}
    assert {s for _, s in complete} == {"new", "closed"}

    server, sl_port = start_server(archive, tmp_path, speed=SPEED, loop=False)
    port = free_port()
    config = write_config(tmp_path / "q.toml", server_port=sl_port, checkpoint=ckpt, runtime_dir=tmp_path / "rt",
                          publish_port=port, on=cal.on, off=cal.off)
    daemon = start_daemon(config, tmp_path, "first")
    collector = Collector(f"tcp://127.0.0.1:{port}", str(tmp_path / "position.json"))
    second = None
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)

        killed_open = wait_for(collector.open_detection, 90, "a detection that is open")
        for pid in [*children(daemon.pid), daemon.pid]:  # every process at once: no stage stops cleanly
            os.kill(pid, signal.SIGKILL)
        daemon.wait(10)
        second = start_daemon(config, tmp_path, "second")
        second.wait_event("daemon_ready", START_TIMEOUT)
        wait_for(lambda: complete <= set(collector.detections()), 120, "every replay detection, new and closed")
        assert second.stop(30) == 0, second.stderr()[-3000:]
        wait_for(lambda: not [i for i, n in Counter(i for i, _ in collector.detections()).items() if n < 2], 30,
                 "the closes of the stopping daemon")
    finally:
        for proc in (daemon, second):
            if proc is not None:
                proc.stop()
        collector.close()
        server.stop()
    assert collector.error is None, repr(collector.error)
    got = collector.detections()
    per_id = Counter(got)
    assert all(n == 1 for n in per_id.values()), [k for k, n in per_id.items() if n > 1]  # nothing twice
    ids = {ident for ident, _ in got}
    assert all((ident, "new") in per_id and (ident, "closed") in per_id for ident in ids)  # one new, one closed
    assert complete <= per_id.keys() and ids <= replay_ids, (sorted(ids - replay_ids), sorted(replay_ids))
    assert (killed_open, "closed") in per_id
    seqs = [m.seq for m in collector.messages]
    assert seqs == sorted(set(seqs)) and len({m.epoch for m in collector.messages}) == 2
    assert second.events("detections_resumed"), second.stderr()[-3000:]


def test_sigterm_closes_open_detections_as_shutdown(tmp_path, tiny_checkpoint):
    from quakemon.service.stages.resume import journaled
    from quakemon.wire.journal import JournalReader

    archive, _, _ = write_archive(tmp_path / "rjob.mseed")
    server, sl_port = start_server(archive, tmp_path, speed=10.0, loop=True)
    port = free_port()
    config = write_config(tmp_path / "q.toml", server_port=sl_port, checkpoint=tiny_checkpoint,
                          runtime_dir=tmp_path / "rt", publish_port=port, on=0.001, off=0.001)  # always open
    daemon = start_daemon(config, tmp_path, "daemon")
    collector = Collector(f"tcp://127.0.0.1:{port}", str(tmp_path / "position.json"))
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)
        wait_for(lambda: ("new" in {s for _, s in collector.detections()}), 90, "a detection")
        assert daemon.stop(30) == 0, daemon.stderr()[-3000:]
        wait_for(lambda: any(m.body.get("close_reason") == "shutdown" for m in list(collector.messages)), 30,
                 "the shutdown close")
    finally:
        daemon.stop()
        collector.close()
        server.stop()
    assert collector.error is None, repr(collector.error)
    per_id = Counter(collector.detections())
    assert all(n == 1 for n in per_id.values())
    assert {i for i, s in per_id if s == "new"} == {i for i, s in per_id if s == "closed"}
    with JournalReader(tmp_path / "q.journal.sqlite") as reader:
        unclosed, _ = journaled(reader, 0.0)
    assert unclosed == {}
