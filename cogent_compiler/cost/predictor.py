"""Predict an op's time on a target from a measured profile.

Per op kind (and, for ``conv2d``, per variant: ``depthwise``, ``grouped``,
``1x1``, ``k3x3``...) a non-negative least-squares fit

    ms ≈ ms_per_mac · MACs + ms_per_byte · bytes_moved + ms_fixed

where ``bytes_moved`` is input + output + parameter bytes.  The fit
minimises the error of log(predicted / measured) (started from non-negative
least squares weighted by 1/ms): a profile spans four orders of magnitude of
time, so an absolute fit would ignore every small layer, and a relative one
leans to predicting too little.  Non-negative coefficients keep extrapolation to channel counts never
measured monotonic (more MACs or bytes never predict less time).

Fusion: TVM's ``FuseOps`` puts an element-wise op that directly follows a
convolution or matmul (its only reader) into that kernel as an epilogue, and
likewise chains of element-wise ops.  ``ProfileComputeModel.nodes_ms`` sees
the nodes of one half and predicts such an op as that epilogue: no kernel of
its own, only the cost of reading an extra operand (the residual of an
``add``), from the ``add:epilogue`` fit (the profiler measures conv+add+relu
against conv+relu of the same shape; measured on this machine a residual adds
about a third to a 64-channel 3x3 convolution, far more than its bytes at the
standalone add's rate) or, without it, the ``add`` fit's per-byte cost.  The
profiler's convolutions are measured with their ReLU epilogue, so a ReLU or
clip epilogue costs nothing more.
``node_ms`` alone, without the other nodes, predicts the op as its own kernel.

Then the fit is corrected by the samples nearest to the op (``Neighbours``):
the weighted geometric mean of measured/fitted over the ``K_NEIGHBOURS``
samples of the same fit with the smallest distance in log2(MACs, input,
output and parameter bytes) — kernel size and stride must match.  A layer
measured exactly is predicted as measured; a channel count pruning makes
takes the correction of the sizes around it.  A linear fit cannot follow
what schedule tiling does (a 512-channel 7x7 3x3 convolution measured twice
what its MACs predict, a 56x56 one 0.9x); the neighbours can.

MACs are counted as the CPU schedule runs them (``lane_use``): it
vectorizes a convolution's output channels (a linear layer's features) by
their largest divisor up to the vector's lanes, so 1000 channels run in
vectors of 10 of 16 lanes and count 1.6x.  Convolutions whose weight rows
span whole 4 KiB pages (1024, 2048 output channels) alias in the cache and
ran about half as fast per MAC; the neighbours keep them apart (``_aliasing``).
Bytes moved count a convolution's weights once per tile of output columns
in each row when they outgrow the L2 cache (``weight_passes``): the schedule
then reads them from the L3 again for every tile.  The profile records the
lanes, the register block and the cache sizes (``cpu_facts``).

Besides the kernels, each kernel call costs the VM a little
(``kernel_overhead_ms``, the median of ``(wall - Σ kernels) / kernels`` over
the layer samples), added once per predicted kernel.  A half (``nodes_ms``)
also pays for the layout changes at its edges (``layout_transform:in/out``
fits, from the transposes around every measured convolution) and for running
as a whole rather than kernel by kernel with hot caches: the ``graph`` fit
(``in_graph_ms``) from whole reference networks (``reference_nets``), fitted
end to end -- a network's wall time against the prediction of its own nodes:
ms ≈ s·(predicted kernels) + a·kernels + b·weight bytes + b'·weight bytes
streamed (``streamed_param_bytes``: linear layers' weights when a half's
weights outgrow the last-level cache) + c·bytes written.

How close this comes is ``benchmarks/latency_model.py`` (six torchvision
models cut three ways, full speed and under a 10 % quota).  The lane count,
the aliasing, the weight re-reads, the 5x5 depthwise reference layers and
the end-to-end graph fit came from its misses: the whole-call
term, fitted before on the gap to kernels timed inside each network with one
rate per weight byte, charged the rate three 2048-wide linear layers paid
streaming 42 MB from memory to every weight, and mobile tails whose wall time
equals their kernels came out 40-56 % over.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from cogent_compiler.backends.pipeline import SCHEDULE_RULES, block_tile, largest_divisor
from cogent_compiler.cost.profile import Profile, Sample, load_profile, target_kind
from cogent_compiler.errors import MissingFitError, ProfileError
from cogent_compiler.ir import Node
from cogent_compiler.ir.graph import DTYPE_BYTES, TensorInfo

log = logging.getLogger(__name__)

__all__ = [
    "Fit", "ProfileComputeModel", "ZERO_COST_OPS", "EPILOGUE_OPS", "FUSION_ANCHORS",
    "Neighbours", "fit_samples", "fit_profile", "fit_key", "node_features", "fused_epilogues",
]

#: Ops that are no kernel after lowering (TVM turns pure reshapes into views).
ZERO_COST_OPS = frozenset({"reshape", "flatten", "view", "squeeze", "unsqueeze", "getitem", "dropout", "identity", "alias", "detach"})
#: Element-wise ops that FuseOps fuses into the kernel whose output they read.
EPILOGUE_OPS = frozenset({"relu", "hardtanh", "relu6", "clamp", "add", "mul", "sub", "sigmoid", "silu", "hardswish", "hardsigmoid", "gelu"})
#: Ops whose kernel depends on the layout around them: NHWC between convolutions, the caller's NCHW at a half's input.
LAYOUT_SENSITIVE = frozenset({"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "cat"})
#: Ops that keep their input's layout (ConvertLayout carries NHWC through them).
#: The fits of the layout changes at a half's edges: into NHWC before its first convolution, back to NCHW after its last.
LAYOUT_IN, LAYOUT_OUT = "layout_transform:in", "layout_transform:out"
#: Ops predicted by another op's fit: TVM lowers a global average pool to the same ``mean`` kernel as
#: ``x.mean([2, 3])`` (MnasNet's and EfficientNet's pooling); a dtype cast and the other element-wise
#: arithmetic are one memory-bound pass like ``relu`` and ``add`` (a pixel input's normalisation); so are the
#: copies a transformer makes between its kernels (heads moved by ``transpose``/``permute``, the class token
#: taken by ``select``/``slice``, an ``expand`` or ``clone``) and an activation left unfused.
FIT_ALIASES = {"mean": "adaptive_avg_pool2d", "cast": "relu", "mul": "add", "sub": "add", "div": "add",
               **dict.fromkeys(("transpose", "permute", "select", "slice", "expand", "clone", "contiguous",
                                "gelu", "silu", "sigmoid", "hardswish", "hardsigmoid"), "relu"), "relu6": "hardtanh", "clamp": "hardtanh"}
#: Ops whose kernel takes element-wise epilogues.
FUSION_ANCHORS = frozenset({"conv2d", "linear", "matmul"})
#: Ops that keep their input's layout (ConvertLayout carries NHWC through them).
LAYOUT_AGNOSTIC = EPILOGUE_OPS | LAYOUT_SENSITIVE | {"dropout", "identity", "alias", "detach"}
#: The samples (and fit) of whole reference networks: a call's cost beyond its kernels (``reference_nets``).
GRAPH = "graph"
#: Fewest samples a conv2d variant needs for a fit of its own (else the op kind's fit serves it).
MIN_VARIANT_SAMPLES = 3
#: Samples whose measured/fitted ratio corrects a prediction; their weight is 1 / (distance² + softening),
#: distance in log2 units of MACs and bytes, so an exact match outweighs a neighbour at 2x by about 20:1.
K_NEIGHBOURS = 4
NEIGHBOUR_SOFTENING = 0.05
#: Version of ``fit_profile``: a profile whose fits another version computed is refitted when loaded
#: (2: MACs counted by lane use, ``lane_use``; 3: weights re-read past the L2, ``weight_passes``; 4: by linear layers too;
#: 5: tiles with a tail where the row count has no divisor near the block, ``pipeline.block_tile``).
FIT_METHOD = 5
#: Distance added for a sample of another kernel size or stride.
SHAPE_MISMATCH = 3.0
#: kernel predictions kept per compute model (``ProfileComputeModel.kernel_ms``)
KERNEL_MEMO_SIZE = 65_536
#: Distance added between a convolution whose weight rows are a whole number of 4 KiB pages and one whose are not.
ALIASING_MISMATCH = 2.0
#: A convolution with this many input channels or fewer is a stem (``_shape_class``).
STEM_CHANNELS = 4


@dataclass(frozen=True)
class Fit:
    """``ms = ms_per_mac * macs + ms_per_byte * bytes_moved + ms_fixed``, fitted on ``samples`` samples."""

    ms_per_mac: float
    ms_per_byte: float
    ms_fixed: float
    samples: int
    #: median and worst in-sample relative error |pred - ms| / ms
    median_rel_err: float = 0.0
    max_rel_err: float = 0.0

    def predict(self, macs: float, bytes_moved: float) -> float:
        return self.ms_per_mac * macs + self.ms_per_byte * bytes_moved + self.ms_fixed

    def to_json(self) -> dict[str, Any]:
        return {"ms_per_mac": self.ms_per_mac, "ms_per_byte": self.ms_per_byte, "ms_fixed": self.ms_fixed, "samples": self.samples,
                "median_rel_err": round(self.median_rel_err, 4), "max_rel_err": round(self.max_rel_err, 4)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Fit:
        return cls(float(d["ms_per_mac"]), float(d["ms_per_byte"]), float(d["ms_fixed"]), int(d.get("samples", 0)),
                   float(d.get("median_rel_err", 0.0)), float(d.get("max_rel_err", 0.0)))


def fit_key(op: str, attrs: Mapping[str, Any]) -> str | None:
    """The variant fit an op may have beside its kind's (``conv2d:depthwise``, ``linear:tokens``), or ``None``."""
    if attrs.get("epilogue"):
        return f"{op}:epilogue"
    if attrs.get("boundary"):
        return f"{op}:boundary"
    if op == "linear":
        # over many rows (a transformer's tokens) it reuses each weight and is compute-bound, not weight-bound as at batch 1
        return "linear:tokens" if _rows(attrs) > 1 else None
    if op != "conv2d":
        return None
    groups = int(attrs.get("groups", 1) or 1)
    if groups > 1:
        return "conv2d:depthwise" if groups == int(attrs.get("in_channels", -1)) else "conv2d:grouped"
    kernel = [int(k) for k in attrs.get("kernel", [])]
    if kernel == [1, 1]:
        return "conv2d:1x1"
    return f"conv2d:k{'x'.join(str(k) for k in kernel)}" if kernel else None


def _rows(attrs: Mapping[str, Any]) -> int:
    """Rows of an op's output: every dimension but the last (a linear layer's tokens times batch; 1 at batch 1)."""
    return math.prod(int(d) for d in (attrs.get("out_shape") or [1])[:-1])


def vector_lanes(profile: Profile) -> int:
    """float32 lanes of the vector the CPU schedule tiles by on the profile's target (1: no such schedule).

    Recorded by ``cogentc profile`` (``machine.vector_lanes``); a profile
    from before that is read as measured on this kind of CPU: 16 lanes
    (AVX-512) on x86-64, 4 (NEON) on aarch64.
    """
    m = profile.machine
    if m.get("vector_lanes"):
        return int(m["vector_lanes"])
    if target_kind(profile.target) != "llvm":
        return 1
    arch = str(m.get("arch") or "")
    return 16 if arch in ("x86_64", "AMD64") else 4 if arch in ("aarch64", "arm64") else 1


def _vector_axis(op: str, attrs: Mapping[str, Any]) -> int:
    """Extent of the axis the CPU schedule vectorizes: output channels (NHWC convolution) or features (linear); 0 if none."""
    if op == "conv2d":
        return int(attrs.get("out_channels") or 0)
    if op in ("linear", "matmul"):
        return int(attrs.get("out_features") or 0)
    return 0


def lane_use(op: str, attrs: Mapping[str, Any], lanes: int) -> float:
    """The share of vector lanes the CPU schedule fills for this op (``pipeline._schedule_cpu``).

    The schedule splits the vectorized axis by its largest divisor up to the
    lanes: 1000 output channels run in vectors of 10 of 16 lanes (10 divides
    1000, 11 to 16 do not).  Measured here: a 512->1000 1x1 convolution at
    13x13 ran 63 GMAC/s, 512->1008 104 GMAC/s.  So a kernel's MACs count as
    MACs / lane use.
    """
    n = _vector_axis(op, attrs)
    if lanes <= 1 or n <= 0:
        return 1.0
    return largest_divisor(n, lanes) / lanes


def _aliasing(op: str, attrs: Mapping[str, Any]) -> bool:
    """Whether a convolution's weight rows (output channels of float32) span a whole number of 4 KiB pages.

    Such rows map to the same cache sets and evict each other: 256->1024
    and 512->2048 1x1 convolutions at 7x7 ran 49-61 GMAC/s here, other 1x1
    convolutions near their size 85-106.
    """
    n = _vector_axis(op, attrs)
    return op == "conv2d" and n > 0 and (n * 4) % 4096 == 0 and int(attrs.get("groups", 1) or 1) == 1


@dataclass(frozen=True)
class CPUFacts:
    """What the predictor knows of a profile's CPU: the schedule's vector lanes and register block, the L2 and last-level caches."""

    lanes: int = 1
    block: int = 1
    l2_bytes: int | None = None
    llc_bytes: int | None = None


def cpu_facts(profile: Profile) -> CPUFacts:
    """The ``CPUFacts`` a profile records (``cogentc profile`` writes them; older profiles lack the L2 size: no weight re-reads)."""
    m = profile.machine
    lanes = vector_lanes(profile)
    block = int(m.get("vector_block") or {16: 16, 8: 8, 4: 8}.get(lanes, 1))
    return CPUFacts(lanes, block, int(m["l2_bytes"]) if m.get("l2_bytes") else None, int(m["llc_bytes"]) if m.get("llc_bytes") else None)


def weight_passes(op: str, attrs: Mapping[str, Any], block: int) -> int:
    """How often the CPU schedule reads a convolution's weights: once per tile of output columns in each output row
    (a linear layer's: once per tile of rows).

    ``pipeline._schedule_cpu`` keeps a tile of output columns (``pipeline.block_tile``
    of the width: a divisor up to ``block``, else even tiles with a tail) by a vector of output channels in
    registers and runs every input channel and kernel tap into it, so each
    output row reads all the weights once per column tile.
    """
    shape = attrs.get("out_shape") or ()
    if op == "linear" and len(shape) >= 2 and block > 1:
        # the rows (a transformer's tokens) are the register-blocked axis: all the weights once per tile of rows
        rows = _rows(attrs)
        return -(-rows // block_tile(rows, block))
    if op != "conv2d" or int(attrs.get("groups", 1) or 1) != 1 or len(shape) != 4 or block <= 1:
        return 1
    oh, ow = int(shape[2]), int(shape[3])
    return oh * -(-ow // block_tile(ow, block))


def _moved(op: str, attrs: Mapping[str, Any], in_bytes: float, out_bytes: float, param_bytes: float, cpu: CPUFacts) -> float:
    """Bytes a kernel moves: its input, output and weights, and its weights again on every re-read (``weight_passes``)
    when they outgrow the L2 cache and come from the L3 each time (measured here: 2048->512 1x1 convolutions at 14x14,
    4 MB of weights, ran at 58 GMAC/s, 512->512 ones with 1 MB at 85-106)."""
    moved = in_bytes + out_bytes + param_bytes
    if cpu.l2_bytes and param_bytes > cpu.l2_bytes:
        moved += param_bytes * (weight_passes(op, attrs, cpu.block) - 1)
    return moved


def _effective(s: Sample, cpu: CPUFacts) -> tuple[float, float]:
    """(MACs counted by lane use, bytes moved) of a sample."""
    return s.macs / lane_use(s.op, s.attrs, cpu.lanes), _moved(s.op, s.attrs, s.in_bytes, s.out_bytes, s.param_bytes, cpu)


def fit_samples(samples: Sequence[Sample], cpu: CPUFacts = CPUFacts()) -> Fit:
    """Fit one model to ``samples`` (see the module doc), MACs counted by ``lane_use``.  Precondition: at least one sample, every ``ms`` > 0."""
    import numpy as np
    from scipy.optimize import nnls

    if not samples:
        raise ProfileError("no samples to fit")
    x = np.array([[*_effective(s, cpu), 1.0] for s in samples], dtype=np.float64)
    y = np.array([s.ms for s in samples], dtype=np.float64)
    if np.any(y <= 0):
        raise ProfileError(f"a sample has a non-positive time ({y.min()} ms); re-measure it")
    scale = np.where(x.max(axis=0) > 0, x.max(axis=0), 1.0)
    xs = x / scale
    w = 1.0 / y
    coef, _ = nnls(xs * w[:, None], y * w)
    if len(samples) > 1 and np.any(coef > 0):
        # relative least squares favours predicting too little (an under-prediction errs by at most 100 %);
        # refine on log(pred / ms), which weighs "2x too slow" and "2x too fast" alike
        from scipy.optimize import least_squares

        floor = float(y.min()) * 1e-3

        def residuals(c: np.ndarray) -> np.ndarray:
            return np.log(np.maximum(xs @ c, floor)) - np.log(y)

        refined = least_squares(residuals, np.maximum(coef, 1e-12), bounds=(0.0, np.inf), method="trf")
        if refined.success and np.sum(residuals(refined.x) ** 2) <= np.sum(residuals(coef) ** 2):
            coef = np.where(x.max(axis=0) > 0, refined.x, 0.0)  # a feature every sample lacks gets no weight
    coef = coef / scale
    pred = x @ coef
    rel = np.abs(pred - y) / y
    return Fit(float(coef[0]), float(coef[1]), float(coef[2]), len(samples), float(np.median(rel)), float(rel.max()))


def fit_profile(profile: Profile) -> Profile:
    """``profile`` with ``fits`` (per op kind and conv2d variant) and ``kernel_overhead_ms`` computed from its samples."""
    by_key: dict[str, list[Sample]] = {}
    for s in profile.samples:
        if s.op == GRAPH:
            continue
        variant = fit_key(s.op, s.attrs)
        if not s.attrs.get("epilogue") and not s.attrs.get("boundary"):  # an epilogue's time is what it adds to a kernel
            by_key.setdefault(s.op, []).append(s)
        if variant:
            by_key.setdefault(variant, []).append(s)
    fits: dict[str, dict[str, Any]] = {}
    cpu = cpu_facts(profile)
    for key in sorted(by_key):
        if ":" in key and not key.endswith((":epilogue", ":boundary")) and len(by_key[key]) < MIN_VARIANT_SAMPLES:
            continue
        fits[key] = fit_samples(by_key[key], cpu).to_json()
    for key, kernel, side in ((LAYOUT_IN, "transpose", "in_bytes"), (LAYOUT_OUT, "transpose1", "out_bytes")):
        moves = [Sample(op=key, attrs={}, macs=0, in_bytes=getattr(s, side), out_bytes=0, param_bytes=0, ms=s.kernels[kernel], runs=s.runs)
                 for s in profile.samples if s.op == "conv2d" and not s.attrs.get("epilogue") and s.kernels.get(kernel, 0) > 0]
        if len(moves) >= MIN_VARIANT_SAMPLES:
            fits[key] = fit_samples(moves).to_json()
    overheads = [max(0.0, (s.wall_ms - sum(s.kernels.values())) / len(s.kernels))
                 for s in profile.samples if s.wall_ms is not None and s.kernels and s.op != GRAPH]
    fitted = replace(profile, fits=dict(fits), kernel_overhead_ms=float(statistics.median(overheads)) if overheads else 0.0,
                     fit_method=FIT_METHOD)
    graphs = [s for s in profile.samples if s.op == GRAPH and s.attrs.get("kernels")]
    if graphs and all(s.attrs.get("nodes") and s.wall_ms for s in graphs):
        # fitted on the predictions of the kernels: the per-op fits first, then this one on top of them
        return replace(fitted, fits={**fits, GRAPH: _fit_graph_end_to_end(graphs, ProfileComputeModel("fit", fitted))})
    if graphs:
        return replace(fitted, fits={**fits, GRAPH: _fit_graph(graphs)})
    return fitted


def _fit_graph(samples: Sequence[Sample]) -> dict[str, Any]:
    """The ``graph`` fit of a profile whose reference networks carry no nodes: gap ms ≈ a·kernels + b·parameter bytes + c·bytes written.

    The gap is the whole call less its kernels timed alone; absolute, not
    relative, least squares (a network as fast as its kernels has a gap
    near zero, and what matters is the gap's ms).
    """
    import numpy as np
    from scipy.optimize import nnls

    x = np.array([(float(s.attrs["kernels"]), s.param_bytes, float(s.attrs.get("act_bytes", 0))) for s in samples])
    y = np.array([s.ms for s in samples])
    scale = np.where(x.max(axis=0) > 0, x.max(axis=0), 1.0)
    coef, _ = nnls(x / scale, y)
    coef = coef / scale
    err = np.abs(x @ coef - y)
    return {"method": "kernels", "per_kernel_ms": float(coef[0]), "per_param_byte_ms": float(coef[1]), "per_act_byte_ms": float(coef[2]),
            "samples": len(samples), "median_abs_err_ms": round(float(np.median(err)), 4), "max_abs_err_ms": round(float(err.max()), 4)}


def _fit_graph_end_to_end(samples: Sequence[Sample], model: ProfileComputeModel) -> dict[str, Any]:
    """The ``graph`` fit: a reference network's whole call ≈ s·(its predicted kernels) + a·kernels + b·parameter bytes
    + b'·streamed parameter bytes (``streamed_param_bytes``) + c·bytes written.

    The predicted kernels are ``model.nodes_ms`` of the network's nodes
    (the per-op fits, neighbours, fused epilogues and layout changes, no
    graph term): so the fit also takes up what the per-layer predictions
    miss on whole networks, which the gap to kernels timed inside the
    network does not (measured here: the heads of mobilenet_v2 and mnasnet
    ran 10-20 % slower than their kernels predicted one by one).
    Non-negative least squares on the relative error, as the per-op fits.
    A network with an op the profile has no fit for (a profile cut short
    by its budget, or measured ``--only`` some ops) is left out; with none
    left, the fit is ``_fit_graph``'s.
    """
    import numpy as np
    from scipy.optimize import nnls

    rows, walls = [], []
    for s in samples:
        try:
            ms, kernels, params, streamed, act = model._parts([Node.from_json(d) for d in s.attrs["nodes"]])
        except MissingFitError:
            continue
        rows.append((ms, float(kernels), float(params - streamed), float(streamed), float(act)))
        walls.append(float(s.wall_ms or 0.0))
    if not rows:
        return _fit_graph(samples)
    x, y = np.array(rows), np.array(walls)
    scale = np.where(x.max(axis=0) > 0, x.max(axis=0), 1.0)
    w = 1.0 / y
    coef, _ = nnls(x / scale * w[:, None], y * w)
    coef = coef / scale
    rel = np.abs(x @ coef - y) / y
    return {"method": "end-to-end", "kernel_scale": float(coef[0]), "per_kernel_ms": float(coef[1]), "per_param_byte_ms": float(coef[2]),
            "per_streamed_byte_ms": float(coef[3]), "per_act_byte_ms": float(coef[4]), "samples": len(rows), "median_rel_err": round(float(np.median(rel)), 4),
            "max_rel_err": round(float(rel.max()), 4)}


def _log_features(op: str, macs: float, in_bytes: float, out_bytes: float, param_bytes: float, attrs: Mapping[str, Any]) -> tuple[float, ...]:
    """Where a kernel sits among the samples: log2 of its (lane-counted) MACs and bytes, of its output's last dimension, and its aliasing.

    The last dimension is there for element-wise ops and pooling in NCHW,
    whose speed depends on whether the row vectorizes (a ReLU over 112-wide
    rows measured 10x faster per byte than over 28-wide ones); the aliasing
    (``_aliasing``) keeps a convolution with 1024 output channels from
    taking its correction from one with 1152 and the other way round.
    """
    shape = attrs.get("out_shape") or ()
    width = float(shape[-1]) if shape else 0.0
    return (math.log2(macs + 1), math.log2(in_bytes + 1), math.log2(out_bytes + 1), math.log2(param_bytes + 1), math.log2(width + 1),
            ALIASING_MISMATCH if _aliasing(op, attrs) else 0.0)


def _shape_class(attrs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Kernel size, stride and whether it is an unpadded stem: neighbours must share them.

    A stride-2 layer is no neighbour of a stride-1 one.  A stem (``STEM_CHANNELS``
    input channels or fewer) does 27 MACs per output of a 3x3 kernel, so
    testing each read for the border shows: SqueezeNet's unpadded 3->64 stem
    ran in 0.29 ms and the same stem padded in 0.47 ms here, where a 64->64
    convolution ran as fast per output either way.
    """
    kernel = tuple(attrs.get("kernel") or ())
    unpadded_stem = any(int(k) > 1 for k in kernel) and int(attrs.get("in_channels") or 1 << 30) <= STEM_CHANNELS and not any(attrs.get("padding") or ())
    return (kernel, tuple(attrs.get("stride") or ()), unpadded_stem)


@dataclass(frozen=True)
class Neighbours:
    """The samples of one fit, ready for the nearest-neighbour correction (see the module doc)."""

    points: tuple[tuple[tuple[float, ...], tuple[Any, ...], float, str], ...]  # (log features, shape class, log(ms / fit), key)

    @classmethod
    def of(cls, fit: Fit, samples: Iterable[Sample], cpu: CPUFacts = CPUFacts()) -> Neighbours:
        points = []
        for s in samples:
            macs, moved = _effective(s, cpu)
            points.append((_log_features(s.op, macs, s.in_bytes, s.out_bytes, s.param_bytes, s.attrs), _shape_class(s.attrs),
                           math.log(s.ms / max(fit.predict(macs, moved), 1e-12)), s.key))
        return cls(tuple(points))

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The points as arrays: (features, one row per sample; log ratios; keys).  A planner prices thousands of kernels."""
        features = np.array([p[0] for p in self.points], dtype=float).reshape(len(self.points), -1)
        return features, np.array([p[2] for p in self.points], dtype=float), np.array([p[3] for p in self.points], dtype=object)

    @cached_property
    def _mismatch(self) -> dict[tuple[Any, ...], np.ndarray]:
        return {}

    def correction(self, features: tuple[float, ...], shape: tuple[Any, ...], exclude: str = "") -> float:
        """measured/fitted near ``features``: weighted geometric mean over the ``K_NEIGHBOURS`` nearest samples (1.0 if none)."""
        points, log_ratios, keys = self._arrays
        mismatch = self._mismatch.get(shape)
        if mismatch is None:
            mismatch = self._mismatch[shape] = np.array([SHAPE_MISMATCH**2 if p[1] != shape else 0.0 for p in self.points])
        d2 = ((points - np.asarray(features, dtype=float)) ** 2).sum(axis=1) + mismatch
        if exclude:
            keep = keys != exclude
            d2, log_ratios = d2[keep], log_ratios[keep]
        if not d2.size:
            return 1.0
        near = np.argsort(d2, kind="stable")[:K_NEIGHBOURS]
        weights = 1.0 / (d2[near] + NEIGHBOUR_SOFTENING)
        return math.exp(float((weights * log_ratios[near]).sum() / weights.sum()))


def _dtype_bytes(node: Node) -> int:
    return DTYPE_BYTES.get(node.outputs[0].dtype, 4) if node.outputs else 4


def _estimated_input_bytes(node: Node) -> int:
    """The activation input of ``node`` when its tensor is not at hand (a graph input, a cut tensor)."""
    if not node.outputs:
        return 0
    out = node.outputs[0]
    a = node.attrs
    pool = node.op in ("max_pool2d", "avg_pool2d") and "kernel" in a
    if (node.op == "conv2d" and "in_channels" in a or pool) and len(out.shape) == 4:
        n, c, ho, wo = out.shape
        dims = []
        for i, o in enumerate((ho, wo)):
            k = int(a.get("kernel", [1, 1])[i])
            s = int(a.get("stride", [1, 1])[i])
            d = int(a.get("dilation", [1, 1])[i])
            pad = a.get("padding", [0, 0])
            p = 0 if isinstance(pad, str) else int(pad[i])
            dims.append(max(1, (o - 1) * s - 2 * p + d * (k - 1) + 1) if not isinstance(pad, str) else o * s)
        return n * (c if pool else int(a["in_channels"])) * dims[0] * dims[1] * _dtype_bytes(node)
    if node.op == "linear" and "in_features" in a and "out_features" in a:
        return out.numel // max(1, int(a["out_features"])) * int(a["in_features"]) * _dtype_bytes(node)
    return out.nbytes


def node_features(node: Node, tensors: Mapping[str, TensorInfo] | None = None) -> tuple[int, int, int, int]:
    """``(macs, in_bytes, out_bytes, param_bytes)`` of ``node``, as the profile's samples record them.

    Input bytes come from ``tensors`` (name -> info) where the input is there,
    else from the op's attributes and output shape (conv2d, linear) or, for
    other ops, the size of its output.
    """
    tensors = tensors or {}
    in_bytes = 0
    for name in dict.fromkeys(node.inputs):
        info = tensors.get(name)
        in_bytes += info.nbytes if info is not None else _estimated_input_bytes(node)
    return node.macs, in_bytes, node.output_bytes, node.param_bytes


def fused_epilogues(nodes: Sequence[Node]) -> dict[str, int]:
    """Nodes of ``nodes`` that TVM fuses into the kernel they read from: name -> bytes of their other operands.

    An element-wise op (``EPILOGUE_OPS``) is fused when one of its inputs is
    produced, inside ``nodes``, by a conv2d/linear/matmul or by an op that is
    itself fused or element-wise, and that input has no other reader there.
    """
    producer = {t.name: n for n in nodes for t in n.outputs}
    readers: dict[str, int] = {}
    for n in nodes:
        for i in dict.fromkeys(n.inputs):
            readers[i] = readers.get(i, 0) + 1

    def takes_epilogue(n: Node) -> bool:
        # a kernel that can absorb an element-wise op: an anchor, or any element-wise op (fused or a chain head)
        return n.op in FUSION_ANCHORS or n.op in EPILOGUE_OPS

    def chain_input(n: Node) -> str | None:
        for i in dict.fromkeys(n.inputs):
            p = producer.get(i)
            if p is not None and readers.get(i, 0) == 1 and takes_epilogue(p):
                return i
        return None

    fused: dict[str, int] = {}
    for n in nodes:
        if n.op not in EPILOGUE_OPS:
            continue
        via = chain_input(n)
        if via is not None:
            others = [i for i in dict.fromkeys(n.inputs) if i != via]
            fused[n.name] = sum(producer[i].outputs[0].nbytes if i in producer and producer[i].outputs else n.output_bytes for i in others)
    return fused


@dataclass(frozen=True)
class ProfileComputeModel:
    """A compute model (the interface of ``latency.ComputeModel``) backed by a measured profile."""

    name: str
    profile: Profile
    path: str = ""

    @classmethod
    def from_file(cls, name: str, path: str | Path, expect_target: str | None = None) -> ProfileComputeModel:
        """Load ``path`` (refusing a profile of another target) and fit it if it carries no fits yet."""
        profile = load_profile(path, expect_target)
        if not profile.samples:
            raise ProfileError(f"{path}: the profile holds no samples; measure some with `cogentc profile --target {profile.target} -o {path}`")
        if profile.schedule_rules != SCHEDULE_RULES:
            log.warning("%s was measured with schedule rules v%d, this compiler's are v%d: kernels they schedule differently "
                        "may run at another speed than predicted; re-profile with `cogentc profile --target %s -o %s`",
                        path, profile.schedule_rules, SCHEDULE_RULES, profile.target, path)
        if not profile.fits or profile.fit_method != FIT_METHOD:
            profile = fit_profile(profile)
        return cls(name, profile, str(path))

    @property
    def source(self) -> str:
        return f"profile {self.path}" if self.path else "profile"

    def _fit_key_for(self, op: str, attrs: Mapping[str, Any]) -> str | None:
        fits = self.profile.fits
        op = FIT_ALIASES.get(op, op)
        return next((k for k in (fit_key(op, attrs), op) if k and k in fits), None)

    def fit_for(self, op: str, attrs: Mapping[str, Any], node: str = "") -> Fit:
        """The fit that predicts ``op`` (its conv2d variant's if the profile has one); ``MissingFitError`` if none."""
        key = self._fit_key_for(op, attrs)
        if key is not None:
            return Fit.from_json(self.profile.fits[key])
        from cogent_compiler.cost.profiler import REFERENCE_OPS

        measured = ", ".join(sorted(k for k in self.profile.fits if ":" not in k)) or "none"
        where = self.path or "the profile"
        if op in REFERENCE_OPS:
            hint = f"re-profile with `cogentc profile --target {self.profile.target} --only {op} -o {where}` to add it"
        else:
            hint = "no reference layer of `cogentc profile` measures it yet; use --device-gmacs/--edge-gmacs estimates for this model"
        what = f"op {op!r} (node {node!r})" if node else f"op {op!r}"
        raise MissingFitError(f"{where}: {what} has no fit in this {self.profile.target} profile (it has: {measured}); {hint}")

    @cached_property
    def _kernel_memo(self) -> dict[tuple[Any, ...], float]:
        return {}

    @cached_property
    def _neighbours(self) -> dict[str, Neighbours]:
        by_key: dict[str, list[Sample]] = {}
        for s in self.profile.samples:
            if s.ms <= 0 or s.op == GRAPH:
                continue
            if not s.attrs.get("epilogue") and not s.attrs.get("boundary"):
                by_key.setdefault(s.op, []).append(s)
            variant = fit_key(s.op, s.attrs)
            if variant:
                by_key.setdefault(variant, []).append(s)
        return {k: Neighbours.of(Fit.from_json(self.profile.fits[k]), v, self.cpu) for k, v in by_key.items() if k in self.profile.fits}

    @cached_property
    def cpu(self) -> CPUFacts:
        return cpu_facts(self.profile)

    def kernel_ms(self, op: str, attrs: Mapping[str, Any], macs: float, in_bytes: float, out_bytes: float, param_bytes: float,
                  *, node: str = "", exclude: str = "") -> float:
        """Predicted ms of one kernel with these features: its fit, corrected by its nearest samples (``exclude``: a sample key to leave out).

        Memoised: a planner prices the same pruned node once per candidate cut.
        """
        memo = (op, repr(attrs), macs, in_bytes, out_bytes, param_bytes, exclude)  # attrs hold lists; equal reprs, equal attrs
        ms = self._kernel_memo.get(memo)
        if ms is None:
            if len(self._kernel_memo) >= KERNEL_MEMO_SIZE:
                self._kernel_memo.clear()
            ms = self._kernel_memo[memo] = self._kernel_ms(op, attrs, macs, in_bytes, out_bytes, param_bytes, node, exclude)
        return ms

    def _kernel_ms(self, op: str, attrs: Mapping[str, Any], macs: float, in_bytes: float, out_bytes: float, param_bytes: float,
                   node: str, exclude: str) -> float:
        key = self._fit_key_for(op, attrs)
        fit = self.fit_for(op, attrs, node)
        macs = macs / lane_use(op, attrs, self.cpu.lanes)
        base = fit.predict(macs, _moved(op, attrs, in_bytes, out_bytes, param_bytes, self.cpu))
        near = self._neighbours.get(key or "")
        if near is None:
            return base
        return base * near.correction(_log_features(op, macs, in_bytes, out_bytes, param_bytes, attrs), _shape_class(attrs), exclude)

    def node_ms(self, node: Node, tensors: Mapping[str, TensorInfo] | None = None, *, at_input: bool = False) -> float:
        """Predicted ms of ``node`` as a kernel of its own (``tensors``: known input tensors, see ``node_features``).

        ``at_input``: the node reads its half's input (the caller's NCHW
        layout), so a pooling or ``cat`` is predicted from the ``:boundary``
        samples where the profile has them.
        """
        if node.op in ZERO_COST_OPS:
            return 0.0
        macs, in_b, out_b, par_b = node_features(node, tensors)
        attrs = {**node.attrs, "out_shape": list(node.outputs[0].shape) if node.outputs else []}
        if at_input and node.op in LAYOUT_SENSITIVE and f"{node.op}:boundary" in self.profile.fits:
            attrs["boundary"] = True
        return self.kernel_ms(node.op, attrs, macs, in_b, out_b, par_b, node=node.name) + self.profile.kernel_overhead_ms

    def cast_ms(self, numel: int, in_bytes: int, out_bytes: int) -> float:
        """A dtype conversion priced as the profile's element-wise ``relu``: both are one pass over memory."""
        return self.kernel_ms("relu", {}, 0, in_bytes, out_bytes, 0, node="transfer cast") + self.profile.kernel_overhead_ms

    def leave_one_out(self) -> list[tuple[Sample, float]]:
        """Each kernel sample with its prediction when that sample is left out of the neighbours: (sample, predicted ms).

        The fits keep every sample (one sample among dozens moves them little),
        so this is how the profile predicts a shape it did not measure.
        """
        out = []
        for s in self.profile.samples:
            if s.op == GRAPH or s.attrs.get("epilogue") or s.ms <= 0 or self._fit_key_for(s.op, s.attrs) is None:
                continue
            out.append((s, self.kernel_ms(s.op, s.attrs, s.macs, s.in_bytes, s.out_bytes, s.param_bytes, exclude=s.key)))
        return out

    def nodes_ms(self, nodes: Iterable[Node]) -> float:
        """Predicted ms of ``nodes`` run together (one half).

        Element-wise epilogues are fused as TVM fuses them; a pooling or
        ``cat`` that reads the half's input is predicted in that input's
        layout; and where the half converts layouts (convolutions in NHWC),
        the conversion of each 4-D input that a convolution reads and of each
        4-D output that leaves in NHWC is added (``layout_ms``).  Then the
        ``graph`` fit turns the kernels into a whole call (``in_graph_ms``).
        """
        return self.in_graph_ms(*self._parts(list(nodes)))

    def _parts(self, nodes: Sequence[Node]) -> tuple[float, int, int, int, int]:
        """(ms of the kernels and layout changes, how many kernels, parameter bytes, of them streamed, bytes the kernels write) of the half ``nodes``."""
        tensors = {t.name: t for n in nodes for t in n.outputs}
        fused = fused_epilogues(nodes)
        total = 0.0
        kernels = 0
        for n in nodes:
            if n.name in fused:
                total += self.epilogue_ms(n, fused[n.name])
                continue
            total += self.node_ms(n, tensors, at_input=any(i not in tensors for i in n.inputs))
            kernels += n.op not in ZERO_COST_OPS
        layout, moves = self._layout(nodes)
        act = sum(n.output_bytes for n in nodes if n.op not in ZERO_COST_OPS and n.name not in fused)
        params = sum(n.param_bytes for n in nodes)
        return total + layout, kernels + moves, params, self.streamed_param_bytes(nodes, params), act

    def streamed_param_bytes(self, nodes: Sequence[Node], params: int) -> int:
        """The weights of the half ``nodes`` that each call streams from memory: its linear layers', when all its weights exceed the last-level cache.

        A linear layer at batch 1 reads each weight once, so it runs at the
        speed of wherever its weights are.  Timed alone its weights stay in
        the cache; in a half whose weights do not fit there they come from
        memory (measured here: three 2048-wide linear layers, 42 MB, took 3.6 ms
        as a whole and 1.0 ms as their kernels timed alone).  0 for a profile
        that does not record the cache size (``machine.llc_bytes``).
        """
        if not self.cpu.llc_bytes or params <= self.cpu.llc_bytes:
            return 0
        return sum(n.param_bytes for n in nodes if n.op in ("linear", "matmul"))

    def in_graph_ms(self, kernel_ms: float, kernels: int, param_bytes: int, streamed_bytes: int, act_bytes: int) -> float:
        """A whole call of ``kernels`` kernels predicted at ``kernel_ms`` in all, with ``param_bytes`` of weights (``streamed_bytes``
        of them streamed from memory, see ``streamed_param_bytes``), writing ``act_bytes``.

        The ``graph`` fit (``reference_nets``): ``kernel_ms`` scaled by its
        ``kernel_scale`` (1 for a fit of the gap to kernels timed alone) plus
        what the call costs beyond them; ``kernel_ms`` alone for a profile without one.
        """
        fit = self.profile.fits.get(GRAPH)
        if fit is None or kernels == 0:
            return kernel_ms
        return (float(fit.get("kernel_scale", 1.0)) * kernel_ms + float(fit["per_kernel_ms"]) * kernels
                + float(fit["per_param_byte_ms"]) * (param_bytes - streamed_bytes)
                + float(fit.get("per_streamed_byte_ms", fit["per_param_byte_ms"])) * streamed_bytes
                + float(fit["per_act_byte_ms"]) * act_bytes)

    def layout_ms(self, nodes: Sequence[Node]) -> float:
        """The layout changes at the edges of the half ``nodes`` (0 when the profile has no ``layout_transform`` fits)."""
        return self._layout(nodes)[0]

    def _layout(self, nodes: Sequence[Node]) -> tuple[float, int]:
        """(ms, number) of the layout changes at the edges of the half ``nodes``."""
        fits = self.profile.fits
        if LAYOUT_IN not in fits or LAYOUT_OUT not in fits:
            return 0.0, 0
        produced = {t.name: t for n in nodes for t in n.outputs}
        read = {i for n in nodes for i in n.inputs}
        nhwc: set[str] = set()
        converted: dict[str, Node] = {}  # a half input a convolution reads -> that convolution
        for n in nodes:
            if n.op == "conv2d":
                if n.inputs and n.inputs[0] not in produced:
                    converted.setdefault(n.inputs[0], n)
                nhwc.update(t.name for t in n.outputs if len(t.shape) == 4)
            elif n.op in LAYOUT_AGNOSTIC and any(i in nhwc for i in n.inputs):
                nhwc.update(t.name for t in n.outputs if len(t.shape) == 4)
        ms = 0.0
        fin, fout = Fit.from_json(fits[LAYOUT_IN]), Fit.from_json(fits[LAYOUT_OUT])
        for n in converted.values():
            ms += fin.predict(0, _estimated_input_bytes(n)) + self.profile.kernel_overhead_ms
        for name in nhwc - read:
            ms += fout.predict(0, produced[name].nbytes) + self.profile.kernel_overhead_ms
        return ms, len(converted) + len(nhwc - read)

    def epilogue_ms(self, node: Node, extra_bytes: int) -> float:
        """Predicted ms that ``node`` adds as an epilogue reading ``extra_bytes`` more (``fused_epilogues``).

        The ``add:epilogue`` fit (a measured fused residual add) where the
        profile has one; else the op's own per-byte cost for the extra bytes.
        """
        if not extra_bytes:
            return 0.0
        fits = self.profile.fits
        if f"{node.op}:epilogue" in fits:
            return Fit.from_json(fits[f"{node.op}:epilogue"]).predict(0, extra_bytes)
        return self.fit_for(node.op, node.attrs, node.name).ms_per_byte * extra_bytes

    def to_json(self) -> dict[str, Any]:
        m = self.profile.machine
        return {
            "name": self.name, "source": self.source, "target": self.profile.target, "date": self.profile.date,
            "machine": {"cpu": m.get("cpu"), "cpu_quota": m.get("cpu_quota"), "threads": m.get("threads")},
            "samples": len(self.profile.samples), "kernel_overhead_ms": self.profile.kernel_overhead_ms,
            "fits": {k: ({"ms_per_mac": v["ms_per_mac"], "ms_per_byte": v["ms_per_byte"], "ms_fixed": v["ms_fixed"], "samples": v.get("samples")}
                         if k != GRAPH else dict(v)) for k, v in self.profile.fits.items()},
        }
