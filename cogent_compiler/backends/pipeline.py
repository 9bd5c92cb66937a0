"""The TVM lowering as named stages: ``prepare``, ``transform_params``, ``schedule``, then build.

``compile_program`` (``tvm_backend``) runs them in the order of ``CPU_STAGES``
or ``CUDA_STAGES``; the compile report lists those tuples.

``prepare(mod, tvm_target)`` is everything before scheduling and depends only
on the program and the target, never on the weights' values, so MetaSchedule
tuning tasks extracted from its output are the kernels ``schedule`` later sees
and ``tvm.compile`` builds:

1. ``decompose`` — ``DecomposeOpsForInference`` (a batch norm the Cogent IR
   did not fold becomes elementwise ops, so its parameter-only part can be
   lifted);
2. ``convert-layout`` — ``ConvertLayout`` of ``relax.nn.conv2d`` to NHWC
   activations and HWIO weights (``layout="NHWC"``; HWIO puts output channels
   innermost, the axis the CPU rule vectorizes in NHWC), after rewriting
   ``clip`` (ReLU6) as ``minimum(maximum(...))``, which ``ConvertLayout`` can
   keep in NHWC; ``layout="NCHW"`` keeps the importer's layout;
3. ``lift-params`` — ``LiftTransformParams``: every computation that reads
   only parameters (conv weights to HWIO, the linear layer's weight transpose,
   bias reshapes) moves to a Relax function ``main_transform_params``, and
   ``main`` takes its results instead of the raw weights.  That function is
   kept un-legalized beside the kernels, so it yields no tuning task;
4. ``legalize`` + ``fuse`` — TVM's ``zero`` pipeline on ``main``
   (LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR).

``transform_params(mod, weights)`` then compiles ``main_transform_params``
for this machine, runs it once on the weights and drops it from the module:
``params.npz`` holds the transformed weights and the library's ``main`` takes
them as they are, so the runtime (``runtime/executor.py``) is unchanged and
does no layout work per request.

``schedule(mod, tvm_target, database=...)`` applies a MetaSchedule database
first (``MetaScheduleApplyDatabase`` inside ``with tvm_target, database``;
kernels with a record get its schedule and ``tirx.is_scheduled``), then the
default rules for the rest: on CPU targets the rule-based schedule below
(dlight's ``cpu.Reduction`` for softmax and norms, which it does not take), on
CUDA dlight's GPU rules.  ``dlight.ApplyDefaultSchedule`` skips any PrimFunc
whose ``tirx.is_scheduled`` is set, so a tuned kernel is never rescheduled.

Build is ``tvm.compile(..., relax_pipeline="default_build")``: lowering only
(dataflow lowering, memory planning, VM code generation) with no fusion and no
scheduling of its own, for every target.

What TVM 0.27's own ``tvm.compile(mod, target)`` does (``relax/vm_build.py``,
``relax/pipeline.py``): for a target with the ``gpu`` key (cuda) the default
Relax pipeline is ``relax.backend.cuda.get_default_pipeline``, which already
runs LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR and
``dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
dl.gpu.GeneralReduction(), dl.gpu.Fallback())`` — the same rules ``schedule``
applies explicitly here.  For CPU targets it is ``default_build`` only: no
fusion at all (one kernel per operator) and no schedules, which is what
``compile_program(..., cpu_schedules=False)`` measures as TVM's untuned
default.  Running the fusion stages explicitly and building with
``default_build`` makes the CPU and CUDA paths the same shape, and the module
that is scheduled is exactly the module that is built.

CPU schedule rule (measured on resnet18 and mobilenet_v2 with
``benchmarks/backends.py``): dlight's CPU rules (GEMV, softmax-like
Reduction) made resnet18 slower (Reduction also claims convolutions), so one
rule of our own: every fused kernel with one reduction (conv2d, matmul,
pooling) is tiled with a register block of one spatial axis times a vector of
the innermost spatial axis (NCHW: output channels x output columns; NHWC:
output columns x output channels), accumulates in a local buffer, runs
parallel over its outer spatial loops and computes its epilogue (bias,
residual add, ReLU) per tile; injective kernels run parallel and vectorized.
Schedules are TIR schedule primitives; a kernel the rule cannot handle keeps
TVM's default lowering.  This is not tuning: MetaSchedule does better, at
minutes to hours per model.

Layout (``DEFAULT_LAYOUT``): NHWC is the default for ``llvm`` and ``arm``,
NCHW for ``cuda``; ``layout=`` picks the other.  Measured on this machine (AMD
EPYC, LLVM's ``mcpu=znver5``, AVX-512; 2 cores shared with other work, load average
3-4, so medians are noisy, but every session ranked the layouts the same):
resnet18 and mobilenet_v2, 1x3x224x224, batch norm folded, ``TVM_NUM_THREADS``
1 and 2, three fresh processes per thread count, each timing the variants
interleaved for 15 rounds; median of the three medians (best single run):

==============  =======  ==============  ==============
model           threads  NCHW ms         NHWC ms
==============  =======  ==============  ==============
resnet18        1        53.7 (35.6)     36.2 (24.0)
resnet18        2        61.4 (34.9)     47.9 (23.2)
mobilenet_v2    1        27.0 (17.8)      9.8 (5.5)
mobilenet_v2    2        36.5 (32.8)     14.7 (12.2)
==============  =======  ==============  ==============

Built for 128-bit vectors (``mcpu=x86-64``, SSE2: the parameters NEON gets)
and 256-bit (``x86-64-v3``, AVX2), 1 thread, median of 2 x 11 rounds: resnet18
451 -> 126 ms and 209 -> 61 ms, mobilenet_v2 86 -> 26 ms and 67 -> 15 ms
(NCHW -> NHWC).  Best of 5, 1 thread, AVX-512: resnet50 75 -> 52 ms, vgg16
275 -> 242, googlenet 30 -> 21, resnet18 with 50 % of its channels pruned
12 -> 6.6.  Why: in NCHW the vector runs along output columns, whose extents
(7, 14, 28, 56, 112) rarely fill a vector (7 columns with 4 lanes stay
scalar); in NHWC it runs along output channels (multiples of 8 or 16 in these
networks), depthwise convolutions included, and each HWIO weight vector is
reused across a block of output columns.  NEON itself is unmeasured (no
aarch64 hardware here); CUDA layouts are unmeasured (no GPU here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cogent_compiler.errors import BackendError

__all__ = [
    "CPU_SCHEDULE",
    "CPU_STAGES",
    "CUDA_STAGES",
    "CPUSchedule",
    "DEFAULT_LAYOUT",
    "LAYOUTS",
    "TRANSFORM_PARAMS",
    "build",
    "cpu_default_schedules",
    "default_layout",
    "lower",
    "prepare",
    "schedule",
    "SCHEDULE_RULES",
    "rule_schedule",
    "schedule_cpu_primfunc",
    "stages_for",
    "transform_params",
]

log = logging.getLogger(__name__)

#: Stages of a CPU compile (``llvm``, ``arm``) in order, for the compile report.
CPU_STAGES: tuple[str, ...] = (
    "fold-batch-norm (Cogent IR pass, before import)",
    "import (parameters kept as inputs)",
    "decompose (DecomposeOpsForInference)",
    "convert-layout (ReLU6 clip to maximum/minimum, conv2d to NHWC/HWIO; when the layout is NHWC)",
    "lift-params (LiftTransformParams)",
    "legalize (LegalizeOps)",
    "fuse (AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR)",
    "transform-params (main_transform_params run once on the weights at compile time)",
    "apply-database (MetaScheduleApplyDatabase, when a database is given)",
    "schedule-rules (Cogent's rule-based CPU schedule, then dlight's cpu.Reduction, for kernels without a record)",
    "build (tvm.compile, relax_pipeline=default_build)",
    "link (host compiler, or the cross compiler for arm)",
)

#: Stages of a CUDA compile in order: as for the CPU, with dlight's GPU rules as the schedule.
CUDA_STAGES: tuple[str, ...] = tuple(
    "schedule-rules (dlight GPU rules: Matmul, GEMV, Reduction, GeneralReduction, Fallback)"
    if s.startswith("schedule-rules")
    else "link (host compiler; kernels compiled to fatbins with nvcc)"
    if s.startswith("link")
    else s
    for s in CPU_STAGES
)

LAYOUTS = ("NCHW", "NHWC")
#: The conv2d layout ``prepare`` uses when none is given, per Cogent target (see the module doc):
#: NHWC measured 1.1-3.6x faster on x86 (five CNNs; 128-, 256- and 512-bit vectors); arm follows
#: the 128-bit result (unmeasured on NEON hardware); cuda keeps the importer's NCHW (unmeasured).
DEFAULT_LAYOUT: dict[str, str] = {"llvm": "NHWC", "arm": "NHWC", "cuda": "NCHW"}

#: Name of the function ``LiftTransformParams`` creates for ``main``.
TRANSFORM_PARAMS = "main_transform_params"

_CONV2D_LAYOUT = {"NHWC": {"relax.nn.conv2d": ["NHWC", "HWIO"]}}


def stages_for(tvm_target: Any) -> tuple[str, ...]:
    """The stage list for ``tvm_target`` (``CUDA_STAGES`` for cuda, else ``CPU_STAGES``)."""
    return CUDA_STAGES if tvm_target.kind.name == "cuda" else CPU_STAGES


def default_layout(tvm_target: Any) -> str:
    """The conv2d layout ``prepare`` picks for ``tvm_target`` (``DEFAULT_LAYOUT``; NCHW for other kinds)."""
    kind = tvm_target.kind.name
    if kind == "llvm" and str(tvm_target.attrs.get("mtriple", "")).startswith("aarch64"):
        kind = "arm"
    return DEFAULT_LAYOUT.get(kind, "NCHW")


def prepare(mod: Any, tvm_target: Any, *, layout: str | None = None) -> Any:
    """Every stage before scheduling: decompose, convert-layout, lift-params, legalize, fuse.

    ``mod`` is an imported Relax module whose ``main`` takes its inputs first
    (``num_input``) and then its parameters, detached
    (``relax.frontend.detach_params``).  ``layout`` is ``"NCHW"`` or
    ``"NHWC"``, ``None`` for ``default_layout(tvm_target)``.  Returns a module
    whose ``main`` calls fused, unscheduled PrimFuncs and takes the
    parameters in the form ``main_transform_params`` returns them; that
    function (present when any parameter is transformed) stays un-legalized
    Relax, for ``transform_params``.  Deterministic: the same program, target
    and layout give a structurally equal module.
    """
    from tvm import IRModule, relax

    layout = default_layout(tvm_target) if layout is None else layout
    if layout not in LAYOUTS:
        raise BackendError(f"conv2d layout {layout!r} is not supported; use one of {', '.join(LAYOUTS)}")
    main = mod["main"] if "main" in [gv.name_hint for gv in mod.get_global_vars()] else None
    if main is None:
        raise BackendError("the Relax module has no main function; import the program with Cogent's backend")
    if main.attrs is not None and "params" in main.attrs:
        raise BackendError("main still carries its parameter values; detach them first with relax.frontend.detach_params")
    with tvm_target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        if layout != "NCHW":
            mod = _squeeze_positive_axes(_clip_to_min_max(mod))
            mod = relax.transform.ConvertLayout(_CONV2D_LAYOUT[layout])(mod)
        mod = relax.transform.LiftTransformParams()(mod)
        lifted = {gv.name_hint: f for gv, f in mod.functions_items() if gv.name_hint == TRANSFORM_PARAMS}
        if lifted:
            # the transform runs on the host at compile time: legalizing it here would
            # put its kernels among main's (tuning tasks, target code) for nothing
            mod = IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != TRANSFORM_PARAMS}, attrs=mod.attrs)
        mod = relax.get_pipeline("zero")(mod)
        for name, func in lifted.items():
            mod[name] = func
    return mod


def _clip_to_min_max(mod: Any) -> Any:
    """``clip(x, lo, hi)`` as ``minimum(maximum(x, lo), hi)`` (same values) in every Relax function.

    ``ConvertLayout`` knows no layout rule for ``relax.clip`` (ReLU6), so it
    would wrap each one in two transposes back to NCHW, which also keeps it out
    of the convolution's fused epilogue; the elementwise binary ops have one.
    """
    from tvm import relax, tirx
    from tvm.relax.dpl import is_op, wildcard

    data, lo, hi = wildcard(), wildcard(), wildcard()
    pattern = is_op("relax.clip")(data, lo, hi)

    def bound(e: Any) -> float | None:
        # a constant bound is an immediate (a FloatImm, or one inside a PrimValue)
        for v in (e, getattr(e, "value", None)):
            if isinstance(v, tirx.FloatImm | tirx.IntImm):
                return float(v.value)
        return None

    def rewriter(expr: Any, matches: Any) -> Any:
        x, low, high = matches[data], bound(matches[lo]), bound(matches[hi])
        dtype = getattr(x.ty, "dtype", None)
        if low is None or high is None or dtype is None or not str(dtype).startswith("float"):
            return expr
        return relax.op.minimum(relax.op.maximum(x, relax.const(low, dtype)), relax.const(high, dtype))

    return _rewrite_calls(mod, pattern, rewriter)


def _squeeze_positive_axes(mod: Any) -> Any:
    """``squeeze`` with its axes counted from the front (same values) in every Relax function.

    ``ConvertLayout``'s layout rule for ``relax.squeeze`` fails with
    ``std::bad_alloc`` on a negative axis (TVM 0.27), and the importer writes
    one for every ``nn.MultiheadAttention`` (``squeeze(-2)`` of the packed
    q/k/v projection): without this no transformer compiled in NHWC.
    """
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    data = wildcard()
    pattern = is_op("relax.squeeze")(data)

    def rewriter(expr: Any, matches: Any) -> Any:
        axes = expr.attrs.axis
        ndim = int(getattr(matches[data].ty, "ndim", -1))
        if axes is None or ndim < 0 or all(int(a) >= 0 for a in axes):
            return expr
        return relax.op.squeeze(matches[data], axis=[int(a) % ndim for a in axes])

    return _rewrite_calls(mod, pattern, rewriter)


def _rewrite_calls(mod: Any, pattern: Any, rewriter: Callable[[Any, Any], Any]) -> Any:
    """``mod`` with ``rewriter(call, matches)`` applied to every call matching ``pattern`` in each of its Relax functions."""
    from tvm import IRModule, relax
    from tvm.relax.dpl import rewrite_call

    funcs = {gv: rewrite_call(pattern, rewriter, f) if isinstance(f, relax.Function) else f for gv, f in mod.functions_items()}
    return IRModule(funcs, attrs=mod.attrs)


def transform_params(mod: Any, weights: Sequence[np.ndarray]) -> tuple[Any, list[np.ndarray]]:
    """Run ``main_transform_params`` once on ``weights``; return ``mod`` without it and the new weights.

    ``weights`` are the raw parameters in the imported ``main``'s order (what
    ``relax.frontend.detach_params`` returned for it).  The function is
    compiled for this machine (generic ``llvm``) whatever the target, since
    the result is data.  A module without the function is returned unchanged
    with ``weights``.
    """
    import tvm
    from tvm import IRModule, relax

    funcs = {gv.name_hint: f for gv, f in mod.functions_items()}
    if TRANSFORM_PARAMS not in funcs:
        return mod, list(weights)
    transform = funcs[TRANSFORM_PARAMS]
    rest = IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != TRANSFORM_PARAMS}, attrs=mod.attrs)
    (tuple_param,) = transform.params
    expected = tuple_param.ty.fields
    if len(expected) != len(weights):
        raise BackendError(f"{TRANSFORM_PARAMS} takes {len(expected)} parameters, {len(weights)} were given; pass the detached weights in order")
    host = tvm.target.Target({"kind": "llvm"})
    executable = tvm.compile(IRModule({TRANSFORM_PARAMS: transform}), target=host)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    dev = tvm.cpu()
    # not np.ascontiguousarray: it makes a 0-d weight (an ONNX Clip bound) 1-d
    result = vm[TRANSFORM_PARAMS]([tvm.runtime.tensor(np.array(w, order="C", copy=None), dev) for w in weights])
    out = [r.numpy() for r in result]
    main_params = rest["main"].params[int(rest["main"].attrs["num_input"]):]
    if [tuple(int(d) for d in p.ty.shape) for p in main_params] != [o.shape for o in out]:
        raise BackendError(f"{TRANSFORM_PARAMS} returned shapes that main does not take; this is a bug in the pipeline")
    log.debug("transform-params: %d weights in, %d out (%d -> %d bytes)", len(weights), len(out),
              sum(w.nbytes for w in weights), sum(o.nbytes for o in out))
    return rest, out


def schedule(mod: Any, tvm_target: Any, *, database: Any = None) -> Any:
    """Schedule every PrimFunc of a prepared module for ``tvm_target``.

    With ``database`` (a ``tvm.s_tir.meta_schedule.Database``) kernels that
    have a tuning record get it first; the rest get the default rules (the CPU
    rule below, or dlight's GPU rules for cuda).  Functions already marked
    ``tirx.is_scheduled`` are left as they are.
    """
    from tvm import relax
    from tvm.s_tir import dlight as dl

    if database is not None:
        with tvm_target, database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    with tvm_target:
        if tvm_target.kind.name == "cuda":
            return dl.ApplyDefaultSchedule(
                dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
            )(mod)
        return dl.ApplyDefaultSchedule(*_cpu_rules(tvm_target))(mod)


def _cpu_rules(tvm_target: Any) -> list[Any]:
    """The CPU rules in the order they are tried: Cogent's tiled rule (at most one reduction), then dlight's
    ``cpu.Reduction`` for kernels of several (softmax, layer norm: rows in parallel, vectorized; left to
    TVM's default lowering they ran on one thread: ViT-B/16's layer norm 0.28 -> 0.18 ms, softmax 1.32 ->
    0.99 ms with 2 threads)."""
    from tvm.s_tir import dlight as dl

    return [_tiled_cpu_rule(_cpu_schedule_for(tvm_target)), dl.cpu.Reduction()]


def rule_schedule(func: Any, tvm_target: Any) -> Any:
    """The schedule the CPU rules give one PrimFunc (as ``schedule`` applies them), or ``None`` if no rule applies.

    Call inside ``with tvm_target``.  The tuner measures these as its seeds.
    """
    from tvm import s_tir

    for rule in _cpu_rules(tvm_target):
        sch = rule.apply(func, tvm_target, False)
        if isinstance(sch, s_tir.Schedule):
            return sch
    return None


def build(mod: Any, tvm_target: Any) -> Any:
    """Lower a scheduled module to a VM executable: ``tvm.compile`` with the ``default_build`` pipeline (no fusion, no schedules)."""
    import tvm

    return tvm.compile(mod, target=tvm_target, relax_pipeline="default_build")


def lower(
    mod: Any, weights: Sequence[np.ndarray], tvm_target: Any, *, layout: str | None = None, database: Any = None
) -> tuple[Any, list[np.ndarray]]:
    """All stages from an imported module to an executable: prepare, transform_params, schedule, build.

    Returns the executable and the weights its ``main`` takes after the inputs.
    """
    mod = prepare(mod, tvm_target, layout=layout)
    mod, weights = transform_params(mod, weights)
    mod = schedule(mod, tvm_target, database=database)
    return build(mod, tvm_target), weights


def cpu_default_schedules(mod: Any, tvm_target: Any) -> Any:
    """The ``zero`` pipeline then the CPU rule, on an imported module (no layout change, no lifting)."""
    from tvm import relax

    with tvm_target:
        mod = relax.get_pipeline("zero")(mod)
    return schedule(mod, tvm_target)


@dataclass(frozen=True)
class CPUSchedule:
    """Parameters of the rule-based CPU schedule, per vector width (bits) of the target.

    ``lanes``: float32 lanes in the vector of the innermost spatial axis;
    ``block``: extent of the register-blocked axis per tile.  Chosen by
    measuring resnet18 in NCHW (not re-tuned for NHWC) on this machine built for AVX-512
    (``mcpu=znver5``: 16x16 beat 8x16 and 4x16) and for AVX2
    (``x86-64-v3``: 8x8 beat 4x8); 128-bit targets (SSE2, NEON — the latter
    unmeasured) use 4 lanes and a block of 8.
    """

    lanes: int
    block: int


CPU_SCHEDULE: dict[int, CPUSchedule] = {512: CPUSchedule(16, 16), 256: CPUSchedule(8, 8), 128: CPUSchedule(4, 8)}

#: version of the schedule rules, recorded in every profile (``Profile.schedule_rules``): a profile's kernels
#: were timed as these rules schedule them, so a change to the rules that changes kernels' speed bumps it
#: (1: register tiles by divisors only; 2: even tiles with a guarded tail, dlight's cpu.Reduction for norms)
SCHEDULE_RULES = 2


def _cpu_schedule_for(tvm_target: Any) -> CPUSchedule:
    from tvm.target import codegen

    width = int(codegen.llvm_get_vector_width(tvm_target))
    return CPU_SCHEDULE.get(width) or CPU_SCHEDULE[min(CPU_SCHEDULE, key=lambda w: abs(w - width))]


def _tiled_cpu_rule(params: CPUSchedule) -> Any:
    """The CPU rule as a dlight ``ScheduleRule`` (llvm targets only)."""
    from tvm.s_tir import dlight as dl

    class TiledCPU(dl.ScheduleRule):
        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            if target.kind.name != "llvm":
                return None
            return schedule_cpu_primfunc(func, params)

    return TiledCPU()


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

    def parallel_vectorize(block: Any) -> None:
        loops = sch.get_loops(block)
        if not loops:
            return
        last = extent(loops[-1])
        if len(loops) > 1 and last % params.lanes and last > params.lanes:
            # a row that is no multiple of the vector: fused with the rows above, each vector's
            # index would need a division (a gather); keep the row, vectorize it, run rows in parallel
            rows = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
            sch.parallel(rows)
            vectorize_innermost(block)
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
                inner = sch.split(inner, [None, largest_divisor(extent(inner), params.lanes)])[1]
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
    # register-block axis: one the vector's streamed input does not depend on
    # (NCHW conv: output channels, each input vector is reused for all of them;
    # NHWC conv: output columns, each weight vector is reused for all of them),
    # else the innermost other spatial loop (rows of an NCHW depthwise convolution;
    # a transformer's tokens), tiled by ``block_tile`` (a guarded tail where no divisor fits).
    block_axis = _block_axis(sch, red, spatial)
    # vector axis: the innermost spatial loop (output columns in NCHW, output channels
    # in NHWC, output features in matmul), split by the largest divisor up to the
    # vector lanes.  Not rows and columns fused for small maps: tiles that cross rows
    # came out wrong after reverse_compute_at (measured on mobilenet_v2), and whole-row
    # tiles were slower.
    v = spatial[-1]
    nv = extent(v)
    v_outer, v_inner = (None, None)
    if nv >= 2:
        width = largest_divisor(nv, params.lanes)
        v_outer, v_inner = sch.split(v, [None, width]) if nv > width else (None, v)
    b_inner = None
    if block_axis is not None and params.block > 1:
        nb = block_tile(extent(block_axis), params.block)
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


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` up to ``at_most``: the factor the CPU schedule splits the vectorized axis by."""
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def block_tile(n: int, block: int) -> int:
    """Rows per register tile of an ``n``-row blocked axis: a divisor of ``n`` up to ``block``, else even tiles with a tail.

    A divisor leaves no tail; but a row count with only small divisors (ViT's
    197 tokens are prime) would get a tile of one row, and every row would
    re-read the weights: 8x slower there (a 768-3072-768 MLP at 197 tokens,
    one thread: 119 ms, 15 ms in tiles of 16).  Then the rows go in as few
    tiles as ``block`` allows, of even size (35 rows: 12+12+11, not 16+16+3),
    the last one guarded by a predicate.  Measured here against the divisor
    (one thread): 3x3 convolutions at 17 and 71 columns 0.23x and 0.18x the
    time, at 35 and 25 columns about the same.
    """
    best = largest_divisor(n, block)
    if 2 * best > block or n <= block:
        return best
    return -(-n // -(-n // block))


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
    """The spatial loop to register-block (see ``_schedule_cpu``), or ``None``.

    The innermost loop (other than the vector's) with extent > 1 that no
    streamed read depends on; else the innermost loop with extent > 1.
    """
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
    for lp, var in reversed(candidates):
        if streamed and all(var.name not in u for u in streamed):
            return lp
    return candidates[-1][0]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith("Traceback"):
            return line.strip()[:300]
    return type(e).__name__
