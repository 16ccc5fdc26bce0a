"""The absolute sample grid: exact rational sampling rates, grid indices and their times, SEED id parts.

Sample k of a stream at rate r sits at t = k / r seconds since the epoch. Every layer that places samples in
time (archive reading, buffers, windows) uses these helpers, so all of them agree to the nanosecond.
"""

from __future__ import annotations

from fractions import Fraction

#: Channel component code -> component letter of the input contract (1/2 horizontals map onto N/E).
COMPONENT_ALIASES = {"Z": "Z", "N": "N", "E": "E", "1": "N", "2": "E"}

_NS = 1_000_000_000


def rate_fraction(sampling_rate: float) -> Fraction:
    """The sampling rate as an exact fraction (MiniSEED rates are factor/multiplier rationals)."""
    return Fraction(float(sampling_rate)).limit_denominator(1_000_000)


def grid_index(t_ns: int, rate: Fraction) -> int:
    """Nearest sample index on the absolute grid t = k / rate (halves round up). Exact integer arithmetic."""
    num, den = rate.numerator, rate.denominator
    return (2 * t_ns * num + den * _NS) // (2 * den * _NS)


def grid_time_ns(index: int, rate: Fraction) -> int:
    """Time in integer nanoseconds of grid sample `index` (nearest ns)."""
    num, den = rate.numerator, rate.denominator
    return (2 * index * den * _NS + num) // (2 * num)


def split_seed_id(seed_id: str) -> tuple[str, str, str] | None:
    """"NET.STA.LOC.CHA" -> ("NET.STA.LOC", instrument "CH"[:2], component letter), or None if unusable."""
    parts = seed_id.split(".")
    if len(parts) != 4 or len(parts[3]) != 3:
        return None
    comp = COMPONENT_ALIASES.get(parts[3][2].upper())
    if comp is None:
        return None
    return ".".join(parts[:3]), parts[3][:2], comp
