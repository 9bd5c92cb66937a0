"""DADS-style planner: the minimum-latency cut over the whole DAG, by max-flow/min-cut.

Flow network (networkx): a source ``S`` (the device) and a sink ``T`` (the
edge).  For every op ``v``: ``S -> v`` costs its edge time (cut when ``v``
runs on the edge) and ``v -> T`` its device time (cut when it runs on the
device).  Each tensor with a producer ``u`` gets its own node ``x``:
``u -> x`` costs the tensor's transfer time, ``x -> w`` is unbounded for each
consumer ``w`` — so a tensor read by several edge ops is sent once.  Every
data edge also gets an unbounded reverse edge, which forbids an edge op from
feeding a device op.  Model inputs are pinned to the device, and a model
output computed on the edge pays its return transfer.  The minimum cut is
then exactly device time + transfer time + edge time of the partition; the
link's round trip and per-message overhead, paid once whenever anything runs
on the edge, are added afterwards and the device-only plan is compared beside
it.  Edge times include the model's ``edge_load``; tensors sent up use the
uplink bandwidth in their wire dtype (``LatencyModel.send_ms``: float16 where
the model's ``transfer_dtype`` allows and it pays, casts included) and results
coming back the downlink.
"""

from __future__ import annotations

import dataclasses
import logging

from cogent_compiler.cost.latency import LatencyModel
from cogent_compiler.errors import PlanError
from cogent_compiler.ir import Graph
from cogent_compiler.passes.partition import single_tensor_cuts
from cogent_compiler.policy.plan import Plan, PlanReport
from cogent_compiler.policy.single_cut import baseline_plans

__all__ = ["plan_min_cut", "min_cut_tensors"]

log = logging.getLogger(__name__)

_SOURCE, _SINK = "__device__", "__edge__"


def _capacity(ms: float) -> int:
    """A time as an integer capacity (nanoseconds).

    networkx finds the cut's sides from the residual network, treating an
    edge as saturated only when its flow equals its capacity exactly; with
    float times, flows that saturate an edge up to rounding left it open, and
    the planner returned cuts far worse than device-only (mobilenet_v2 at
    1 Mbit/s: edge-only, 60x slower).  Integers make the test exact.
    """
    return max(0, round(ms * 1e6))


def min_cut_tensors(graph: Graph, model: LatencyModel) -> tuple[str, ...]:
    """The set of tensors the minimum cut sends from device to edge (may be empty: device-only)."""
    import networkx as nx

    g = nx.DiGraph()
    for n in graph.nodes:
        g.add_edge(_SOURCE, n.name, capacity=_capacity(model.edge_node_ms(n)))
        g.add_edge(n.name, _SINK, capacity=_capacity(model.device_node_ms(n)))
    # an edge without a capacity is unbounded (networkx's convention)
    for t in graph.inputs:
        g.add_edge(_SOURCE, f"op:{t.name}")  # the input is born on the device
    for name, info in graph.tensors.items():
        producer = graph.producers[name]
        src = producer.name if producer is not None else f"op:{name}"
        x = f"tensor:{name}"
        g.add_edge(src, x, capacity=_capacity(model.send_ms(info)))
        g.add_edge(x, src)
        for c in graph.consumers[name]:
            g.add_edge(x, c.name)
            g.add_edge(c.name, x)
    for o in graph.outputs:
        producer = graph.producers[o]
        if producer is not None:  # the result goes back to the device
            g.add_edge(f"result:{o}", producer.name, capacity=_capacity(model.link.down_ms(graph.tensors[o].nbytes)))
            g.add_edge(_SOURCE, f"result:{o}")
    _, (device_side, _) = nx.minimum_cut(g, _SOURCE, _SINK)
    sent = []
    for name in graph.tensors:
        producer = graph.producers[name]
        src = producer.name if producer is not None else f"op:{name}"
        if src in device_side and any(c.name not in device_side for c in graph.consumers[name]):
            sent.append(name)
    if sent:  # model outputs computed on the device belong to the cut too: the head returns them
        for o in graph.outputs:
            producer = graph.producers[o]
            if o not in sent and (producer is None or producer.name in device_side):
                sent.append(o)
    return tuple(sent)


def plan_min_cut(graph: Graph, model: LatencyModel) -> PlanReport:
    """The min-cut plan, with device-only, edge-only and the best single-tensor cut beside it."""
    baselines = baseline_plans(graph, model)
    singles = [Plan.score(f"cut@{t}", graph, (t,), model) for t in single_tensor_cuts(graph)]
    if singles:
        best_single = min(singles, key=lambda p: p.predicted.total_ms)
        baselines["single_cut"] = dataclasses.replace(best_single, name="single_cut")
    cut = min_cut_tensors(graph, model)
    candidates = list(baselines.values())
    if cut:
        try:
            candidates.append(Plan.score("min_cut", graph, cut, model))
        except Exception as e:  # the construction forbids invalid cuts; say so loudly if one slips through
            raise PlanError(f"{graph.name}: min-cut produced an invalid cut {cut}: {e}") from e
    best = min(candidates, key=lambda p: p.predicted.total_ms)
    chosen = dataclasses.replace(best, name="min_cut")
    log.info("min-cut planner: %s at %.2f ms", ",".join(best.cut), best.predicted.total_ms)
    return PlanReport(graph.name, chosen, baselines, tuple(singles), model.to_json())
