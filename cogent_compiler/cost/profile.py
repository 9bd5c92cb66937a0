"""The hardware profile file: op timings measured on one target, and the fits made from them.

A profile is JSON (``"schema": "cogent-profile/1"``)::

    {
      "schema": "cogent-profile/1",
      "target": "llvm",                 # the Cogent target label it was measured for
      "tvm_target": "{...}",            # TVM's target, as compiled (mcpu included)
      "machine": {...},                 # testbed.machine_info() + cpu_quota, threads, llvm_mcpu
      "tvm": "0.27.0.post1",
      "date": "2026-11-26T13:40:00+00:00",
      "samples": [{"op": "conv2d", "attrs": {...}, "macs": ..., "in_bytes": ..., "out_bytes": ...,
                   "param_bytes": ..., "ms": ..., "runs": ..., "key": ..., "wall_ms": ..., "kernels": {...}}],
      "fits": {"conv2d": {"ms_per_mac": ..., "ms_per_byte": ..., "ms_fixed": ..., "samples": ..., ...}},
      "kernel_overhead_ms": 0.002
    }

``ms`` is the time of the layer's own kernels (median of ``runs``; the mean
over whole quota periods under a CPU quota), without the layout transforms
that a lone layer needs at its boundary; ``wall_ms`` is the whole call.
``fits`` and ``kernel_overhead_ms`` are written by ``predictor.fit_profile``.

This module is plain Python (no torch, no tvm): a planner on any machine
reads profiles measured elsewhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cogent_compiler.errors import ProfileFormatError, ProfileTargetError

__all__ = ["SCHEMA", "Sample", "Profile", "load_profile", "save_profile", "target_kind"]

SCHEMA = "cogent-profile/1"


@dataclass(frozen=True)
class Sample:
    """One measured reference layer: the IR features of its main op and its time."""

    op: str
    attrs: Mapping[str, Any]
    macs: int
    in_bytes: int
    out_bytes: int
    param_bytes: int
    ms: float
    runs: int
    #: the reference layer's name (``profiler.LayerSpec.key``): what a resumed run skips
    key: str = ""
    #: the whole call, boundary layout transforms and VM overhead included
    wall_ms: float | None = None
    #: every kernel of the call and its time (ms)
    kernels: Mapping[str, float] = field(default_factory=dict)

    @property
    def bytes_moved(self) -> int:
        return self.in_bytes + self.out_bytes + self.param_bytes

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "op": self.op, "attrs": dict(self.attrs), "macs": self.macs, "in_bytes": self.in_bytes,
            "out_bytes": self.out_bytes, "param_bytes": self.param_bytes, "ms": self.ms, "runs": self.runs,
        }
        if self.key:
            out["key"] = self.key
        if self.wall_ms is not None:
            out["wall_ms"] = self.wall_ms
        if self.kernels:
            out["kernels"] = dict(self.kernels)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Sample:
        return cls(
            op=str(d["op"]), attrs=dict(d.get("attrs") or {}), macs=int(d["macs"]), in_bytes=int(d["in_bytes"]),
            out_bytes=int(d["out_bytes"]), param_bytes=int(d["param_bytes"]), ms=float(d["ms"]), runs=int(d["runs"]),
            key=str(d.get("key", "")), wall_ms=float(d["wall_ms"]) if d.get("wall_ms") is not None else None,
            kernels={str(k): float(v) for k, v in (d.get("kernels") or {}).items()},
        )


@dataclass(frozen=True)
class Profile:
    """A measured profile of one target (see the module doc for the file format)."""

    target: str
    tvm_target: str
    machine: Mapping[str, Any]
    tvm: str
    date: str
    samples: tuple[Sample, ...] = ()
    fits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    kernel_overhead_ms: float = 0.0
    schema: str = SCHEMA
    #: which version of ``predictor.fit_profile`` computed ``fits`` (0: none recorded); the predictor refits other versions
    fit_method: int = 0
    #: ``pipeline.SCHEDULE_RULES`` of the compiler that measured it (0: not recorded, before version 2)
    schedule_rules: int = 0

    @property
    def cpu_quota(self) -> float | None:
        q = self.machine.get("cpu_quota")
        return float(q) if q is not None else None

    @property
    def threads(self) -> int | None:
        t = self.machine.get("threads")
        return int(t) if t is not None else None

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(s.key for s in self.samples if s.key)

    def with_samples(self, samples: tuple[Sample, ...]) -> Profile:
        return replace(self, samples=samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "target": self.target, "tvm_target": self.tvm_target, "machine": dict(self.machine),
            "tvm": self.tvm, "date": self.date, "samples": [s.to_json() for s in self.samples],
            "fits": {k: dict(v) for k, v in self.fits.items()}, "kernel_overhead_ms": self.kernel_overhead_ms,
            "fit_method": self.fit_method, "schedule_rules": self.schedule_rules,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], source: str = "profile") -> Profile:
        """Build from parsed JSON; raises ``ProfileFormatError`` naming ``source`` and the bad field."""
        if not isinstance(d, Mapping) or "schema" not in d:
            raise ProfileFormatError(f"{source}: not a Cogent profile (no \"schema\": \"{SCHEMA}\"); "
                                     "measure one with `cogentc profile --target llvm -o FILE`")
        if d["schema"] != SCHEMA:
            raise ProfileFormatError(f"{source}: profile schema {d['schema']!r} is not supported (this cogentc reads {SCHEMA}); "
                                     "re-profile with `cogentc profile`")
        try:
            return cls(
                target=str(d["target"]), tvm_target=str(d["tvm_target"]), machine=dict(d["machine"]), tvm=str(d["tvm"]),
                date=str(d["date"]), samples=tuple(Sample.from_json(s) for s in d["samples"]),
                fits={str(k): dict(v) for k, v in (d.get("fits") or {}).items()},
                kernel_overhead_ms=float(d.get("kernel_overhead_ms", 0.0)), fit_method=int(d.get("fit_method", 0)),
                schedule_rules=int(d.get("schedule_rules", 0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            what = f"field {e.args[0]!r} is missing" if isinstance(e, KeyError) else f"a field is malformed ({e})"
            raise ProfileFormatError(f"{source}: broken {SCHEMA} profile: {what}; re-profile with `cogentc profile`") from e


def target_kind(label: str) -> str:
    """``cuda:sm_80`` -> ``cuda``; the aliases users may write (``x86``, ``gpu``...) -> Cogent's kind."""
    base = str(label).strip().lower().partition(":")[0]
    return {"x86": "llvm", "x86_64": "llvm", "host": "llvm", "aarch64": "arm", "arm64": "arm", "gpu": "cuda"}.get(base, base)


def load_profile(path: str | Path, expect_target: str | None = None) -> Profile:
    """Read a profile; with ``expect_target`` (a target label) refuse one measured for another target.

    Raises ``ProfileFormatError`` (not a profile, unknown schema, broken
    fields) or ``ProfileTargetError``, each naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ProfileFormatError(f"{path}: cannot read the profile ({e.strerror or e}); measure one with `cogentc profile -o {path}`") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ProfileFormatError(f"{path}: not a Cogent profile (not JSON: {e}); measure one with `cogentc profile -o {path}`") from e
    profile = Profile.from_json(data, str(path))
    if expect_target is not None and target_kind(profile.target) != target_kind(expect_target):
        raise ProfileTargetError(
            f"{path}: profile was measured for target {profile.target!r} but is used for {expect_target!r}; "
            f"give a profile measured with `cogentc profile --target {target_kind(expect_target)}`"
        )
    if expect_target is not None and ":" in expect_target and ":" in profile.target and profile.target != expect_target:
        raise ProfileTargetError(f"{path}: profile was measured for {profile.target!r} but is used for {expect_target!r}; re-profile that GPU")
    return profile


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write ``profile`` to ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(profile.to_json(), indent=1) + "\n")
    os.replace(tmp, path)
