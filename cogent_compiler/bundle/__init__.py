"""Writing bundles: container build contexts for the two halves."""

from __future__ import annotations

from cogent_compiler.bundle.runtime_files import stage_runtime
from cogent_compiler.bundle.writer import DEFAULT_BASE_IMAGE, EDGE_PORT, write_compose, write_half

__all__ = ["DEFAULT_BASE_IMAGE", "EDGE_PORT", "stage_runtime", "write_compose", "write_half"]
