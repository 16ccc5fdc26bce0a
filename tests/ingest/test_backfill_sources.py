"""Backfill sources and planning (`quakemon.ingest.backfill`): gaps -> station requests, SDS and FDSN reads.

The SDS tree is written with ObsPy; the FDSN service is a real HTTP server on 127.0.0.1 (support.backfill).
"""

from __future__ import annotations

import obspy
import pytest
from support.backfill import FdsnServer, write_outage

from quakemon.base.errors import ConfigError
from quakemon.base.net import free_port
from quakemon.ingest.backfill import (
    MAX_LISTED,
    SETTLE_S,
    BackfillError,
    BackfillRequest,
    FdsnSource,
    GapPlanner,
    SdsSource,
    open_source,
    valid_source,
)
from quakemon.service.config import load_config

T0 = 1_250_000_000.0


class Clock:
    """A hand-moved monotonic clock for the planner's delay."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def planner(delay_s: float = 0.0, max_span_s: float = 86400.0) -> tuple[GapPlanner, Clock]:
    clock = Clock()
    return GapPlanner(delay_s, max_span_s, clock=clock), clock


def test_channel_gaps_of_one_outage_make_one_request_once_due():
    gaps, clock = planner(delay_s=30.0)
    gaps.note("BW.RJOB..EHZ", T0, T0 + 7200.0)
    gaps.note("BW.RJOB..EHN", T0 + 0.5, T0 + 7200.2)
    gaps.note("BW.RJOB..EHE", T0 - 0.3, T0 + 7199.9)
    clock.now = 29.9
    assert gaps.poll() == [] and not gaps.listed
    clock.now = 30.0
    (req,) = gaps.poll()
    union = round((T0 - 0.3) * 1e9), round((T0 + 7200.2) * 1e9)
    assert req == BackfillRequest("BW.RJOB.", ("EHE", "EHN", "EHZ"), *union)
    assert list(gaps.listed) == [req] and gaps.poll() == []
    assert gaps.stats["backfill_requested"] == 1


def test_a_late_channel_of_a_requested_outage_is_not_requested_again():
    gaps, clock = planner()
    gaps.note("BW.RJOB..EHZ", T0, T0 + 600.0)
    clock.now = SETTLE_S
    assert len(gaps.poll()) == 1
    gaps.note("BW.RJOB..EHN", T0 + 0.5, T0 + 600.5)
    clock.now = 2 * SETTLE_S
    assert gaps.poll() == [] and gaps.stats["backfill_requested"] == 1


def test_a_zero_delay_still_waits_for_the_other_channels():
    gaps, clock = planner(delay_s=0.0)
    gaps.note("BW.RJOB..EHZ", T0, T0 + 60.0)
    assert gaps.poll() == []
    clock.now = SETTLE_S
    assert len(gaps.poll()) == 1


def test_separate_outages_and_stations_are_separate_requests():
    gaps, clock = planner()
    gaps.note("BW.RJOB..EHZ", T0, T0 + 60.0)
    gaps.note("BW.RJOB..EHZ", T0 + 600.0, T0 + 660.0)
    gaps.note("BW.UH1..EHZ", T0, T0 + 60.0)
    clock.now = SETTLE_S
    reqs = gaps.poll()
    assert sorted((r.station, r.span_s) for r in reqs) == [("BW.RJOB.", 60.0), ("BW.RJOB.", 60.0), ("BW.UH1.", 60.0)]


def test_short_gaps_are_skipped_and_long_ones_clipped_to_their_newest_part():
    gaps, clock = planner(max_span_s=3600.0)
    gaps.note("BW.RJOB..EHZ", T0, T0 + 0.5)
    gaps.note("BW.UH1..EHZ", T0, T0 + 7200.0)
    gaps.note("not a seed id", T0, T0 + 7200.0)
    clock.now = SETTLE_S
    (req,) = gaps.poll()
    assert req.station == "BW.UH1." and req.start_ns == round((T0 + 3600.0) * 1e9) and req.span_s == 3600.0
    assert gaps.stats == {"backfill_requested": 1, "backfill_skipped": 1, "backfill_clipped": 1}


def test_the_listed_requests_are_bounded_to_the_newest():
    gaps, clock = planner()
    for k in range(MAX_LISTED + 5):
        gaps.note("BW.RJOB..EHZ", T0 + 100.0 * k, T0 + 100.0 * k + 10.0)
    clock.now = SETTLE_S
    assert len(gaps.poll()) == MAX_LISTED + 5
    assert len(gaps.listed) == MAX_LISTED and gaps.listed[-1].start_ns == round((T0 + 100.0 * (MAX_LISTED + 4)) * 1e9)


def test_requests_cross_the_wire_and_malformed_ones_are_refused():
    req = BackfillRequest("BW.RJOB.", ("EHE", "EHZ"), 10, 20)
    assert BackfillRequest.from_wire(req.to_wire()) == req
    for bad in (None, [], ["BW.RJOB.", ["EHZ"], 20, 10], ["BW.RJOB.", [], 10, 20], ["BW", ["EHZ"], 10, 20],
                ["BW.RJOB.", ["EHZ"], 10.0, 20], ["BW.RJOB.", ["EH/"], 10, 20], ["BW.RJOB.", ["EHZ"], True, 20]):
        with pytest.raises(ValueError):
            BackfillRequest.from_wire(bad)


@pytest.mark.parametrize("url, ok", [
    ("", True), ("sds:///data/sds", True), ("fdsn://service.example.org", True), ("fdsn://127.0.0.1:8080", True),
    ("http://127.0.0.1:8080/", True), ("https://example.org/fdsn", True), ("sds://host/data", False),
    ("fdsn://", False), ("ftp://example.org", False), ("fdsn://host:99999", False), ("/data/sds", False),
])
def test_source_urls(url, ok):
    assert valid_source(url) is ok
    if not ok:
        with pytest.raises(ValueError, match="sds:///path"):
            open_source(url)


def test_open_source_picks_the_reader():
    assert open_source("") is None
    assert isinstance(open_source("sds:///nowhere"), SdsSource)
    fdsn = open_source("fdsn://127.0.0.1:8080")
    assert isinstance(fdsn, FdsnSource) and fdsn.base_url == "http://127.0.0.1:8080"
    assert open_source("https://example.org/fdsn/").base_url == "https://example.org/fdsn"


def test_config_rejects_a_malformed_source():
    cfg = load_config(None, {"backfill.source": "sds:///data/sds", "backfill.delay_s": 0})
    assert cfg.backfill.source == "sds:///data/sds" and cfg.backfill.delay_s == 0.0
    with pytest.raises(ConfigError, match=r"backfill.source: expected .*sds:///path"):
        load_config(None, {"backfill.source": "/data/sds"})


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    return write_outage(tmp_path_factory.mktemp("outage"), hole_s=120.0, before_s=10.0, after_s=10.0, event_at_s=40.0)


def hole_request(outage, channels=("EHE", "EHN", "EHZ"), offset_s: float = 0.0) -> BackfillRequest:
    start = round((outage.hole_start + offset_s) * 1e9)
    return BackfillRequest("BW.RJOB.", channels, start, start + round(outage.hole_s * 1e9))


def test_sds_reads_the_span(outage):
    st = SdsSource(str(outage.sds)).fetch(hole_request(outage))
    assert sorted(tr.stats.channel for tr in st) == ["EHE", "EHN", "EHZ"]
    for tr in st:
        assert tr.stats.starttime.ns == round(outage.hole_start * 1e9) and tr.stats.npts == 12000
    assert len(SdsSource(str(outage.sds)).fetch(hole_request(outage, ("EHZ",)))) == 1
    assert len(SdsSource(str(outage.sds)).fetch(hole_request(outage, offset_s=86400.0))) == 0  # nothing archived


def test_sds_without_its_root_is_an_error_to_retry(tmp_path):
    with pytest.raises(BackfillError, match="not a directory"):
        SdsSource(str(tmp_path / "unmounted")).fetch(BackfillRequest("BW.RJOB.", ("EHZ",), 10, 20))


def test_sds_with_a_corrupt_file_is_an_error(tmp_path, outage):
    day = tmp_path / "2009" / "BW" / "RJOB" / "EHZ.D"
    day.mkdir(parents=True)
    t = obspy.UTCDateTime(outage.hole_start)
    (day / f"BW.RJOB..EHZ.D.2009.{t.julday:03d}").write_bytes(b"\x01corrupt" * 100)
    with pytest.raises(BackfillError, match=str(tmp_path)):
        SdsSource(str(tmp_path)).fetch(hole_request(outage, ("EHZ",)))


def test_fdsn_reads_the_span(outage):
    expected = SdsSource(str(outage.sds)).fetch(hole_request(outage))
    server = FdsnServer(expected)
    try:
        st = open_source(f"fdsn://127.0.0.1:{server.url.rsplit(':', 1)[1]}").fetch(hole_request(outage))
        assert len(server.requests) == 1 and "/fdsnws/dataselect/1/query?" in server.requests[0]
        assert "channel=EHE%2CEHN%2CEHZ" in server.requests[0] or "channel=EHE,EHN,EHZ" in server.requests[0]
        got = {tr.id: tr for tr in st}
        for tr in expected:
            assert got[tr.id].stats.starttime == tr.stats.starttime and (got[tr.id].data == tr.data).all()
        assert len(FdsnSource(server.url).fetch(hole_request(outage, offset_s=86400.0))) == 0  # 204: no data
    finally:
        server.close()


@pytest.mark.parametrize("failure, match", [("404", "404"), ("500", "500"), ("corrupt", "MSEED")])
@pytest.mark.filterwarnings("ignore::UserWarning")  # ObsPy's complaints about the garbage it parses
def test_fdsn_failures_are_backfill_errors(outage, failure, match):
    server = FdsnServer(obspy.Stream(), failures=[failure])
    try:
        with pytest.raises(BackfillError, match=match):
            FdsnSource(server.url).fetch(hole_request(outage))
    finally:
        server.close()


def test_fdsn_refused_connection_is_a_backfill_error(outage):
    with pytest.raises(BackfillError, match=r"127\.0\.0\.1"):
        FdsnSource(f"http://127.0.0.1:{free_port()}", timeout_s=5).fetch(hole_request(outage))
