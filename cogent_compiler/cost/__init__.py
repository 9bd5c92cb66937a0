"""Hardware, network and latency models.

``profile`` (the measured-profile file), ``predictor`` (fits and the
profile-backed compute model) and ``profiler`` (measuring one) are imported
from their modules; the profiler pulls in torch and TVM when it runs.
``link`` measures the device–edge link with the runtime's protocol and reads
and writes link profiles.
"""

from __future__ import annotations

from cogent_compiler.cost.latency import DEFAULT_GMACS, ComputeCost, ComputeModel, Latency, LatencyModel, Link
from cogent_compiler.cost.link import LINK_SCHEMA, LinkProfile, LinkSample, load_link_profile, measure_link, save_link_profile
from cogent_compiler.cost.predictor import ProfileComputeModel, fit_profile
from cogent_compiler.cost.profile import SCHEMA, Profile, Sample, load_profile, save_profile
from cogent_compiler.cost.units import parse_bandwidth, parse_duration

__all__ = [
    "DEFAULT_GMACS", "ComputeCost", "ComputeModel", "Latency", "LatencyModel", "Link", "parse_bandwidth", "parse_duration",
    "SCHEMA", "Profile", "Sample", "load_profile", "save_profile", "ProfileComputeModel", "fit_profile",
    "LINK_SCHEMA", "LinkProfile", "LinkSample", "load_link_profile", "measure_link", "save_link_profile",
]
