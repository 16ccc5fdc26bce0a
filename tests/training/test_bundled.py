"""The bundled model: small, safe to load, declares its contract, and detects real earthquakes it never saw."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import obspy
import pytest

from quakemon.models.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint, resolve_checkpoint
from quakemon.wire.schema import parse_iso_utc

EVALUATION_DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"
RJOB_P = obspy.UTCDateTime("2009-08-24T00:20:07.75").timestamp  # quakemon.data.realdata, checked on a plot


@pytest.fixture(scope="module")
def bundled():
    return load_checkpoint(resolve_checkpoint(None))


def test_bundled_model_is_small_and_declares_its_contract(bundled):
    assert BUNDLED_CHECKPOINT.stat().st_size < 10 * 1024 * 1024
    assert bundled.labels == ["noise", "earthquake"]
    assert bundled.contract.spectrogram_shape == (33, 64)
    assert bundled.contract.accepts("Z") and bundled.contract.accepts("ZNE")
    # built by the bundle script's last fine-tuning stage, for the band-passed contract
    assert bundled.provenance["command"] == "python -m quakemon.training.bundle finetune (stage 2 of 2)"
    assert "BANDPASS" in bundled.contract.transforms and bundled.contract.extra["bandpass_hz"] == [0.7, 25.0]


def test_evaluation_report_belongs_to_this_checkpoint_and_the_docs_quote_it(bundled):
    report = json.loads(BUNDLED_CHECKPOINT.with_suffix(".eval.json").read_text())
    assert report["model"]["sha256"] == bundled.sha256
    text = EVALUATION_DOC.read_text()
    ev = report["events_all"]
    assert f"{ev['detected']} of {ev['events']}" in text, "docs/evaluation.md must quote the committed recall"
    assert re.search(rf"{report['noise']['false']} false detection", text)


def test_bundled_model_detects_the_rjob_example_earthquake_in_replay(tmp_path):
    """`quakemon replay` on ObsPy's example BW.RJOB event (an evaluation recording, never trained on)."""
    st = obspy.read()
    for tr in st:
        tr.data = tr.data.astype(np.int32)
    path = tmp_path / "rjob.mseed"
    st.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    out = tmp_path / "det.jsonl"
    proc = subprocess.run([sys.executable, "-m", "quakemon", "replay", str(path), "--output", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    bodies = [json.loads(line) for line in out.read_text().splitlines()]
    new = [b for b in bodies if b["state"] == "new"]
    assert new, f"no detection; stderr: {proc.stderr[-2000:]}"
    assert all(b["station"] == "BW.RJOB." and b["label"] == "earthquake" for b in new)
    onset = parse_iso_utc(new[0]["onset"])
    assert RJOB_P - 20.0 <= onset <= RJOB_P, (new[0]["onset"], "the first window over threshold must contain P")
    assert new[0]["model"]["sha256"] == load_checkpoint(BUNDLED_CHECKPOINT).sha256


def test_vertical_only_input_detects_too(bundled):
    """The same event with the horizontals removed (Z-only station): the model accepts it and still detects."""
    from quakemon.pipeline.runner import DetectionRunner

    runner = DetectionRunner(bundled, precision="fp32")
    z_only = obspy.read().select(component="Z")
    bodies = list(runner.add_traces(z_only)) + runner.finish()
    assert any(b["state"] == "new" for b in bodies)
    counters = runner.windower.counters()
    assert counters["windows_reduced"] == counters["windows_emitted"] == runner.windows == 11
