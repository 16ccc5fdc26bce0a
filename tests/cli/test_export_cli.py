"""`quakemon export` as a user runs it: a real subprocess, a JSON Lines input, each format read back."""

from __future__ import annotations

import json
import subprocess
import sys

import obspy
import pytest
from support.detections import bodies, expected_picks

from quakemon.wire.export import read_csv


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quakemon", "export", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "replay.jsonl"
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies()))
    return path


def test_export_quakeml_to_a_file_reads_back_with_obspy(jsonl, tmp_path):
    out = tmp_path / "picks.xml"
    proc = run_export(str(jsonl), "--format", "quakeml", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    picks = {str(p.resource_id).rsplit("/", 1)[-1]: p for ev in obspy.read_events(str(out)) for p in ev.picks}
    want = expected_picks()
    assert set(picks) == set(want)
    for pid, (time, net, sta, _loc) in want.items():
        assert picks[pid].time == time
        assert (picks[pid].waveform_id.network_code, picks[pid].waveform_id.station_code) == (net, sta)
    assert "exported" in proc.stderr


def test_export_csv_to_standard_output(jsonl):
    proc = run_export(str(jsonl), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(proc.stdout)
    detections = {b["id"] for b in bodies() if b["schema"].startswith("quakemon.detection/")}
    assert {r["pick_id"] for r in rows} >= detections


def test_export_of_a_missing_input_is_one_error_line(tmp_path):
    proc = run_export(str(tmp_path / "nope.jsonl"), "--format", "csv")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("quakemon: error:") and "nope.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_export_rejects_an_unknown_format(jsonl):
    proc = run_export(str(jsonl), "--format", "kml")
    assert proc.returncode == 2
