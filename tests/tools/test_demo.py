"""`quakemon demo`, the README's main job: serve + run + listen on bundled real recordings, ends by itself."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_and_detects_a_real_earthquake(tmp_path):
    png = tmp_path / "demo.png"
    proc = subprocess.run([sys.executable, "-m", "quakemon", "demo", "--speed", "8", "--plot", str(png)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "daemon ready" in out
    found = re.search(r"(\d+) real earthquake\(s\) detected of (\d+)", out)
    assert found and int(found.group(1)) >= 1, out
    assert re.search(r"^\s+new\s+\S+\s+earthquake", out, re.M), "a detection must be printed as it arrives"
    # each printed with its P pick: UTC date and time, uncertainty, method
    assert re.search(r"^\s+new\s+.* P \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d\d ±\d+\.\d\d s \w+", out, re.M), out
    # one detection per real earthquake per station: no further detection at a station that recorded one
    for line in re.findall(r"^.*catalogued earthquake.*$", out, re.M):
        assert line.endswith("other detections 0"), line
    assert "Traceback" not in proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
