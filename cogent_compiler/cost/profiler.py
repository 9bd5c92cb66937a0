"""Measure reference layers on this machine and write a hardware profile (``cogentc profile``).

Each reference layer (``LayerSpec``) is a small ``torch.nn.Module`` exported
with ``torch.export`` and traced with Cogent's frontend, so a sample's
features (MACs, bytes) are computed exactly as for a user's model; it is
compiled by ``backends.tvm_backend.compile_program`` — the pipeline a bundle
uses (rule-based schedules; no tuning database) — and timed with the TVM
runtime in a separate worker process (``profile_worker``).  Convolutions are
measured with their bias and ReLU epilogue, which TVM fuses into the kernel.

The worker runs with ``TVM_NUM_THREADS=threads`` and, with ``cpu_quota``, in a
cgroup v1 CPU group (period 10 ms, pinned to core 0), the way
``testbed.emulation`` holds an emulated device to its quota; that needs root.

Measuring stops before a layer once ``budget_s`` is spent.  After every layer
the profile (samples and fits) is written to ``out``, so an interrupted run
loses at most one layer, and a run on an existing ``out`` of the same target,
quota and threads keeps its samples and measures only the missing layers.

Without ``rpc`` only this machine's CPU (``llvm``) can be measured.  With
``rpc`` (``--rpc HOST:PORT:KEY``, a TVM RPC tracker and the key of a runner on
the board) the layers are compiled here and timed on that runner by
``remote_worker.RemoteWorker``, for ``llvm``, ``arm`` or ``cuda``; the
profile's ``machine["rpc"]`` records the tracker, the key and what the remote
runtime reports (its threads, CPU or GPU).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cogent_compiler.backends.pipeline import SCHEDULE_RULES
from cogent_compiler.cost.profile import Profile, Sample, load_profile, save_profile, target_kind
from cogent_compiler.cost.reference_nets import REFERENCE_NETS
from cogent_compiler.cost.predictor import ZERO_COST_OPS
from cogent_compiler.errors import ProfileError

if TYPE_CHECKING:
    from cogent_compiler.backends.tuning import RPCSpec
    from cogent_compiler.cost.remote_worker import RemoteWorker

__all__ = ["LayerSpec", "REFERENCE_OPS", "RESIDUAL", "reference_layers", "measure_profile", "BOUNDARY_KERNEL"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: The reference layer whose sample is the cost of a residual add fused into a convolution.
RESIDUAL = "conv2d+add"
#: The reference "layers" that are small whole networks (``reference_nets``): their sample is what a whole call costs beyond its kernels.
GRAPH = "graph"
#: Kernels a lone layer needs only because it is alone: layout changes of its input and output
#: (NCHW <-> NHWC around a convolution); inside a model they are not there.
BOUNDARY_KERNEL = re.compile(r"^(transpose|layout_transform)\d*$")
#: The IR's op kind of ``torch.nn.functional.scaled_dot_product_attention`` (kept whole by the frontend).
ATTENTION = "scaled_dot_product_attention"
#: Reference layers that run on tokens, not images (see ``LayerSpec``).
TOKEN_OPS = frozenset({ATTENTION, "layer_norm", "softmax", "matmul"})
#: Period of the quota cgroup (as the testbed's device): short, so throttling comes in small steps.
QUOTA_PERIOD_US = 10_000
#: How a profile under a CPU quota times a call: its CPU time in the quota's cgroup over the quota.
#: The kernel throttles at its scheduler tick (4 ms here), so a 10 % quota runs a process in bursts
#: of about 4 ms of work and 36 ms of waiting (measured), and a batch of 10 ms of work waited 2 to 3
#: times: its wall time was 8x to 12x its work by chance, and the fastest of five batches
#: under-measured small kernels by a quarter (a mobilenet_v2 head's kernels summed to 13 ms
#: against 21.7 ms for the whole head over seconds).  CPU time does not depend on where the
#: bursts fall, and still holds what throttling costs in cold caches; over many bursts the wall
#: time is the CPU time over the quota (the same head: 21.9 ms).  Profiles timed otherwise
#: (``machine["quota_timing"]`` absent) are measured again.
QUOTA_TIMING = "cpu_time/quota"


@dataclass(frozen=True)
class LayerSpec:
    """One reference layer: ``kind`` (an IR op kind, or ``conv2d+add``) with its shape parameters.

    ``channels`` are input channels (``in_features`` for linear), ``size`` the
    input's height and width (unused for linear).  ``conv2d`` layers carry
    their bias and ReLU (the epilogue TVM fuses); ``conv2d+add`` is a
    convolution with a residual add and ReLU, whose sample is what the add
    costs inside the convolution's kernel.

    Pooling and ``cat`` run in the layout of the convolutions around them
    (NHWC on CPUs): inside a model their input comes from a convolution.  So
    their layer is a 1x1 convolution then the op (then, for ``cat``, another
    1x1 convolution, which keeps the concatenation in NHWC), and only the op's
    own kernel is its time.  With ``boundary`` the op reads the layer's input
    itself, in the caller's NCHW layout, as the first op of a half does: its
    sample has ``"boundary": true`` and a fit of its own (``max_pool2d:boundary``).

    Transformer layers run on tokens, ``size`` of them, ``channels`` wide:
    ``linear`` with ``size`` > 1 maps (1, size, channels) to ``out_channels``
    features per token; ``layer_norm`` normalises (1, size, channels);
    ``scaled_dot_product_attention`` attends over ``groups`` heads of
    ``channels // groups`` features each (one ``torch.nn.functional`` call,
    which the IR keeps whole); ``softmax`` and ``matmul`` are attention written
    out by hand: softmax over the last axis of (1, groups, size, size), and a
    batched (1, groups, size, channels) @ (1, groups, channels, out_channels).
    """

    kind: str
    channels: int
    out_channels: int = 0
    size: int = 1
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    boundary: bool = False
    #: for kind ``graph``: the reference network (``reference_nets``)
    net: str = ""
    #: a convolution's zero padding; -1: ``kernel // 2`` (the output keeps the size, over the stride)
    padding: int = -1

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding < 0 else self.padding

    @property
    def wrapped(self) -> bool:
        """Whether the op sits between convolutions (see the class doc)."""
        return self.kind in LAYOUT_SENSITIVE and not self.boundary

    @property
    def key(self) -> str:
        if self.kind == GRAPH:
            return f"graph {self.net}"
        if self.kind in ("conv2d", RESIDUAL):
            pad = f" p{self.pad}" if self.pad != self.kernel // 2 else ""
            return f"{self.kind} k{self.kernel} s{self.stride} g{self.groups} {self.channels}->{self.out_channels} @{self.size}{pad}"
        if self.kind == "linear":
            return f"linear {self.channels}->{self.out_channels}" + (f" x{self.size}" if self.size > 1 else "")
        if self.kind == "layer_norm":
            return f"layer_norm {self.channels} x{self.size}"
        if self.kind == ATTENTION:
            return f"attention h{self.groups} {self.channels} x{self.size}"
        if self.kind == "softmax":
            return f"softmax h{self.groups} x{self.size}"
        if self.kind == "matmul":
            return f"matmul h{self.groups} {self.channels}->{self.out_channels} x{self.size}"
        where = " at input" if self.boundary else ""
        if self.kind in ("max_pool2d", "avg_pool2d"):
            return f"{self.kind} k{self.kernel} s{self.stride} {self.channels} @{self.size}{where}"
        return f"{self.kind} {self.channels} @{self.size}{where}"

    def module(self) -> tuple[Any, tuple[Any, ...]]:
        """The layer as ``(nn.Module in eval mode, example inputs)``; weights seeded."""
        import torch
        from torch import nn

        if self.kind == GRAPH:
            from cogent_compiler.cost.reference_nets import reference_net

            return reference_net(self.net)
        torch.manual_seed(0)
        x = torch.randn(1, self.channels, self.size, self.size)
        m: nn.Module
        if self.kind == "conv2d":
            conv = nn.Conv2d(self.channels, self.out_channels, self.kernel, self.stride, self.pad, groups=self.groups)
            m = nn.Sequential(conv, nn.ReLU())
        elif self.kind == RESIDUAL:
            class Residual(nn.Module):
                def __init__(self, conv: nn.Module) -> None:
                    super().__init__()
                    self.conv = conv

                def forward(self, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                    return torch.relu(self.conv(a) + r)

            conv = nn.Conv2d(self.channels, self.out_channels, self.kernel, self.stride, self.pad, groups=self.groups)
            side = (self.size + 2 * self.pad - self.kernel) // self.stride + 1
            return Residual(conv).eval(), (x, torch.randn(1, self.out_channels, side, side))
        elif self.kind == "linear":
            tokens = (self.size,) if self.size > 1 else ()
            m, x = nn.Linear(self.channels, self.out_channels), torch.randn(1, *tokens, self.channels)
        elif self.kind == "layer_norm":
            m, x = nn.LayerNorm(self.channels), torch.randn(1, self.size, self.channels)
        elif self.kind in (ATTENTION, "softmax", "matmul"):
            return _attention_part(self)
        elif self.kind == "max_pool2d":
            m = nn.MaxPool2d(self.kernel, self.stride, self.kernel // 2 if self.kernel % 2 else 0)
        elif self.kind == "avg_pool2d":
            m = nn.AvgPool2d(self.kernel, self.stride)
        elif self.kind == "adaptive_avg_pool2d":
            m = nn.AdaptiveAvgPool2d(1)
        elif self.kind == "relu":
            m = nn.ReLU()
        elif self.kind == "hardtanh":
            m = nn.ReLU6()
        elif self.kind in ("add", "cat"):
            class Add(nn.Module):
                def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                    return a + b

            class Cat(nn.Module):
                def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                    return torch.cat([a, b], 1)

            m = Add() if self.kind == "add" else Cat()
            if not self.wrapped:
                return m.eval(), (x, torch.randn(1, self.channels, self.size, self.size))
        else:
            raise ProfileError(f"no reference layer of kind {self.kind!r}; kinds: {', '.join(REFERENCE_OPS)}")
        if self.wrapped:
            return _between_convs(m, self.channels, two_inputs=self.kind == "cat"), (x,)
        return m.eval(), (x,)


def _attention_part(spec: LayerSpec) -> tuple[Any, tuple[Any, ...]]:
    """The attention layers of ``LayerSpec`` (see there): the module and its inputs."""
    import torch
    from torch import nn

    heads, n = spec.groups, spec.size
    if spec.kind == ATTENTION:
        class Attention(nn.Module):
            def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                return nn.functional.scaled_dot_product_attention(q, k, v)

        return Attention().eval(), tuple(torch.randn(1, heads, n, spec.channels // heads) for _ in range(3))
    if spec.kind == "softmax":
        class Softmax(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.softmax(x, dim=-1)

        return Softmax().eval(), (torch.randn(1, heads, n, n),)

    class MatMul(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.matmul(a, b)

    return MatMul().eval(), (torch.randn(1, heads, n, spec.channels), torch.randn(1, heads, spec.channels, spec.out_channels))


def _between_convs(op: Any, channels: int, *, two_inputs: bool) -> Any:
    """``op(conv1x1(x))``, or for a two-input op (cat) ``conv1x1(op(conv1x1(x), conv1x1'(x)))``: see ``LayerSpec``."""
    import torch
    from torch import nn

    class BetweenConvs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.op, self.a = op, nn.Conv2d(channels, channels, 1)
            self.b = nn.Conv2d(channels, channels, 1) if two_inputs else None
            self.after = nn.Conv2d(2 * channels, 8, 1) if two_inputs else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.b is None or self.after is None:
                return self.op(self.a(x))
            return self.after(self.op(self.a(x), self.b(x)))

    return BetweenConvs().eval()


#: Ops whose kernel depends on the layout around them (see ``LayerSpec``).
LAYOUT_SENSITIVE = frozenset({"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "cat"})

#: The op kinds the reference layers cover (``conv2d+add``: a residual add fused into a convolution, see ``_sample``).
REFERENCE_OPS = ("conv2d", "linear", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "relu", "hardtanh", "add", "cat", "conv2d+add",
                 "layer_norm", "scaled_dot_product_attention", "softmax", "matmul", "graph")

_CONV_MAX_MACS = 6e8


def _families() -> list[list[LayerSpec]]:
    """Reference layers by family, each family in ``_spread`` order of size."""
    sizes = (7, 14, 28, 56, 112)
    chans = (8, 16, 32, 64, 128, 256, 512)

    def conv(cin: int, cout: int, hw: int, k: int, s: int = 1, g: int = 1) -> LayerSpec | None:
        macs = cout * (hw // s) ** 2 * (cin // g) * k * k
        return LayerSpec("conv2d", cin, cout, hw, k, s, g) if macs <= _CONV_MAX_MACS else None

    fam: dict[str, list[LayerSpec | None]] = {
        "conv3x3": [conv(c, c, hw, 3) for c in chans for hw in sizes],
        "conv3x3-widen": [conv(c, 2 * c, hw, 3) for c in chans[:-1] for hw in sizes[1:4]],
        "conv1x1": [conv(c, c, hw, 1) for c in chans for hw in sizes],
        "conv1x1-expand": [conv(c, 6 * c, hw, 1) for c in (16, 24, 32, 64, 96, 160) for hw in (7, 14, 28, 56)],
        "conv1x1-project": [conv(6 * c, c, hw, 1) for c in (16, 24, 32, 64, 96, 160) for hw in (7, 14, 28, 56)],
        # bottleneck blocks' 4x contract and expand, past the 512 channels of the square grid
        "conv1x1-bottleneck": [conv(c, c // 4, hw, 1) for c in (256, 512, 1024, 2048) for hw in (7, 14, 28)]
        + [conv(c // 4, c, hw, 1) for c in (256, 512, 1024, 2048) for hw in (7, 14, 28)],
        "conv3x3-s2": [conv(c, 2 * c, hw, 3, 2) for c in chans[:-1] for hw in (14, 28, 56, 112)],
        "conv1x1-s2": [conv(c, 2 * c, hw, 1, 2) for c in (32, 64, 128, 256) for hw in (14, 28, 56)],
        "depthwise": [conv(c, c, hw, 3, 1, c) for c in (16, 32, 96, 144, 192, 384, 576, 960) for hw in sizes],
        "depthwise-s2": [conv(c, c, hw, 3, 2, c) for c in (16, 32, 96, 144, 192, 384, 576, 960) for hw in (14, 28, 56, 112)],
        # 5x5 depthwise (MnasNet, EfficientNet): 25 taps ran 1.3-1.9x slower per MAC than the 3x3 samples predicted
        "depthwise-k5": [conv(c, c, hw, 5, 1, c) for c in (16, 96, 192, 576, 960) for hw in sizes]
        + [conv(c, c, hw, 5, 2, c) for c in (32, 144, 384, 960) for hw in (14, 28, 56, 112)],
        "grouped": [conv(c, c, hw, 3, 1, g) for c, g in ((16, 2), (32, 4), (64, 2), (128, 4), (128, 32), (256, 32)) for hw in (7, 14, 28, 56)],
        # three input channels vectorize poorly: stems are a family of their own (ResNet's 7x7, MobileNet's 3x3)
        "stem": [LayerSpec("conv2d", 3, 16, 32, 3), LayerSpec("conv2d", 3, 32, 224, 3, 2), LayerSpec("conv2d", 3, 64, 224, 7, 2),
                 LayerSpec("conv2d", 3, 8, 16, 3), LayerSpec("conv2d", 3, 32, 64, 3), LayerSpec("conv2d", 3, 16, 112, 3, 2),
                 LayerSpec("conv2d", 3, 32, 112, 7, 2), LayerSpec("conv2d", 3, 64, 112, 7, 2), LayerSpec("conv2d", 3, 16, 56, 7, 2),
                 # 64-channel 3x3 stems (strided and not, as VGG's)
                 LayerSpec("conv2d", 3, 64, 224, 3, 2), LayerSpec("conv2d", 3, 64, 112, 3, 2), LayerSpec("conv2d", 3, 64, 224, 3),
                 # without padding (SqueezeNet 1.1's, Inception v3's): a padded stem tests every input read for the
                 # border, and with 27 MACs per output that ran 1.6x the unpadded one's time here
                 LayerSpec("conv2d", 3, 64, 224, 3, 2, padding=0), LayerSpec("conv2d", 3, 64, 112, 3, 2, padding=0),
                 LayerSpec("conv2d", 3, 32, 224, 3, 2, padding=0)],
        "linear": [LayerSpec("linear", i, o) for i, o in ((8, 10), (64, 64), (256, 10), (512, 100), (512, 1000), (1024, 1024),
                                                          (1280, 1000), (2048, 1000), (4096, 1000))],
        "max_pool2d": [LayerSpec("max_pool2d", c, 0, hw, k, s) for k, s in ((3, 2), (2, 2), (3, 1)) for c in (8, 16, 64, 128, 256) for hw in (14, 28, 56, 112)],
        "avg_pool2d": [LayerSpec("avg_pool2d", c, 0, hw, 2, 2) for c in (16, 64, 256) for hw in (14, 28, 56)],
        "adaptive_avg_pool2d": [LayerSpec("adaptive_avg_pool2d", c, 0, hw) for c in (8, 64, 256, 512, 1280, 2048) for hw in (4, 7, 14)],
        "relu": [LayerSpec("relu", c, 0, hw) for c in (8, 32, 64, 128, 256) for hw in (7, 14, 28, 56, 112)],
        "hardtanh": [LayerSpec("hardtanh", c, 0, hw) for c in (8, 32, 96, 256) for hw in (7, 14, 28, 56, 112)],
        "add": [LayerSpec("add", c, 0, hw) for c in (8, 32, 64, 128, 256, 512) for hw in (7, 14, 28, 56)],
        "cat": [LayerSpec("cat", c, 0, hw) for c in (16, 64, 256) for hw in (7, 14, 28, 56)],
        # transformers (ViT-S/B widths; 16-197 tokens: 4x4 to 14x14 patches and a class token)
        "linear-tokens": [LayerSpec("linear", d, o, n) for d, o in ((64, 64), (192, 576), (384, 384), (384, 1536), (768, 768), (1536, 384))
                          for n in (16, 65, 197)],
        "layer_norm": [LayerSpec("layer_norm", d, 0, n) for d in (64, 192, 384, 768) for n in (16, 65, 197)],
        "attention": [LayerSpec(ATTENTION, d, 0, n, groups=h) for d, h in ((64, 2), (192, 3), (384, 6), (768, 12)) for n in (16, 65, 197)],
        "softmax": [LayerSpec("softmax", 0, 0, n, groups=h) for h in (2, 6, 12) for n in (16, 65, 197)],
        "matmul": [LayerSpec("matmul", k, m, n, groups=h) for h, k, m in ((2, 32, 16), (6, 64, 65), (12, 64, 197), (6, 197, 64)) for n in (16, 65, 197)],
        "graphs": [LayerSpec(GRAPH, 0, net=n) for n in REFERENCE_NETS],
        # the same ops as the first op of a half, reading its NCHW input (see LayerSpec.boundary)
        "at-input": [LayerSpec("max_pool2d", c, 0, hw, 3, 2, boundary=True) for c in (16, 64, 128) for hw in (28, 56, 112)]
        + [LayerSpec("avg_pool2d", c, 0, hw, 2, 2, boundary=True) for c in (64, 256) for hw in (14, 28)]
        + [LayerSpec("adaptive_avg_pool2d", c, 0, hw, boundary=True) for c in (512, 1280, 2048) for hw in (7,)]
        + [LayerSpec("cat", c, 0, hw, boundary=True) for c in (16, 64, 256) for hw in (14, 28)],
        "residual": [LayerSpec(RESIDUAL, c, c, hw, k) for k in (3, 1) for c, hw in ((16, 56), (24, 56), (32, 28), (64, 56), (64, 14), (96, 14),
                                                                                  (128, 28), (160, 7), (256, 14), (512, 7))],
    }

    def size(s: LayerSpec) -> float:
        return max(s.channels, 1) * max(s.out_channels, 1) * s.size * s.size * s.kernel * s.kernel / s.groups / s.stride**2

    out = []
    for specs in fam.values():
        kept = sorted({s for s in specs if s is not None}, key=lambda s: (size(s), s.key))
        out.append([kept[i] for i in _spread(len(kept))])
    return out


def _spread(n: int) -> list[int]:
    """0..n-1 in an order whose every prefix spans the range: 0, the middle, the quarters, the eighths...

    A budget that ends early still leaves each family measured from its
    smallest to near its largest layer, rather than only its small ones.
    """
    order, seen, k = [], set(), 0
    while len(order) < n:
        k += 1
        for j in range(0 if k == 1 else 1, 2**k + 1 if k == 1 else 2**k, 1 if k == 1 else 2):
            i = round(j * (n - 1) / 2**k)
            if i not in seen:
                seen.add(i)
                order.append(i)
    return order


def reference_layers(only: Iterable[str] | None = None) -> list[LayerSpec]:
    """The default reference layers: one family after another in turn, each spread over its sizes (``_spread``).

    Taking families in turn means a short budget still gives every op kind a
    few samples.  ``only``: keep these op kinds.
    """
    wanted = set(only) if only else None
    if wanted:
        unknown = wanted - set(REFERENCE_OPS)
        if unknown:
            raise ProfileError(f"--only {','.join(sorted(unknown))}: no reference layer measures it; choose from {', '.join(REFERENCE_OPS)}")
    fams = [[s for s in f if wanted is None or s.kind in wanted] for f in _families()]
    out: list[LayerSpec] = []
    for i in range(max(len(f) for f in fams)):
        out.extend(f[i] for f in fams if i < len(f))
    return out


class _LayerFailed(Exception):
    """One layer could not be measured; the run reports it and goes on."""


class _Worker:
    """The timing process (``profile_worker``), optionally in a CPU-quota cgroup."""

    def __init__(self, threads: int, cpu_quota: float | None) -> None:
        self.cgroup: Path | None = None
        # the share of the CPU it runs at: the quota, unless its threads cannot use that much
        self.cpu_share = None if cpu_quota is None else min(cpu_quota, float(threads))
        env = {**os.environ, "TVM_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "cogent_compiler.cost.profile_worker"]
        if cpu_quota is not None:
            self.cgroup = _make_quota_cgroup(cpu_quota)
            if shutil.which("taskset"):
                cmd = ["taskset", "-c", "0", *cmd]
            cmd = ["sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True, env=env)
        self._ready = False

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise ProfileError(f"the profiling worker exited (status {code}) before answering; see its messages above")
        return dict(json.loads(line))

    def time(self, folder: Path, inputs: Sequence[Sequence[int]], min_batch_s: float, batches: int, *, kernels: bool = True,
             wall: bool = False) -> dict[str, Any]:
        """The worker's answer for the program in ``folder`` (see ``profile_worker``).

        Under a quota a call's time is its CPU time over the quota
        (``profile_worker.time_call``), unless ``wall``: then the wall clock,
        which needs batches of many quota periods to mean anything.
        """
        if not self._ready:
            self._read()  # the worker's "ready": it has imported TVM
            self._ready = True
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        # under a quota, the fastest batch: on this VM what else runs beside it (cache misses, the
        # host's scheduling) only ever slows a batch
        stdin.write(json.dumps({"folder": str(folder), "inputs": [list(s) for s in inputs], "min_batch_s": min_batch_s, "batches": batches,
                                "kernels": kernels, "fastest": self.cgroup is not None,
                                "cpu_share": None if wall else self.cpu_share}) + "\n")
        stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.cgroup is not None:
            from cogent_compiler.testbed.emulation import _remove_cgroup

            _remove_cgroup(self.cgroup)
            self.cgroup = None


def _make_quota_cgroup(quota: float) -> Path:
    from cogent_compiler.testbed.emulation import CGROUP_CPU, PREFIX, cleanup_stale

    if os.geteuid() != 0:
        raise ProfileError(f"--cpu-quota {quota} needs root (it places the timing process in a cgroup); run as root or drop --cpu-quota")
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        raise ProfileError(f"--cpu-quota: no cgroup v1 cpu controller at {CGROUP_CPU}; a CPU quota cannot be set on this kernel")
    cleanup_stale()
    path = CGROUP_CPU / f"{PREFIX}-{os.getpid()}-prof"
    path.mkdir(exist_ok=True)
    (path / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
    (path / "cpu.cfs_quota_us").write_text(str(max(1000, int(QUOTA_PERIOD_US * quota))))
    return path


def _cache_bytes() -> dict[int, int]:
    """This CPU's data and unified caches by level (Linux sysfs; empty where it cannot be read)."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    sizes: dict[int, int] = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip()
            sizes[int((index / "level").read_text())] = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        except (OSError, ValueError, KeyError):
            continue
    return sizes


def _cpu_facts(tvm_target: Any) -> dict[str, Any]:
    """What the predictor reads of this CPU (``predictor.cpu_facts``): the CPU schedule's vector lanes and register block
    for ``tvm_target`` and the sizes of the L2 and last-level caches."""
    if tvm_target.kind.name != "llvm":
        return {}
    from cogent_compiler.backends.pipeline import _cpu_schedule_for

    schedule = _cpu_schedule_for(tvm_target)
    caches = _cache_bytes()
    return {"vector_lanes": schedule.lanes, "vector_block": schedule.block, "l2_bytes": caches.get(2),
            "llc_bytes": caches[max(caches)] if caches else None}


def _same_cpu(machine: Mapping[str, Any], remote: dict[str, Any] | None) -> bool:
    """Whether a profile's ``machine`` is this machine's CPU, so that facts an older cogentc did not record may be added on resume."""
    from cogent_compiler.testbed.machine import machine_info

    here = machine_info()
    return remote is None and not machine.get("rpc") and machine.get("cpu") == here["cpu"] and machine.get("cores") == here["cores"]


def _new_profile(target_label: str, tvm_target: Any, threads: int, cpu_quota: float | None, remote: dict[str, Any] | None = None) -> Profile:
    from importlib import metadata

    from tvm.target import codegen

    from cogent_compiler.testbed.machine import machine_info

    machine = {**machine_info(), "llvm_mcpu": str(codegen.llvm_get_system_cpu()), "cpu_quota": cpu_quota, "threads": threads,
               "quota_period_us": QUOTA_PERIOD_US if cpu_quota is not None else None,
               "quota_timing": QUOTA_TIMING if cpu_quota is not None else None}
    if remote is not None:  # measured on the RPC runner: this machine only compiled
        name = remote.get("device_name") or remote.get("llvm_mcpu")
        machine = {"rpc": remote, "cpu": f"rpc {remote['key']} at {remote['tracker']}" + (f" ({name})" if name else ""),
                   "llvm_mcpu": remote.get("llvm_mcpu"), "cpu_quota": None, "threads": threads, "quota_period_us": None}
    if remote is None:
        machine.update(_cpu_facts(tvm_target))
    return Profile(
        target=target_label, tvm_target=str(tvm_target), machine=machine, tvm=metadata.version("apache-tvm"),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), schedule_rules=SCHEDULE_RULES,
    )


def _run_layer(spec: LayerSpec, target: Any, work: Path, worker: _Worker | RemoteWorker, quota: bool) -> tuple[Any, dict[str, float], dict[str, Any]]:
    """Trace, compile and time ``spec``: (its traced graph, kernel -> ms, the worker's answer)."""
    from cogent_compiler.backends.tvm_backend import compile_program
    from cogent_compiler.frontend import from_module, trace

    module, inputs = spec.module()
    loaded = from_module(module, inputs, name=spec.key)
    graph = trace(loaded)
    # a fresh folder per layer: the worker's loader would hand back a library already loaded from the same path
    folder = Path(tempfile.mkdtemp(prefix="layer-", dir=work))
    compile_program(loaded.program, "torch", target, folder, name=spec.key, kernel_info=getattr(worker, "kernel_info", False))
    # batches of 10 ms of CPU time (profile_worker.time_call); under a quota a call costs its CPU time
    # over the quota (see QUOTA_TIMING)
    answer = worker.time(folder, [tuple(x.shape) for x in inputs], 0.01, 5 if quota else 7)
    shutil.rmtree(folder, ignore_errors=True)
    if "error" in answer:
        raise _LayerFailed(f"timing failed: {answer['error']}")
    kernels = {f"{s}#{i}" if any(k == s for k, _ in answer["kernels"][:i]) else s: round(float(ms), 6)
               for i, (s, ms) in enumerate(answer["kernels"])}
    return graph, kernels, answer


def _own_ms(spec: LayerSpec, kernels: dict[str, float]) -> float:
    """The layer's time: its kernels but the boundary layout changes (and, for an op between convolutions, those).

    A transformer layer has no layout change to leave out: its transposes
    (attention's heads moved next to the batch) are its own work.
    """
    tokens = spec.kind in TOKEN_OPS or (spec.kind == "linear" and spec.size > 1)
    own = [ms for s, ms in kernels.items()
           if (tokens or not BOUNDARY_KERNEL.match(s.split("#")[0])) and not (spec.wrapped and "conv2d" in s)]
    if not own:
        raise _LayerFailed(f"the compiled layer ran no kernel of its own (kernels: {list(kernels)})")
    return sum(own)


def _sample(spec: LayerSpec, target: Any, work: Path, worker: _Worker | RemoteWorker, quota: bool) -> Sample:
    graph, kernels, answer = _run_layer(spec, target, work, worker, quota)
    if spec.kind == GRAPH:
        # what the whole call costs beyond its kernels timed alone (see reference_nets)
        wall = float(answer["wall_ms"])
        act = sum(n.output_bytes for n in graph.nodes if n.op not in ZERO_COST_OPS)
        # its nodes too: the predictor fits the gap between this wall time and its own prediction of them
        nodes = [n.to_json() for n in graph.nodes]
        return Sample(op=GRAPH, attrs={"net": spec.net, "kernels": len(kernels), "act_bytes": act, "nodes": nodes}, macs=graph.total_macs,
                      in_bytes=sum(t.nbytes for t in graph.inputs), out_bytes=sum(graph.tensors[o].nbytes for o in graph.outputs),
                      param_bytes=sum(n.param_bytes for n in graph.nodes), ms=round(max(wall - sum(kernels.values()), 1e-6), 6),
                      runs=int(answer["runs"]), key=spec.key, wall_ms=round(wall, 6), kernels=kernels)
    op = "add" if spec.kind == RESIDUAL else spec.kind
    main = next((n for n in graph.nodes if n.op == op), None)
    if main is None:
        raise ProfileError(f"reference layer {spec.key!r} traced to no {op} op ({[n.op for n in graph.nodes]}); this is a bug")
    ms = _own_ms(spec, kernels)
    if spec.kind == RESIDUAL:
        # the add's cost as a fused epilogue: conv+add+relu minus conv+relu of the same shape, measured now
        _, base_kernels, _ = _run_layer(replace(spec, kind="conv2d"), target, work, worker, quota)
        residual = graph.tensors[graph.inputs[1].name].nbytes
        return Sample(op="add", attrs={"epilogue": True}, macs=0, in_bytes=residual, out_bytes=0, param_bytes=0,
                      ms=round(max(ms - _own_ms(spec, base_kernels), 1e-6), 6), runs=int(answer["runs"]), key=spec.key,
                      kernels={**kernels, **{f"without add: {k}": v for k, v in base_kernels.items()}})
    in_bytes = sum(graph.tensors[i].nbytes for i in dict.fromkeys(main.inputs))
    attrs = {**main.attrs, "out_shape": list(main.outputs[0].shape)}
    if spec.boundary or (spec.kind in LAYOUT_SENSITIVE and not spec.wrapped):
        attrs["boundary"] = True
    return Sample(op=main.op, attrs=attrs, macs=main.macs, in_bytes=in_bytes, out_bytes=main.output_bytes,
                  param_bytes=main.param_bytes, ms=round(ms, 6), runs=int(answer["runs"]), key=spec.key,
                  wall_ms=round(float(answer["wall_ms"]), 6), kernels=kernels)


def measure_profile(
    target: str,
    out: str | Path,
    *,
    budget_s: float = 600.0,
    cpu_quota: float | None = None,
    threads: int | None = None,
    layers: Sequence[LayerSpec] | None = None,
    progress: Progress | None = None,
    rpc: RPCSpec | None = None,
    recalibrate: bool = False,
) -> Profile:
    """Measure ``layers`` (default ``reference_layers()``) for ``target`` into the profile file ``out``.

    Resumes ``out`` when it holds a profile of the same target, quota and
    threads (refuses another profile there).  Returns the profile written,
    fitted.  ``recalibrate``: time again only the reference networks of the
    profile already in ``out`` (``reference_nets``), replacing their samples,
    so the ``graph`` fit re-anchors the layers' shape of cost to the machine's
    speed now; each network's new time over its old is recorded in
    ``machine["recalibrated"]``.  ``rpc``: time on that tracker's runner (``RemoteWorker``) instead
    of here; it takes no ``cpu_quota`` or ``threads`` (the runner's runtime
    sets its threads).  Raises ``ProfileError`` for targets this machine cannot
    measure without ``rpc``, a quota without root, an unreachable tracker or
    one without a runner for the key, or when no layer could be measured.
    """
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.backends.tvm_backend import tvm_target_for
    from cogent_compiler.cost.predictor import fit_profile
    from cogent_compiler.runtime.executor import runtime_threads

    say = progress or (lambda msg: log.info("%s", msg))
    t0 = time.monotonic()
    spec = resolve_target(target)
    if spec.kind != "llvm" and rpc is None:
        raise ProfileError(f"cogentc profile --target {target}: measuring {spec.label} needs --rpc HOST:PORT:KEY (a TVM RPC tracker "
                           "and the key of a runner on that device); without it only llvm (this CPU) can be profiled")
    if rpc is not None and (cpu_quota is not None or threads is not None):
        flag = "--cpu-quota" if cpu_quota is not None else "--threads"
        raise ProfileError(f"{flag} with --rpc: the remote runner times with its own CPU and threads (start its rpc_server with "
                           f"TVM_NUM_THREADS=N); drop {flag}, or drop --rpc to measure this machine")
    if cpu_quota is not None and not 0.001 <= cpu_quota <= (os.cpu_count() or 1):
        raise ProfileError(f"--cpu-quota {cpu_quota}: give a fraction of one core such as 0.1")
    if budget_s <= 0:
        raise ProfileError(f"--budget {budget_s}s: give a positive time such as 10m")
    remote: RemoteWorker | None = None
    remote_info: dict[str, Any] | None = None
    if rpc is not None:
        from cogent_compiler.cost.remote_worker import RemoteWorker

        remote = RemoteWorker(rpc, spec.device)
        remote_info = remote.info()
        threads = int(remote_info.get("threads") or 1)
    threads = runtime_threads() if threads is None else threads
    if threads < 1:
        raise ProfileError(f"--threads {threads}: give at least 1")
    out = Path(out)
    layers = list(layers) if layers is not None else reference_layers()

    profile: Profile | None = None
    if out.exists():
        old = load_profile(out)
        same = (target_kind(old.target) == spec.kind and old.cpu_quota == cpu_quota and old.threads == threads
                and (old.machine.get("rpc") or {}).get("key") == (rpc.key if rpc else None))
        if not same:
            raise ProfileError(f"{out}: holds a profile of target {old.target} (quota {old.cpu_quota}, threads {old.threads}), "
                               f"not {spec.label} (quota {cpu_quota}, threads {threads}); give another -o or delete it")
        if old.schedule_rules != SCHEDULE_RULES:
            # its kernels were timed as other rules scheduled them: nothing in it is what a compile now runs
            say(f"{out} was measured with schedule rules v{old.schedule_rules}, this compiler's are v{SCHEDULE_RULES}: measuring it again")
        elif cpu_quota is not None and old.machine.get("quota_timing") != QUOTA_TIMING:
            say(f"{out} timed its layers under the quota by the wall clock, which depends on where the throttling falls: measuring it again")
        else:
            profile = replace(old, machine={**_cpu_facts(tvm_target_for(spec)), **old.machine}) if _same_cpu(old.machine, remote_info) else old
            say(f"resuming {out}: {len(old.samples)} samples kept")
    tvm_target = tvm_target_for(spec)
    if recalibrate:
        if profile is None:
            raise ProfileError(f"--recalibrate: {out} holds no profile this compiler can recalibrate; measure one first with "
                               f"`cogentc profile --target {target} -o {out}`" + (f" --cpu-quota {cpu_quota}" if cpu_quota is not None else ""))
        before = {s.key: s.wall_ms for s in profile.samples if s.op == GRAPH and s.wall_ms}
        todo = [s for s in layers if s.kind == GRAPH and s.key in before]
        ratios: dict[str, float] = {}
        if not todo:
            raise ProfileError(f"--recalibrate: {out} has no reference network to time again; measure them with "
                               f"`cogentc profile --target {target} --only graph -o {out}`")
    else:
        if profile is None:
            profile = _new_profile(spec.label, tvm_target, threads, cpu_quota, remote_info)
        todo = [s for s in layers if s.key not in profile.keys]
    what = f"recalibrating {out}: {len(todo)} reference networks to time again" if recalibrate else f"{len(todo)} of {len(layers)} reference layers to measure"
    say(f"{what} on {spec.label}{f' through {rpc.host}:{rpc.port}:{rpc.key}' if rpc else ''} "
        f"({threads} thread{'s' if threads > 1 else ''}{f', CPU quota {cpu_quota}' if cpu_quota is not None else ''}; budget {budget_s:.0f}s)")
    worker = remote or _Worker(threads, cpu_quota)
    measured = failed = 0
    try:
        with tempfile.TemporaryDirectory(prefix="cogent-profile-") as tmp:
            for i, layer in enumerate(todo):
                spent = time.monotonic() - t0
                if spent >= budget_s:
                    say(f"budget spent ({spent:.0f}s): {len(todo) - i} layers left; run again with the same -o to continue")
                    break
                try:
                    sample = _sample(layer, spec, Path(tmp), worker, cpu_quota is not None)
                except ProfileError:  # the worker is gone, or a bug: nothing more can be measured
                    raise
                except Exception as e:  # a layer TVM cannot compile is reported and skipped, not fatal
                    failed += 1
                    first = (str(e).strip().splitlines() or [""])[0][:200]
                    say(f"[{i + 1}/{len(todo)}] {layer.key}: skipped ({type(e).__name__}: {first})")
                    continue
                measured += 1
                # saved unfitted (fitting takes about a second): the loader fits a profile that has no fits
                kept = tuple(s for s in profile.samples if s.key != sample.key)  # a recalibrated network replaces its old sample
                profile = replace(profile.with_samples((*kept, sample)), fits={})
                if recalibrate:
                    ratios[sample.key] = round(float(sample.wall_ms or 0.0) / before[sample.key], 4)
                    profile = replace(profile, machine={**profile.machine, "recalibrated": {
                        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "now_over_before": dict(ratios),
                        "median": round(statistics.median(ratios.values()), 4)}})
                save_profile(profile, out)
                call = f"; call {sample.wall_ms:.4f} ms" if sample.wall_ms is not None else " added to the convolution"
                say(f"[{i + 1}/{len(todo)}] {layer.key}: {sample.ms:.4f} ms ({sample.runs} runs{call})")
    finally:
        worker.close()
    if not profile.samples:
        raise ProfileError(f"{out}: no layer could be measured ({failed} failed); see the messages above")
    profile = fit_profile(profile)
    save_profile(profile, out)
    if recalibrate and measured:
        r = profile.machine["recalibrated"]
        say(f"reference networks now run at {r['median']}x their time before (median of {len(r['now_over_before'])}); the graph fit is refitted to them")
    say(f"wrote {out}: {len(profile.samples)} samples ({measured} new), fits for {', '.join(profile.fits)} in {time.monotonic() - t0:.0f}s")
    return profile
