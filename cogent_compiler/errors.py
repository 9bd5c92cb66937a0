"""The error hierarchy: one root, one subclass per stage.

Every message names the thing at fault (file, layer, op, tensor), the expected
and the actual value, and what to do; the CLI prints it as one line.
"""

from __future__ import annotations

__all__ = [
    "CogentError",
    "FrontendError",
    "IRError",
    "PassError",
    "IllegalPlanError",
    "PlanError",
    "BackendError",
    "BundleError",
    "RuntimeFailure",
    "ProtocolError",
    "TamperedBundleError",
    "ProfileError",
    "ProfileFormatError",
    "ProfileTargetError",
    "MissingFitError",
    "LinkError",
    "LinkFormatError",
    "PeerUnreachableError",
    "DataError",
]


class CogentError(Exception):
    """Root of every error Cogent raises on purpose."""


class FrontendError(CogentError):
    """A model file or factory could not be loaded or traced."""


class IRError(CogentError):
    """The graph IR is malformed (a verifier failure)."""


class PassError(CogentError):
    """A pass could not be applied."""


class IllegalPlanError(PassError):
    """A plan's decision is invalid for the graph (unknown group, bad ratio, bad cut)."""


class PlanError(CogentError):
    """Planning failed (no valid cut, bad conditions)."""


class BackendError(CogentError):
    """Lowering or compiling a subgraph failed."""


class BundleError(CogentError):
    """Writing a bundle failed."""


class RuntimeFailure(CogentError):
    """The device or edge runtime failed."""


class ProtocolError(RuntimeFailure):
    """A malformed frame arrived on the wire."""


class TamperedBundleError(RuntimeFailure):
    """A bundle file's sha256 does not match its manifest."""


class ProfileError(CogentError):
    """A hardware profile could not be measured, read, written or used."""


class ProfileFormatError(ProfileError):
    """A file is not a Cogent profile, or one of a schema version this release does not read."""


class ProfileTargetError(ProfileError):
    """A profile measured for one target is used for another."""


class MissingFitError(ProfileError):
    """A profile has no fit for an op kind the model uses; the target must be re-profiled."""


class LinkError(ProfileError):
    """A network link could not be measured, or a link profile could not be read or used."""


class LinkFormatError(LinkError):
    """A file is not a Cogent link profile, or one of a schema version this release does not read."""


class PeerUnreachableError(LinkError):
    """The edge to measure a link to cannot be reached."""


class DataError(CogentError):
    """A data set for measuring or recovering accuracy could not be loaded or does not fit the model."""
