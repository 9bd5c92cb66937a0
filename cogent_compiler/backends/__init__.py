"""Backends: lowering a (sub)program to an artifact for a target."""

from __future__ import annotations

from cogent_compiler.backends.targets import TARGET_NAMES, TargetSpec, resolve_target

__all__ = ["TARGET_NAMES", "TargetSpec", "resolve_target", "compile_program", "CompiledModule"]


def __getattr__(name: str):  # TVM is imported only when something is compiled
    if name in ("compile_program", "CompiledModule"):
        from cogent_compiler.backends import tvm_backend

        return getattr(tvm_backend, name)
    raise AttributeError(name)
