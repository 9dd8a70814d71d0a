"""Go-style durations ("1h30m", "500ms") and byte sizes ("1MiB")."""

from __future__ import annotations

import re

from ..errors import InvalidValue

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration into seconds. "0" alone needs no unit; every other number does."""
    if not isinstance(text, str):
        raise InvalidValue(f"duration must be a string like '30s', got {text!r}")
    s = text.strip()
    sign = 1.0
    if s and s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise InvalidValue(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        match = _PART.match(s, pos)
        if not match:
            raise InvalidValue(
                f"invalid duration {text!r} (expected a number with a unit: ns, us, ms, s, m, h; e.g. '1h30m')"
            )
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Format seconds as Go's time.Duration.String() does, at microsecond precision."""
    micros = round(seconds * 1_000_000)
    if micros == 0:
        return "0s"
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    if micros < 1_000:
        return f"{sign}{micros}µs"
    if micros < 1_000_000:
        return f"{sign}{_trim(micros, 1_000)}ms"
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    text = f"{_trim(rest, 1_000_000)}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _trim(value: int, unit: int) -> str:
    """value/unit as a decimal without trailing zeros ("1.5", "2")."""
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|K|M|G)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}


def parse_size(text: str) -> int:
    """Parse a byte size: plain bytes, or KiB/MiB/GiB (KB/MB/GB are decimal)."""
    match = _SIZE.match(str(text))
    if not match:
        raise InvalidValue(f"invalid size {text!r} (expected bytes, or a number with KiB, MiB or GiB)")
    unit = (match.group(2) or "b").lower()
    return int(match.group(1)) * _SIZE_UNITS[unit]
