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

A convolution's prediction is then scaled by the median measured/fitted ratio
of the profile's samples with the same output height x width (``ratio_by_hw``
in the fit), where there are any: schedule tiling makes some sizes slower
per MAC than others.

Besides the kernels, each kernel call costs the VM a little
(``kernel_overhead_ms``, the median of ``(wall - Σ kernels) / kernels`` over
the samples), added once per predicted kernel.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cogent_compiler.cost.profile import Profile, Sample, load_profile
from cogent_compiler.errors import MissingFitError, ProfileError
from cogent_compiler.ir import Node
from cogent_compiler.ir.graph import DTYPE_BYTES, TensorInfo

__all__ = [
    "Fit", "ProfileComputeModel", "ZERO_COST_OPS", "EPILOGUE_OPS", "FUSION_ANCHORS",
    "fit_samples", "fit_profile", "fit_key", "node_features", "fused_epilogues",
]

#: Ops that are no kernel after lowering (TVM turns pure reshapes into views).
ZERO_COST_OPS = frozenset({"reshape", "flatten", "view", "squeeze", "unsqueeze", "getitem", "dropout", "identity", "alias", "detach"})
#: Element-wise ops that FuseOps fuses into the kernel whose output they read.
EPILOGUE_OPS = frozenset({"relu", "hardtanh", "relu6", "clamp", "add", "mul", "sub", "sigmoid", "silu", "hardswish", "hardsigmoid", "gelu"})
#: Ops whose kernel takes element-wise epilogues.
FUSION_ANCHORS = frozenset({"conv2d", "linear", "matmul"})
#: Fewest samples a conv2d variant needs for a fit of its own (else the op kind's fit serves it).
MIN_VARIANT_SAMPLES = 3


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
    """The variant fit an op may have beside its kind's (``conv2d:depthwise``), or ``None``."""
    if attrs.get("epilogue"):
        return f"{op}:epilogue"
    if op != "conv2d":
        return None
    groups = int(attrs.get("groups", 1) or 1)
    if groups > 1:
        return "conv2d:depthwise" if groups == int(attrs.get("in_channels", -1)) else "conv2d:grouped"
    kernel = [int(k) for k in attrs.get("kernel", [])]
    if kernel == [1, 1]:
        return "conv2d:1x1"
    return f"conv2d:k{'x'.join(str(k) for k in kernel)}" if kernel else None


def fit_samples(samples: Sequence[Sample]) -> Fit:
    """Fit one model to ``samples`` (see the module doc).  Precondition: at least one sample, every ``ms`` > 0."""
    import numpy as np
    from scipy.optimize import nnls

    if not samples:
        raise ProfileError("no samples to fit")
    x = np.array([[s.macs, s.bytes_moved, 1.0] for s in samples], dtype=np.float64)
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
        variant = fit_key(s.op, s.attrs)
        if not s.attrs.get("epilogue"):  # an epilogue's time is what it adds to a kernel, not the op's own
            by_key.setdefault(s.op, []).append(s)
        if variant:
            by_key.setdefault(variant, []).append(s)
    fits: dict[str, dict[str, Any]] = {}
    for key in sorted(by_key):
        if ":" in key and not key.endswith(":epilogue") and len(by_key[key]) < MIN_VARIANT_SAMPLES:
            continue
        fit = fit_samples(by_key[key])
        fits[key] = fit.to_json()
        by_hw: dict[int, list[float]] = {}
        for s in by_key[key]:
            hw = _sample_hw(s)
            if hw:
                by_hw.setdefault(hw, []).append(s.ms / max(fit.predict(s.macs, s.bytes_moved), 1e-12))
        if by_hw:
            fits[key]["ratio_by_hw"] = {str(hw): round(statistics.median(r), 4) for hw, r in sorted(by_hw.items())}
    overheads = [max(0.0, (s.wall_ms - sum(s.kernels.values())) / len(s.kernels))
                 for s in profile.samples if s.wall_ms is not None and s.kernels]
    return replace(profile, fits=fits, kernel_overhead_ms=float(statistics.median(overheads)) if overheads else 0.0)


def _sample_hw(s: Sample) -> int | None:
    """Output height x width of a conv2d sample (from its output bytes and channels), else ``None``."""
    cout = int(s.attrs.get("out_channels", 0) or 0)
    if s.op != "conv2d" or not cout or s.out_bytes % (4 * cout):
        return None
    return s.out_bytes // (4 * cout)


def _node_hw(node: Node) -> int | None:
    shape = node.outputs[0].shape if node.outputs else ()
    return shape[2] * shape[3] if node.op == "conv2d" and len(shape) == 4 and shape[0] == 1 else None


def _dtype_bytes(node: Node) -> int:
    return DTYPE_BYTES.get(node.outputs[0].dtype, 4) if node.outputs else 4


def _estimated_input_bytes(node: Node) -> int:
    """The activation input of ``node`` when its tensor is not at hand (a graph input, a cut tensor)."""
    if not node.outputs:
        return 0
    out = node.outputs[0]
    a = node.attrs
    if node.op == "conv2d" and len(out.shape) == 4 and "in_channels" in a:
        n, _, ho, wo = out.shape
        dims = []
        for i, o in enumerate((ho, wo)):
            k = int(a.get("kernel", [1, 1])[i])
            s = int(a.get("stride", [1, 1])[i])
            d = int(a.get("dilation", [1, 1])[i])
            pad = a.get("padding", [0, 0])
            p = 0 if isinstance(pad, str) else int(pad[i])
            dims.append(max(1, (o - 1) * s - 2 * p + d * (k - 1) + 1) if not isinstance(pad, str) else o * s)
        return n * int(a["in_channels"]) * dims[0] * dims[1] * _dtype_bytes(node)
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
        if not profile.fits:
            profile = fit_profile(profile)
        return cls(name, profile, str(path))

    @property
    def source(self) -> str:
        return f"profile {self.path}" if self.path else "profile"

    def fit_for(self, op: str, attrs: Mapping[str, Any], node: str = "") -> Fit:
        """The fit that predicts ``op`` (its conv2d variant's if the profile has one); ``MissingFitError`` if none."""
        fits = self.profile.fits
        for key in (fit_key(op, attrs), op):
            if key and key in fits:
                return Fit.from_json(fits[key])
        from cogent_compiler.cost.profiler import REFERENCE_OPS

        measured = ", ".join(sorted(k for k in fits if ":" not in k)) or "none"
        where = self.path or "the profile"
        if op in REFERENCE_OPS:
            hint = f"re-profile with `cogentc profile --target {self.profile.target} --only {op} -o {where}` to add it"
        else:
            hint = "no reference layer of `cogentc profile` measures it yet; use --device-gmacs/--edge-gmacs estimates for this model"
        what = f"op {op!r} (node {node!r})" if node else f"op {op!r}"
        raise MissingFitError(f"{where}: {what} has no fit in this {self.profile.target} profile (it has: {measured}); {hint}")

    def node_ms(self, node: Node, tensors: Mapping[str, TensorInfo] | None = None) -> float:
        """Predicted ms of ``node`` as a kernel of its own (``tensors``: known input tensors, see ``node_features``)."""
        if node.op in ZERO_COST_OPS:
            return 0.0
        fit = self.fit_for(node.op, node.attrs, node.name)
        macs, in_b, out_b, par_b = node_features(node, tensors)
        return fit.predict(macs, in_b + out_b + par_b) * self._hw_ratio(node) + self.profile.kernel_overhead_ms

    def _hw_ratio(self, node: Node) -> float:
        """The measured/fitted ratio of this conv's output size in the profile (1 when none was measured).

        CPU schedules tile the output's rows and columns: how well a size
        divides the tiles changes a convolution's speed by up to 2x at equal
        MACs (56x56 outputs measured slower per MAC than 14x14 or 112x112), which
        no linear fit in MACs and bytes can follow.
        """
        hw = _node_hw(node)
        if hw is None:
            return 1.0
        fits = self.profile.fits
        for key in (fit_key(node.op, node.attrs), node.op):
            if key and key in fits:
                return float(fits[key].get("ratio_by_hw", {}).get(str(hw), 1.0))
        return 1.0

    def nodes_ms(self, nodes: Iterable[Node]) -> float:
        """Predicted ms of ``nodes`` run together (one half): element-wise epilogues fused as TVM fuses them."""
        nodes = list(nodes)
        tensors = {t.name: t for n in nodes for t in n.outputs}
        fused = fused_epilogues(nodes)
        total = 0.0
        for n in nodes:
            if n.name in fused:
                total += self.epilogue_ms(n, fused[n.name])
                continue
            total += self.node_ms(n, tensors)
        return total

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
            "fits": {k: {"ms_per_mac": v["ms_per_mac"], "ms_per_byte": v["ms_per_byte"], "ms_fixed": v["ms_fixed"], "samples": v.get("samples")}
                     for k, v in self.profile.fits.items()},
        }
