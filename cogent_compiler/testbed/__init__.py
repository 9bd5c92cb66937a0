"""Emulating a device-edge deployment on one Linux machine, and measuring bundles on it."""

from __future__ import annotations

from cogent_compiler.testbed.emulation import LinkSpec, Testbed, TestbedError, cleanup_stale, require_root

__all__ = ["LinkSpec", "Testbed", "TestbedError", "cleanup_stale", "require_root"]
