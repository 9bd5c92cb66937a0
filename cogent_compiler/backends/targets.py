"""Compilation targets by the names users write: ``llvm``, ``arm``, ``cuda[:sm_XX]``.

A ``TargetSpec`` is plain data (TVM's target is built from it on demand), so a
plan, a manifest or a cache key can carry it.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cogent_compiler.errors import BackendError

__all__ = ["TargetSpec", "resolve_target", "TARGET_NAMES"]

TARGET_NAMES = ("llvm", "arm", "cuda")
_ALIASES = {"llvm": "llvm", "x86": "llvm", "x86_64": "llvm", "host": "llvm", "arm": "arm", "aarch64": "arm", "arm64": "arm", "cuda": "cuda", "gpu": "cuda"}


@dataclass(frozen=True)
class TargetSpec:
    """What to compile for and how to link it.

    ``kind`` is the user-facing name (``llvm``, ``arm``, ``cuda``); ``tvm`` and
    ``host`` are TVM target dicts; ``device`` is where the runtime allocates
    tensors (``cpu`` or ``cuda``); ``cross_compiler`` links the shared library
    when the target is not this machine; ``arch`` is the machine the library
    runs on (``x86_64``, ``aarch64``).
    """

    kind: str
    tvm: Mapping[str, Any]
    device: str
    arch: str
    host: Mapping[str, Any] | None = None
    cross_compiler: str | None = None
    label: str = field(default="")

    def tvm_target(self) -> Any:
        import tvm

        return tvm.target.Target(dict(self.tvm), host=dict(self.host) if self.host else None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.label or self.kind,
            "kind": self.kind,
            "device": self.device,
            "arch": self.arch,
            "tvm": dict(self.tvm),
            **({"host": dict(self.host)} if self.host else {}),
        }


def resolve_target(text: str) -> TargetSpec:
    """Parse a target name.  ``cuda:sm_90`` picks the GPU architecture (default ``sm_80``;
    nvcc embeds PTX beside the machine code, so newer GPUs JIT it)."""
    base, _, opt = str(text).strip().lower().partition(":")
    kind = _ALIASES.get(base)
    if kind is None:
        raise BackendError(f"target {text!r} is unknown; use one of llvm (this x86 CPU), arm (aarch64 + NEON) or cuda[:sm_XX]")
    host_arch = platform.machine() or "x86_64"
    if kind == "llvm":
        if opt:
            raise BackendError(f"target {text!r}: llvm takes no option; write llvm")
        return TargetSpec("llvm", {"kind": "llvm"}, "cpu", host_arch, label="llvm")
    if kind == "arm":
        if opt:
            raise BackendError(f"target {text!r}: arm takes no option; write arm")
        cross = None if host_arch == "aarch64" else "aarch64-linux-gnu-g++"
        return TargetSpec(
            "arm",
            {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
            "cpu",
            "aarch64",
            cross_compiler=cross,
            label="arm",
        )
    arch = opt or "sm_80"
    if not arch.startswith("sm_") or not arch[3:].isdigit():
        raise BackendError(f"target {text!r}: the CUDA architecture must look like sm_80 or sm_90")
    return TargetSpec("cuda", {"kind": "cuda", "arch": arch}, "cuda", host_arch, host={"kind": "llvm"}, label=f"cuda:{arch}")
