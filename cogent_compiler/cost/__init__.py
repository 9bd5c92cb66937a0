"""Hardware, network and latency models."""

from __future__ import annotations

from cogent_compiler.cost.latency import DEFAULT_GMACS, ComputeModel, Latency, LatencyModel, Link
from cogent_compiler.cost.units import parse_bandwidth, parse_duration

__all__ = ["DEFAULT_GMACS", "ComputeModel", "Latency", "LatencyModel", "Link", "parse_bandwidth", "parse_duration"]
