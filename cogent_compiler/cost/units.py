"""Parsing the units users write on the command line: ``20mbit``, ``10ms``."""

from __future__ import annotations

import re

from cogent_compiler.errors import CogentError

__all__ = ["parse_bandwidth", "parse_duration"]

_RATE = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9}
_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_bandwidth(text: str) -> float:
    """``"20mbit"`` -> 20e6 bits per second.  Accepts bit/kbit/mbit/gbit (or …bps)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z/]*)\s*", str(text))
    unit = (m.group(2).lower().replace("/s", "bps") if m else "") or "mbit"
    if not m or unit not in _RATE or float(m.group(1)) <= 0:
        raise CogentError(f"bandwidth {text!r} is not understood; write a positive rate such as 20mbit, 500kbit or 1gbit")
    return float(m.group(1)) * _RATE[unit]


def parse_duration(text: str, *, default_unit: str = "ms") -> float:
    """``"10ms"`` -> 0.010 seconds.  Accepts us/ms/s/m/min/h; a bare number uses ``default_unit``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = (m.group(2).lower() if m else "") or default_unit
    if not m or unit not in _TIME:
        raise CogentError(f"duration {text!r} is not understood; write a number with a unit such as 10ms, 2s or 20m")
    return float(m.group(1)) * _TIME[unit]
