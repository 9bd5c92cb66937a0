"""Lower a (sub)program to a TVM Relax executable for a target.

Import: torch ``ExportedProgram`` through ``from_exported_program``, ONNX
through ``from_onnx``; parameters are kept as inputs and detached, so the
artifact is the code (``model.so``) plus the weights (``params.npz``, plain
arrays, no pickle).  Then the stages of ``pipeline`` (``CPU_STAGES``,
``CUDA_STAGES``): ``prepare`` (decompose, layout, lift parameter transforms,
legalize, fuse), ``transform_params`` (weight-only work done once here, so
``params.npz`` holds the transformed weights), ``schedule`` (a MetaSchedule
database if given, then Cogent's CPU rule or dlight's GPU rules) and build
(``tvm.compile`` with the lowering-only ``default_build`` pipeline).  Link: the
host compiler, or a cross compiler for ``arm``; CUDA kernels are compiled to
fatbins with ``nvcc``.

``llvm`` is compiled for this machine's CPU (``mcpu`` from LLVM's host
detection): without it LLVM emits SSE2 only.
``compile_program(..., cpu_schedules=False)`` compiles CPU targets with TVM
0.27's default pipeline only (generic ``llvm``, no fusion, no schedules), the
untuned baseline ``benchmarks/backends.py`` compares against.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# the CPU schedule rule lives in ``pipeline``; these names stay importable from here
from cogent_compiler.backends.pipeline import CPU_SCHEDULE, CPUSchedule, _first_line, cpu_default_schedules, schedule_cpu_primfunc
from cogent_compiler.backends.targets import TargetSpec
from cogent_compiler.errors import BackendError

__all__ = ["CompiledModule", "CPUSchedule", "CPU_SCHEDULE", "compile_program", "cpu_default_schedules", "schedule_cpu_primfunc", "tvm_target_for", "LIBRARY_NAME", "PARAMS_NAME"]

log = logging.getLogger(__name__)

LIBRARY_NAME = "model.so"
PARAMS_NAME = "params.npz"


@dataclass(frozen=True)
class CompiledModule:
    """Files written by ``compile_program`` (names relative to its ``out_dir``)."""

    library: str
    params: str | None
    num_params: int
    compile_s: float
    kernels: tuple[str, ...] = ()
    #: the pipeline stages that produced ``library`` (``pipeline.CPU_STAGES``/``CUDA_STAGES``), for the report
    stages: tuple[str, ...] = ()
    #: which runtime loads ``library``: ``tvm`` (a relax VM library) or ``onnxruntime`` (an ONNX model)
    backend: str = "tvm"
    #: (kernels that had a tuning record, kernels) when compiled with a database
    tuned_kernels: tuple[int, int] | None = None


def _import(program: Any, kind: str) -> Any:
    if kind == "torch":
        from tvm.relax.frontend.torch import from_exported_program

        return from_exported_program(program, keep_params_as_input=True)
    if kind == "onnx":
        from tvm.relax.frontend.onnx import from_onnx

        return from_onnx(program, keep_params_in_input=True)
    raise BackendError(f"cannot lower a {kind!r} program; expected torch or onnx")


def _modules(mod: Any) -> Iterator[Any]:
    yield mod
    for m in mod.imports:
        yield from _modules(m)


def precompile_cuda(executable: Any, target: TargetSpec, out_dir: Path) -> tuple[str, ...]:
    """Compile the executable's CUDA kernels to fatbins with nvcc; return their bundle paths.

    TVM 0.27 stores CUDA modules as source and compiles them when the library
    is loaded, which would need nvcc or NVRTC on the edge.  Instead each
    source is compiled here (SASS for the target's architecture plus PTX, so
    newer GPUs can JIT it) and saved as ``kernels/<sha256 of source>.fatbin``;
    the runtime hands TVM the matching fatbin when it asks for a compile.
    """
    from tvm.support import nvcc

    if shutil.which("nvcc") is None:
        raise BackendError("target cuda needs nvcc on the PATH to compile kernels; install the CUDA toolkit or choose --target ...,llvm")
    sm = str(target.tvm["arch"]).removeprefix("sm_")
    arch = ["-gencode", f"arch=compute_{sm},code=sm_{sm}", "-gencode", f"arch=compute_{sm},code=compute_{sm}"]
    paths = []
    for m in _modules(executable.mod):
        if m.kind != "cuda":
            continue
        code = m.inspect_source()
        digest = hashlib.sha256(code.encode()).hexdigest()
        try:
            with target.tvm_target():  # nvcc's helper reads the compute version from the current target
                fatbin = nvcc.compile_cuda(code, target_format="fatbin", arch=arch, compiler="nvcc")
        except Exception as e:
            raise BackendError(f"nvcc failed on the generated CUDA kernels for {target.label}: {_first_line(e)}") from e
        rel = f"kernels/{digest}.fatbin"
        (out_dir / "kernels").mkdir(exist_ok=True)
        (out_dir / rel).write_bytes(bytes(fatbin))
        paths.append(rel)
    return tuple(paths)


def tvm_target_for(target: TargetSpec) -> Any:
    """The TVM target to compile ``target`` with: ``llvm`` gets this machine's CPU as ``mcpu``.

    ``llvm`` means this x86 CPU (see ``resolve_target``); without ``mcpu`` LLVM
    assumes a generic x86-64 and emits SSE2 code only, several times slower.
    """
    import tvm
    from tvm.target import codegen

    if target.kind == "llvm" and "mcpu" not in target.tvm and "mtriple" not in target.tvm:
        spec = {**dict(target.tvm), "mcpu": str(codegen.llvm_get_system_cpu())}
        return tvm.target.Target(spec, host=dict(target.host) if target.host else None)
    return target.tvm_target()


def compile_program(
    program: Any,
    kind: str,
    target: TargetSpec,
    out_dir: Path,
    *,
    name: str = "model",
    cpu_schedules: bool = True,
    database: Any = None,
    layout: str | None = None,
) -> CompiledModule:
    """Compile ``program`` for ``target`` into ``out_dir/model.so`` and ``out_dir/params.npz``.

    The library's ``main`` takes the program's inputs followed by the
    (transformed) parameters in the order of the ``p0, p1, ...`` keys of the
    params file.  ``database``: a MetaSchedule database whose records
    ``schedule`` applies before the default rules.  ``layout``: the conv2d
    layout (``"NCHW"``, ``"NHWC"``; ``None`` for the target's default,
    ``pipeline.DEFAULT_LAYOUT``).  ``cpu_schedules=False`` compiles CPU
    targets with TVM's default pipeline only (generic ``llvm``, no Cogent
    stages), for comparison; it takes neither a database nor a layout.
    Raises ``BackendError`` with the first line of TVM's message on failure.
    """
    import tvm
    from tvm import relax

    from cogent_compiler.backends import pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = target.device == "cpu" and not cpu_schedules
    if baseline and (database is not None or layout is not None):
        raise BackendError(f"{name}: cpu_schedules=False compiles with TVM's default pipeline only; it takes no database or layout")
    t0 = time.perf_counter()
    try:
        mod = _import(program, kind)
    except Exception as e:
        raise BackendError(f"{name}: TVM could not import the {kind} program: {_first_line(e)}") from e
    mod, params = relax.frontend.detach_params(mod)
    weights = [p.numpy() for p in params.get("main", [])]
    if target.cross_compiler and shutil.which(target.cross_compiler) is None:
        raise BackendError(
            f"target {target.label}: cross compiler {target.cross_compiler} not found; "
            "install it (Debian: apt-get install g++-aarch64-linux-gnu)"
        )
    stages: tuple[str, ...] = ()
    tuned = None
    try:
        if baseline:
            executable = tvm.compile(mod, target=target.tvm_target())
        else:
            tvm_target = tvm_target_for(target)
            # pipeline.lower's stages, with the database's coverage counted on the prepared kernels
            mod = pipeline.prepare(mod, tvm_target, layout=layout)
            mod, weights = pipeline.transform_params(mod, weights)
            if database is not None:
                from cogent_compiler.backends.tuning import database_hits

                tuned = database_hits(mod, tvm_target, database)
            executable = pipeline.build(pipeline.schedule(mod, tvm_target, database=database), tvm_target)
            stages = pipeline.stages_for(tvm_target)
    except BackendError:
        raise
    except Exception as e:
        raise BackendError(f"{name}: TVM failed to compile for {target.label}: {_first_line(e)}") from e
    kernels = precompile_cuda(executable, target, out_dir) if target.kind == "cuda" else ()
    lib_path = out_dir / LIBRARY_NAME
    try:
        if target.cross_compiler:
            executable.export_library(str(lib_path), fcompile=tvm.support.cc.cross_compiler(target.cross_compiler))
        else:
            executable.export_library(str(lib_path))
    except Exception as e:
        raise BackendError(f"{name}: linking {lib_path.name} for {target.label} failed: {_first_line(e)}") from e
    params_name = None
    if weights:
        params_name = PARAMS_NAME
        np.savez(out_dir / PARAMS_NAME, **{f"p{i}": w for i, w in enumerate(weights)})
    dt = time.perf_counter() - t0
    log.info("%s: compiled for %s in %.1fs (%d parameters)", name, target.label, dt, len(weights))
    return CompiledModule(LIBRARY_NAME, params_name, len(weights), dt, kernels, stages, tuned_kernels=tuned)


