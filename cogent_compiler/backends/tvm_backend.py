"""Lower a (sub)program to a TVM Relax executable for a target.

Import: torch ``ExportedProgram`` through ``from_exported_program``, ONNX
through ``from_onnx``; parameters are kept as inputs and detached, so the
artifact is the code (``model.so``) plus the weights (``params.npz``, plain
arrays, no pickle).  Compile: ``tvm.compile`` with TVM's default pipeline for
the target (dlight schedules on CUDA).  Link: the host compiler, or a cross
compiler for ``arm``; CUDA kernels are compiled to fatbins with ``nvcc``.

CPU targets (``llvm``, ``arm``) get default schedules first
(``cpu_default_schedules``; ``compile_program(..., cpu_schedules=False)`` skips
them).  TVM 0.27's CPU pipeline legalizes and fuses but leaves every kernel a
scalar, single-threaded loop nest; the ``zero`` pipeline (LegalizeOps,
AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR) is what the default CPU
pipeline runs already, so alone it changes nothing, and dlight's CPU rules
(GEMV, softmax-like Reduction) made resnet18 slower (Reduction also claims
convolutions).  So one rule of our own, measured on resnet18 and mobilenet_v2
(``benchmarks/backends.py``): every fused kernel with one reduction (conv2d,
matmul, pooling) is tiled with a register block of output channels times a
vector of output columns, accumulates in a local buffer, runs parallel over
its outer spatial loops and computes its epilogue (bias, residual add, ReLU)
per tile; injective kernels run parallel and vectorized.  ``llvm`` is compiled
for this machine's CPU (``mcpu`` from LLVM's host detection): without it LLVM
emits SSE2 only.  Schedules are TIR schedule primitives; a kernel the rule
cannot handle keeps TVM's default lowering.  This is not tuning: MetaSchedule
does better, at minutes to hours per model.
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
    #: which runtime loads ``library``: ``tvm`` (a relax VM library) or ``onnxruntime`` (an ONNX model)
    backend: str = "tvm"


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


@dataclass(frozen=True)
class CPUSchedule:
    """Parameters of the rule-based CPU schedule, per vector width (bits) of the target.

    ``lanes``: float32 lanes in the vector of output columns; ``block``: output
    channels (or rows) per register tile.  Chosen by measuring resnet18 on this
    machine built for AVX-512 (``mcpu=znver5``: 16x16 beat 8x16 and 4x16) and
    for AVX2 (``x86-64-v3``: 8x8 beat 4x8); 128-bit targets (SSE2, NEON — the
    latter unmeasured) use 4 lanes and a block of 8.
    """

    lanes: int
    block: int


CPU_SCHEDULE: dict[int, CPUSchedule] = {512: CPUSchedule(16, 16), 256: CPUSchedule(8, 8), 128: CPUSchedule(4, 8)}


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


def cpu_default_schedules(mod: Any, tvm_target: Any) -> Any:
    """Apply the ``zero`` pipeline and the CPU schedule rules to a Relax module (see the module doc)."""
    from tvm import relax
    from tvm.s_tir import dlight as dl
    from tvm.target import codegen

    width = int(codegen.llvm_get_vector_width(tvm_target))
    params = CPU_SCHEDULE.get(width) or CPU_SCHEDULE[min(CPU_SCHEDULE, key=lambda w: abs(w - width))]

    class _TiledCPU(dl.ScheduleRule):
        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            if target.kind.name != "llvm":
                return None
            return schedule_cpu_primfunc(func, params)

    with tvm_target:
        mod = relax.get_pipeline("zero")(mod)
        # Not dlight's cpu.Reduction/GEMV as fallbacks: Reduction also claims the
        # convolutions ours gives up on and made resnet18 2.5x slower than no schedule.
        mod = dl.ApplyDefaultSchedule(_TiledCPU())(mod)
    return mod


def schedule_cpu_primfunc(func: Any, params: CPUSchedule) -> Any:
    """A schedule for one fused PrimFunc, or ``None`` to leave it to TVM's default lowering.

    Handles functions whose blocks are injective except at most one reduction
    block with plain ``S...SR...R`` loops and static extents.  Every step is a
    checked schedule primitive, so a result computes what ``func`` computes.
    """
    from tvm import s_tir, tirx

    try:
        return _schedule_cpu(s_tir.Schedule(func), params, tirx)
    except Exception as e:  # a ScheduleError: this kernel does not fit the rule
        log.debug("CPU schedule rule skipped a kernel: %s", _first_line(e))
        return None


def _schedule_cpu(sch: Any, params: CPUSchedule, tirx: Any) -> Any:
    from tvm.s_tir.dlight.analysis import get_root_block

    def extent(loop: Any) -> int:
        e = sch.get(loop).extent
        if not isinstance(e, tirx.IntImm):
            raise ValueError("dynamic loop extent")
        return int(e)

    def name(block: Any) -> str:
        return str(sch.get(block).name_hint)

    def is_reduction(block: Any) -> bool:
        return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)

    def divisor(n: int, at_most: int) -> int:
        return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)

    def parallel_vectorize(block: Any) -> None:
        loops = sch.get_loops(block)
        if not loops:
            return
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        n = extent(fused)
        if n >= 2 * params.lanes:
            outer, inner = sch.split(fused, [None, params.lanes])
            sch.parallel(outer)
            sch.vectorize(inner)
        elif n >= 2:
            sch.vectorize(fused)

    def vectorize_innermost(block: Any) -> None:
        loops = sch.get_loops(block)
        if loops and extent(loops[-1]) >= 2:
            inner = loops[-1]
            if extent(inner) > params.lanes:
                inner = sch.split(inner, [None, divisor(extent(inner), params.lanes)])[1]
            sch.vectorize(inner)

    root = get_root_block(sch)
    blocks = sch.get_child_blocks(root)
    outputs = {name(b) for b in sch.get_output_blocks(root)}
    reductions = [b for b in blocks if is_reduction(b)]
    if len(reductions) > 1:
        return None
    # Padding stays its own loop nest: inlined, it puts a bounds check in the
    # innermost loop of the convolution and defeats vectorization.  Producers
    # without a condition (the copy a 1x1 convolution's zero padding leaves) are inlined.
    kept = {name(p) for r in reductions for p in sch.get_producers(r) if _has_condition(sch.get(p).body)}
    kept |= {name(r) for r in reductions} | outputs
    for b in blocks:
        if name(b) not in kept:
            try:
                sch.compute_inline(b)
            except Exception:  # not inlinable (e.g. read by several kernels): stays
                pass
    blocks = sch.get_child_blocks(root)
    if not reductions:
        for b in blocks:
            parallel_vectorize(b)
        return sch

    (red,) = [b for b in blocks if is_reduction(b)]
    loops = sch.get_loops(red)
    realize = _sblock_realize(sch, red)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    if len(loops) != len(realize.iter_values) or any(not v.same_as(lv) for v, lv in zip(realize.iter_values, loop_vars)):
        return None
    kinds = ["R" if iv.iter_type == tirx.IterVar.CommReduce else "S" for iv in sch.get(red).iter_vars]
    n_s = kinds.count("S")
    if n_s == 0 or kinds != ["S"] * n_s + ["R"] * (len(kinds) - n_s):
        return None
    spatial, reduce = list(loops[:n_s]), list(loops[n_s:])
    producer_names = {name(p) for p in sch.get_producers(red) if name(p) in kept}
    producers = [b for b in blocks if name(b) in producer_names]
    consumers = [b for b in blocks if name(b) not in producer_names and name(b) != name(red)]
    for p in producers:
        parallel_vectorize(p)

    local = sch.cache_write(red, 0, "local")
    # register-block axis: prefer one the vector's streamed input does not depend on
    # (output channels of a convolution: each input vector is reused for all of them),
    # else the innermost other spatial loop (rows of a depthwise convolution).
    block_axis = _block_axis(sch, red, spatial)
    # vector axis: the innermost spatial loop (output columns in NCHW, output features in
    # matmul), split by the largest divisor up to the vector lanes.  Not rows and columns
    # fused for small maps: tiles that cross rows came out wrong after reverse_compute_at
    # (measured on mobilenet_v2), and whole-row tiles were slower.
    v = spatial[-1]
    nv = extent(v)
    v_outer, v_inner = (None, None)
    if nv >= 2:
        width = divisor(nv, params.lanes)
        v_outer, v_inner = sch.split(v, [None, width]) if nv > width else (None, v)
    b_inner = None
    if block_axis is not None and params.block > 1:
        nb = divisor(extent(block_axis), params.block)
        if nb > 1:
            i = spatial.index(block_axis)
            b_outer, b_inner = sch.split(block_axis, [None, nb])
            spatial[i] = b_outer
    outer = spatial[:-1] + ([v_outer] if v_outer is not None else [])
    if not outer:
        return None
    sch.reorder(*outer, *reduce, *[lp for lp in (b_inner, v_inner) if lp is not None])
    par = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
    sch.parallel(par)
    anchor = v_outer if v_outer is not None else par
    sch.reverse_compute_at(local, anchor)
    for c in consumers:
        # raises when an epilogue cannot follow the tile: then the whole rule
        # is skipped, since the local accumulator must not outlive its tile
        sch.reverse_compute_at(c, anchor)
    try:
        sch.compute_inline(local)  # epilogue reads the accumulator directly
    except Exception:
        pass
    if b_inner is not None:
        sch.unroll(b_inner)
    if v_inner is not None:
        sch.vectorize(v_inner)
    init = sch.decompose_reduction(red, reduce[0]) if reduce else None
    skip = {name(red)} | producer_names | ({name(init)} if init is not None else set())
    for b in sch.get_child_blocks(root):
        if name(b) not in skip:
            try:
                vectorize_innermost(b)
            except Exception:  # a scalar epilogue is still correct
                pass
    return sch


def _sblock_realize(sch: Any, block: Any) -> Any:
    import tvm_ffi

    return tvm_ffi.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, block)


def _has_condition(stmt: Any) -> bool:
    """True when ``stmt`` holds an ``if_then_else`` (a padding block's bounds check)."""
    import tvm
    import tvm_ffi

    found = []

    def visit(call: Any) -> None:
        if "if_then_else" in str(getattr(call.op, "name", "")):
            found.append(call)

    tvm_ffi.structural_walk(stmt, (tvm.ir.expr.Call, visit), order="post")
    return bool(found)


def _block_axis(sch: Any, block: Any, spatial: list[Any]) -> Any:
    """The spatial loop to register-block (see ``_schedule_cpu``), or ``None``."""
    from tvm.s_tir.dlight.analysis.common_analysis import collect_vars_used_in_prim_expr

    stmt = sch.get(block)
    ivars = [iv.var for iv in stmt.iter_vars]
    candidates = [(lp, ivars[i]) for i, lp in enumerate(spatial[:-1]) if int(sch.get(lp).extent) > 1]
    if not candidates:
        return None
    vector_var = ivars[len(spatial) - 1]

    def uses(region: Any) -> set[str]:
        return {v.name for r in region.region for v in collect_vars_used_in_prim_expr(r.min)}

    streamed = [uses(r) for r in stmt.reads if vector_var.name in uses(r) and not r.source.same_as(stmt.writes[0].source)]
    for lp, var in candidates:
        if streamed and all(var.name not in u for u in streamed):
            return lp
    return candidates[-1][0]


def compile_program(
    program: Any, kind: str, target: TargetSpec, out_dir: Path, *, name: str = "model", cpu_schedules: bool = True
) -> CompiledModule:
    """Compile ``program`` for ``target`` into ``out_dir/model.so`` and ``out_dir/params.npz``.

    The library's ``main`` takes the program's inputs followed by the
    parameters in the order of the ``p0, p1, ...`` keys of the params file.
    ``cpu_schedules=False`` compiles CPU targets with TVM's default pipeline
    only (generic ``llvm``, no rule-based schedules), for comparison.
    Raises ``BackendError`` with the first line of TVM's message on failure.
    """
    import tvm
    from tvm import relax

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    try:
        if target.device == "cpu" and cpu_schedules:
            tvm_target = tvm_target_for(target)
            mod = cpu_default_schedules(mod, tvm_target)
        else:
            tvm_target = target.tvm_target()
        executable = tvm.compile(mod, target=tvm_target)
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
    return CompiledModule(LIBRARY_NAME, params_name, len(weights), dt, kernels)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith("Traceback"):
            return line.strip()[:300]
    return type(e).__name__
