"""Days of real continuous noise for false-alarm measurement and hard-negative training: msnoise's UV05 and UV10.

The MSNoise package (PyPI ``msnoise==1.6.5``) ships 24 h of 100 Hz continuous vertical data (``HHZ``) of three
stations of the Piton de la Fournaise volcano network (YA.UV05, YA.UV06, YA.UV10; 2010-09-01, day 244) as test
data. quakemon uses two of them, **UV05 and UV10 only**: one day to train on, the other to count false
detections on, then swapped. Nothing else from the wheel is ever read (``NOISE_DAYS`` is the whole list, and
`day_path` refuses any other name), except the UV05 and UV10 rows of its station list (`station_coordinates`).

The days are *not* guaranteed earthquake-free (a volcano network records volcano-tectonic events); they are the
"featureless continuous noise" of an operator's network, on which every detection is counted as false, and the
same count is reported for a classic STA/LTA on the same data for comparison.

Fetching: the wheel is fetched by name only, with ``pip download --no-deps msnoise==1.6.5`` into the cache folder
(``$QUAKEMON_CACHE``, else ``$XDG_CACHE_HOME/quakemon``, else ``~/.cache/quakemon``), and the one MiniSEED file a
day needs is extracted next to it. This is training-data preparation and evaluation tooling; the detection
runtime never imports this module and never needs msnoise or the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import structlog
from obspy import Stream, read

from quakemon.base.errors import QuakemonError

log = structlog.get_logger(__name__)

MSNOISE_REQUIREMENT = "msnoise==1.6.5"
MSNOISE_WHEEL = "msnoise-1.6.5-py3-none-any.whl"
#: The only days quakemon reads from the wheel: station -> member path inside the wheel.
NOISE_DAYS: dict[str, str] = {
    "UV05": "msnoise/test/data/2010/UV05/HHZ.D/YA.UV05.00.HHZ.D.2010.244",
    "UV10": "msnoise/test/data/2010/UV10/HHZ.D/YA.UV10.00.HHZ.D.2010.244",
}

#: The wheel's station list (``NET.STA,X,Y,altitude``: UTM easting and northing in m, altitude in m).
STATIONS_CSV = "msnoise/test/extra/stations.csv"


def cache_dir() -> Path:
    """The user cache folder for fetched data (created on demand by the callers that write to it)."""
    if os.environ.get("QUAKEMON_CACHE"):
        return Path(os.environ["QUAKEMON_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "quakemon"


def fetch_wheel(cache: Path | None = None, timeout_s: float = 300.0) -> Path:
    """The msnoise wheel in the cache, downloaded by name with pip (no dependencies) when it is not there yet."""
    return fetch_package_wheel(MSNOISE_REQUIREMENT, MSNOISE_WHEEL, cache, timeout_s)


def fetch_package_wheel(requirement: str, wheel_name: str, cache: Path | None = None,
                        timeout_s: float = 300.0) -> Path:
    """Wheel `wheel_name` in the cache's ``wheels`` folder, fetched with ``pip download --no-deps requirement``
    when it is not there yet."""
    folder = (cache or cache_dir()) / "wheels"
    wheel = folder / wheel_name
    if wheel.is_file():
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    log.info("wheel_fetch", requirement=requirement, folder=str(folder))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", requirement,
           "-d", str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise QuakemonError(f"pip download {requirement} did not finish in {timeout_s:.0f} s") from None
    if proc.returncode != 0 or not wheel.is_file():
        raise QuakemonError(f"pip download {requirement} failed (rc {proc.returncode}): "
                            f"{proc.stderr.strip()[-500:]}")
    return wheel


def day_path(station: str, cache: Path | None = None, wheel: Path | None = None) -> Path:
    """The MiniSEED file of one noise day (UV05 or UV10), extracted from the wheel into the cache if needed."""
    if station not in NOISE_DAYS:
        raise QuakemonError(f"noise day {station!r}: only {sorted(NOISE_DAYS)} may be used")
    cache = cache or cache_dir()
    member = NOISE_DAYS[station]
    out = cache / "noise_days" / Path(member).name
    if out.is_file():
        return out
    wheel = wheel or fetch_wheel(cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise QuakemonError(f"{wheel} has no {member}") from None
        tmp = out.with_suffix(".part")
        with zf.open(info) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.replace(out)
    log.info("noise_day_extracted", station=station, path=str(out), bytes=out.stat().st_size)
    return out


def load_day(station: str, cache: Path | None = None, wheel: Path | None = None) -> Stream:
    """One station's day of continuous vertical data (merged, gaps left as separate traces)."""
    st = read(str(day_path(station, cache, wheel)))
    st.merge(method=1, fill_value=None)
    st = st.split()
    st.sort(keys=["starttime"])
    return st


def load_days(stations: tuple[str, ...] = ("UV05", "UV10"), cache: Path | None = None) -> dict[str, Stream]:
    """{station: Stream} for the given noise days."""
    return {s: load_day(s, cache) for s in stations}


def other_day(station: str) -> str:
    """The day not trained on when training on `station` (UV05 <-> UV10)."""
    if station not in NOISE_DAYS:
        raise QuakemonError(f"noise day {station!r}: only {sorted(NOISE_DAYS)} may be used")
    return next(s for s in NOISE_DAYS if s != station)


def station_coordinates(station: str, wheel: Path | None = None) -> tuple[float, float, float]:
    """(UTM easting m, UTM northing m, altitude m) of UV05 or UV10, from the wheel's station list; other rows of
    the list are not returned."""
    if station not in NOISE_DAYS:
        raise QuakemonError(f"noise day {station!r}: only {sorted(NOISE_DAYS)} may be used")
    wheel = wheel or fetch_wheel()
    with zipfile.ZipFile(wheel) as zf:
        try:
            text = zf.read(STATIONS_CSV).decode("utf-8")
        except KeyError:
            raise QuakemonError(f"{wheel} has no {STATIONS_CSV}") from None
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if fields[0] == f"YA.{station}":
            if len(fields) != 4:
                raise QuakemonError(f"{STATIONS_CSV}: expected NET.STA,X,Y,altitude, got {line!r}")
            return float(fields[1]), float(fields[2]), float(fields[3])
    raise QuakemonError(f"{STATIONS_CSV} in {wheel} has no row for YA.{station}")
