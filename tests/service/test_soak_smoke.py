"""The soak and fault suite (benchmarks/soak.py) in small: its comparison, and one short run with real faults.

The run is the suite itself, shortened: the daemon (`quakemon run`, real stage processes) against EarthScope's
ringserver fed with the looped demo recordings, a resuming `quakemon listen --resume` subscriber, and one fault
each of: SIGKILL of the ingest stage, SIGKILL and restart of the ringserver, corrupt records fed beside the real
ones, SIGKILL and restart of the subscriber. Then `quakemon replay` of the fed data is compared with what the
subscriber received. The longer runs, with every fault kind and the serve upstream, are in docs/reliability.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support.ringserver import ENV, ringserver_binary

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from soak import KINDS, Soak, failures, summary  # noqa: E402
from soak_parts import attribute, compare, demo_records, garble, read_listen  # noqa: E402

SMOKE_KINDS = ("kill_ingest", "upstream_kill", "corrupt", "subscriber_restart")


def _det(ident: str, state: str, onset: str, seq: int, station: str = "XX.JMI.") -> dict:
    return {"id": ident, "state": state, "station": station, "onset": f"2009-08-24T00:{onset}Z", "seq": seq,
            "last_window_end": "2009-08-24T00:21:00.000000Z"}


def test_compare_names_lost_duplicated_reid_and_extra_detections():
    replayed = [_det("a", "new", "19:24.56", 1), _det("a", "closed", "19:24.56", 2), _det("b", "new", "19:53.29", 3),
                _det("c", "new", "20:07.75", 4, "BW.RJOB."), _det("d", "new", "20:10.00", 5, "XX.CER.")]
    published = [_det("a", "new", "19:24.56", 10), _det("a", "new", "19:24.56", 12),  # published twice
                 _det("b2", "new", "19:53.80", 11),  # b under another id, 0.51 s away
                 _det("x", "new", "20:30.00", 13, "GT.BOSA."),  # not in the replay
                 _det("d", "new", "20:10.00", 14, "XX.CER.")]
    late = [{**_det("e", "new", "21:00.00", 6), "last_window_end": "2009-08-24T00:22:00.000000Z"}]  # past the cutoff
    from quakemon.wire.schema import parse_iso_utc

    cmp = compare(published, replayed + late, parse_iso_utc("2009-08-24T00:21:30Z"))
    assert [d["id"] for d in cmp["lost"]] == ["c"]
    assert [[d["seq"] for d in dup] for dup in cmp["duplicated"]] == [[10, 12]]
    assert [(r["replay"]["id"], r["published"]["id"]) for r in cmp["re_ids"]] == [("b", "b2")]
    assert [d["id"] for d in cmp["extra"]] == ["x"]
    assert (cmp["replay_new"], cmp["published_new"], cmp["matched"]) == (4, 5, 2)


def test_attribute_names_the_last_fault_before_each_published_surprise():
    cmp = {"extra": [{"seq": 7}, {"seq": 9}], "re_ids": [], "duplicated": [[{"seq": 3}, {"seq": 5}]]}
    ten = 1796551200.0  # 2026-12-06T10:00:00Z
    published_at = {3: ten, 5: ten + 30, 7: ten + 60}  # as the journal keeps them
    faults = [{"kind": "kill_ingest", "t": 10.0, "wall": ten + 20},
              {"kind": "upstream_kill", "t": 40.0, "wall": ten + 50}]
    attribute(cmp, published_at, faults)
    assert cmp["extra"][0]["after_fault"] == {"kind": "upstream_kill", "t": 40.0, "s_before": 10.0}
    assert cmp["extra"][0]["published_at"].startswith("2026-12-06T10:01:00")
    assert cmp["extra"][1]["published_at"] is None and "after_fault" not in cmp["extra"][1]  # not journaled
    assert [d["after_fault"] and d["after_fault"]["kind"] for d in cmp["duplicated"][0]] == [None, "kill_ingest"]


def test_read_listen_keeps_one_message_per_seq_and_counts_the_redelivered(tmp_path):
    out = tmp_path / "published.jsonl"
    lines = ['{"schema": "quakemon.detection/2", "seq": 3, "id": "a"}', '{"schema": "quakemon.event/1", "seq": 4}',
             '{"schema": "quakemon.detection/2", "seq": 3, "id": "a"}', '{"schema": "quakemon.listen/1", "kind": '
             '"listen", "event": "epoch_change"}', '{"schema": "quakemon.detection/2", "seq": 5, "id": "b"}',
             '{"schema": "quakemon.detection/2", "seq"']  # a line cut by a kill
    out.write_text("\n".join(lines))
    bodies, again = read_listen(out)
    assert [b["seq"] for b in bodies] == [3, 5] and again == 1


def test_garbled_records_keep_their_header_and_fail_to_decode():
    import random

    from quakemon.ingest.validate import decode_record

    records, _ = demo_records()
    rng = random.Random(1)
    bad = [garble(r.raw, rng) for r in records[:20]]
    assert all(b[:64] == r.raw[:64] and len(b) == len(r.raw) for b, r in zip(bad, records, strict=False))
    assert all(isinstance(decode_record(b), str) for b in bad)  # a rejection reason, not a Trace


@pytest.mark.slow
def test_soak_smoke(tmp_path, monkeypatch):
    """Ringserver upstream, one fault of four kinds: nothing lost, duplicated or re-id'd. (A short name: ringserver
    refuses config lines over 200 characters, and its scan folder's path appears twice in one.)"""
    monkeypatch.setenv(ENV, str(ringserver_binary(tmp_path)))  # fails under CI, else skips with the reason
    assert set(SMOKE_KINDS) <= set(KINDS)
    soak = Soak("ringserver", tmp_path / "s", minutes=0.5, faults_per_kind=1, speed=10.0, kinds=SMOKE_KINDS,
                margin_s=150.0, quiet_s=5.0, settle_s=5.0, log=lambda *_: None)
    result = soak.run()
    text = summary(result)
    assert result["faults_per_kind"] == dict.fromkeys(SMOKE_KINDS, 1), text
    assert result["corrupt_records_fed"] == 3 and result["records_rejected_by_daemon"] >= 3, text
    assert result["stage_restarts"] >= 1, text  # the killed ingest stage came back
    cmp = result["comparison"]
    assert cmp["replay_new"] >= 3 and cmp["matched"] >= 3, text  # real earthquakes were detected and compared
    assert failures(result) == [], text
    assert {"daemon", "ingest", "preprocess", "inference"} <= result["memory_fds"].keys(), text
