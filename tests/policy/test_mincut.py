"""The min-cut planner finds the minimum-latency cut over the whole DAG — checked by brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from cogent_compiler.cost import ComputeModel, LatencyModel, Link
from cogent_compiler.passes import partition_at, single_tensor_cuts
from cogent_compiler.policy import plan_min_cut, plan_single_cut
from cogent_compiler.policy.mincut import min_cut_tensors as mc_tensors
from cut_support import best_total_ms


def _model(bw_mbps: float, device: float, edge: float, rtt_ms: float = 1.0) -> LatencyModel:
    return LatencyModel(ComputeModel("device", device, 5.0), ComputeModel("edge", edge, 5.0), Link(bw_mbps * 1e6, rtt_ms / 1e3))


@pytest.mark.parametrize("bw,device,edge", [(0.5, 0.005, 1.0), (5, 0.02, 5.0), (50, 0.01, 10.0), (1000, 1.0, 1.0)])
def test_min_cut_equals_brute_force_on_a_branching_graph(tiny_graph, bw, device, edge):
    model = _model(bw, device, edge)
    best = best_total_ms(tiny_graph, model)
    report = plan_min_cut(tiny_graph, model)
    assert report.chosen.predicted.total_ms == pytest.approx(best, rel=1e-9)
    assert set(report.baselines) >= {"device_only", "edge_only", "single_cut"}


class TwoBranch(torch.nn.Module):
    """A big input pooled two ways; each small branch feeds heavy convolutions, joined at the end.

    No single tensor separates input from output except the input itself and the
    join, so the single-cut planner must send the big input or do all the heavy
    work on the device; the min-cut sends the two small pooled tensors.
    """

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Sequential(*[torch.nn.Conv2d(16, 16, 3, padding=1) for _ in range(4)])
        self.b = torch.nn.Sequential(*[torch.nn.Conv2d(16, 16, 3, padding=1) for _ in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.nn.functional.max_pool2d(x, 8)
        q = torch.nn.functional.avg_pool2d(x, 8)
        return (self.a(p) + self.b(q)).mean(dim=(2, 3))


def test_min_cut_beats_every_single_cut_when_two_tensors_must_cross():
    from cogent_compiler.frontend import from_module, trace
    from cogent_compiler.passes import split_program
    from cogent_compiler.policy import min_cut_tensors

    model = TwoBranch().eval()
    x = torch.randn(1, 16, 128, 128)
    graph = trace(from_module(model, (x,), name="two_branch"))
    lat = _model(100, device=0.05, edge=100.0)
    mc = plan_min_cut(graph, lat)
    sc = plan_single_cut(graph, lat)
    assert len(mc.chosen.cut) == 2 and set(min_cut_tensors(graph, lat)) == set(mc.chosen.cut)
    assert mc.chosen.predicted.total_ms < 0.5 * sc.chosen.predicted.total_ms
    split = split_program(partition_at(graph, mc.chosen.cut))
    with torch.no_grad():
        sent = split.head.module()(x)
        got = split.tail.module()(*sent)
        got = got[0] if isinstance(got, (tuple, list)) else got
        assert float((got - model(x)).abs().max()) <= 1e-4


def test_min_cut_never_loses_to_the_single_cut_planner(tiny_graph):
    for bw, device, edge in itertools.product((0.2, 2, 20), (0.005, 0.05), (1.0, 20.0)):
        model = _model(bw, device, edge)
        mc = plan_min_cut(tiny_graph, model)
        sc = plan_single_cut(tiny_graph, model)
        assert mc.chosen.predicted.total_ms <= sc.chosen.predicted.total_ms + 1e-9
        partition_at(tiny_graph, mc.chosen.cut)  # a valid cut


def test_min_cut_is_exact_with_float_times_on_a_real_network():
    """Times that saturate flow edges only up to float rounding once made networkx return cuts worse than device-only."""
    import random
    import zlib

    from benchmarks.models import benchmark_graph

    class Ugly:
        """Per-op times with every bit of a float used (as a measured profile's are), the same for a node on every call."""

        def __init__(self, name: str, scale: float, seed: int) -> None:
            self.name, self.source, self.scale, self.seed = name, "test", scale, seed

        def node_ms(self, node):
            rng = random.Random(zlib.crc32(f"{self.seed}:{node.name}".encode()))
            return self.scale * (node.macs / 1e6 + 1.0) * rng.lognormvariate(0.0, 0.5)

        def nodes_ms(self, nodes):
            return sum(self.node_ms(n) for n in nodes)

        def to_json(self):
            return {"name": self.name}

    graph = benchmark_graph("mobilenet_v2")
    for (bw, scale), seed in itertools.product(((1, 0.3), (5, 0.1), (20, 0.03), (100, 0.01)), range(3)):
        model = LatencyModel(Ugly("device", scale, seed), Ugly("edge", scale / 9.7, seed + 7), Link(bw * 1e6, 0.0))
        cut = mc_tensors(graph, model)
        device_only = model.estimate(partition_at(graph, graph.outputs)).total_ms
        best_single = min(model.estimate(partition_at(graph, (t,))).total_ms for t in single_tensor_cuts(graph))
        got = model.estimate(partition_at(graph, cut or graph.outputs)).total_ms
        # the flow network sums per-op times exactly as this estimate does
        assert got <= min(device_only, best_single) * (1 + 1e-6), (bw, scale, seed, cut)


def test_an_output_the_device_computes_is_returned_by_the_head():
    """A model output the min cut leaves on the device must be in the cut, or the tail would have to compute it."""
    from torch import nn

    from cogent_compiler.frontend import from_module, trace

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 3, padding=1)  # b: a small tensor to send
            self.heavy = nn.Sequential(nn.Conv2d(2, 256, 3, padding=1), nn.Conv2d(256, 256, 3, padding=1))  # worth the edge
            self.fc = nn.Linear(256 * 16 * 16, 10)

        def forward(self, x):
            a = self.a(x)
            return torch.relu(a), self.fc(torch.flatten(self.heavy(self.b(a)), 1))

    graph = trace(from_module(TwoHeads().eval(), (torch.randn(1, 3, 16, 16),), name="two_heads"))
    model = LatencyModel(ComputeModel("device", 1.0), ComputeModel("edge", 1000.0), Link(10e6, 0.0))
    report = plan_min_cut(graph, model)  # raised PlanError: the tail would have read a tensor it was not sent
    cut = mc_tensors(graph, model)
    relu_out = graph.outputs[0]
    assert cut and relu_out in cut
    part = partition_at(graph, cut)
    assert relu_out in part.head_outputs and relu_out not in part.sent
    assert report.chosen.predicted.total_ms <= report.baselines["device_only"].predicted.total_ms
