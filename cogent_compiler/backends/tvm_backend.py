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
``compile_program(..., kernel_info=True)`` also writes what a remote profiler
needs to time each kernel on its own (``kernels.json``, ``kernels.so``; see
``cost.remote_worker``); bundles do not ask for them.
"""

from __future__ import annotations

import hashlib
import json
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

__all__ = ["CompiledModule", "CPUSchedule", "CPU_SCHEDULE", "compile_program", "cpu_default_schedules", "schedule_cpu_primfunc", "tvm_target_for", "kernel_calls",
           "LIBRARY_NAME", "PARAMS_NAME", "KERNELS_INFO_NAME", "KERNEL_LIBRARY_NAME"]

log = logging.getLogger(__name__)

LIBRARY_NAME = "model.so"
PARAMS_NAME = "params.npz"
#: ``compile_program(kernel_info=True)``: each kernel call of ``main`` with its parameters' shapes and dtypes
KERNELS_INFO_NAME = "kernels.json"
#: ``compile_program(kernel_info=True)``: the kernels alone, as a library whose own functions they are
KERNEL_LIBRARY_NAME = "kernels.so"


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


def kernel_calls(mod: Any) -> list[dict[str, Any]]:
    """The kernel calls of ``mod``'s ``main`` in call order: ``{"kernel": name, "params": [{"shape", "dtype"}, ...]}``.

    ``mod`` is a scheduled Relax module (before build).  ``params`` are the
    PrimFunc's parameters in order, outputs included (destination passing);
    a scalar parameter has ``"shape": null``, and so has a buffer of symbolic
    shape.  Without a ``main`` whose bindings call kernels, every PrimFunc is
    listed once, in module order.
    """
    import tvm
    from tvm import relax, tirx

    call_ops = {tvm.ir.Op.get("relax.call_tir"), tvm.ir.Op.get("relax.call_tir_inplace")}

    def params(func: Any) -> list[dict[str, Any]]:
        out = []
        for p in func.params:  # TVM 0.27: a tensor parameter is itself a ``tirx.Buffer``
            if not isinstance(p, tirx.Buffer):
                out.append({"shape": None, "dtype": str(p.dtype)})
                continue
            dims = [int(d) if isinstance(d, tirx.IntImm) else None for d in p.shape]
            out.append({"shape": None if None in dims else dims, "dtype": str(p.dtype)})
        return out

    prims = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    order: list[str] = []
    main = next((f for gv, f in mod.functions_items() if gv.name_hint == "main" and isinstance(f, relax.Function)), None)
    if main is not None and isinstance(main.body, relax.SeqExpr):
        for block in main.body.blocks:
            for binding in block.bindings:
                value = getattr(binding, "value", None)
                if isinstance(value, relax.Call) and value.op in call_ops and isinstance(value.args[0], relax.GlobalVar):
                    if value.args[0].name_hint in prims:
                        order.append(value.args[0].name_hint)
    return [{"kernel": name, "params": params(prims[name])} for name in (order or list(prims))]


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
    kernel_info: bool = False,
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
    if baseline and (database is not None or layout is not None or kernel_info):
        raise BackendError(f"{name}: cpu_schedules=False compiles with TVM's default pipeline only; it takes no database, layout or kernel_info")
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
            mod = pipeline.schedule(mod, tvm_target, database=database)
            if kernel_info:
                (out_dir / KERNELS_INFO_NAME).write_text(json.dumps({"calls": kernel_calls(mod)}, indent=1) + "\n")
            executable = pipeline.build(mod, tvm_target)
            stages = pipeline.stages_for(tvm_target)
    except BackendError:
        raise
    except Exception as e:
        raise BackendError(f"{name}: TVM failed to compile for {target.label}: {_first_line(e)}") from e
    kernels = precompile_cuda(executable, target, out_dir) if target.kind == "cuda" else ()
    # the VM executable imports one library module holding every kernel (and, for cuda, the device code)
    exports = [(executable, out_dir / LIBRARY_NAME)] + ([(executable.mod.imports[0], out_dir / KERNEL_LIBRARY_NAME)] if kernel_info else [])
    for module, lib_path in exports:
        try:
            if target.cross_compiler:
                module.export_library(str(lib_path), fcompile=tvm.support.cc.cross_compiler(target.cross_compiler))
            else:
                module.export_library(str(lib_path))
        except Exception as e:
            raise BackendError(f"{name}: linking {lib_path.name} for {target.label} failed: {_first_line(e)}") from e
    params_name = None
    if weights:
        params_name = PARAMS_NAME
        np.savez(out_dir / PARAMS_NAME, **{f"p{i}": w for i, w in enumerate(weights)})
    dt = time.perf_counter() - t0
    log.info("%s: compiled for %s in %.1fs (%d parameters)", name, target.label, dt, len(weights))
    return CompiledModule(LIBRARY_NAME, params_name, len(weights), dt, kernels, stages, tuned_kernels=tuned)


