"""How close the measured-profile latency model comes: predicted vs measured head and tail latency.

For each model, three single-tensor cuts (the ones nearest a quarter, half and
three quarters of the model's MACs) split it; each half is compiled exactly as
a bundle compiles it (``compile_program``: the TVM pipeline, rule-based
schedules) and timed as a whole call by the profiler's timing worker (by the
wall clock), on this machine at full speed and under a CPU quota (a cgroup, as ``cogentc profile
--cpu-quota`` and the testbed's device use).  The prediction is
``ProfileComputeModel.nodes_ms`` of the half's nodes, from a profile measured
by ``cogentc profile`` under the same condition (the benchmark measures the
profiles first, into ``--profile-dir``, resumably).  A profile never sees the
benchmark's models: its reference layers are a fixed grid of shapes.

The profile's reference networks are timed again before and after the
halves (``machine_drift``): how much faster or slower the machine runs than
when it was profiled, reported beside the errors, not used by them.  With
``--recalibrate`` the benchmark first does what a user does before planning
with a profile measured earlier: ``cogentc profile --recalibrate`` (the
reference networks timed again, the whole-call fit refitted; the layers as
measured).  The cases are then predicted by the recalibrated profile, and
each also keeps ``predicted_uncalibrated_ms`` (per quota: ``uncalibrated``).

Writes ``benchmarks/results/latency_model.json``: ``cases`` (model, cut,
half, target, quota, predicted_ms, measured_ms, rel_error, measured_rounds_ms), their
``median_rel_error`` and ``max_rel_error`` (also per quota), the profiles'
leave-one-out error on their own samples, and ``machine``.

    python benchmarks/latency_model.py                      # 6 models x 3 cuts, full speed and quota 0.1
    python benchmarks/latency_model.py --models resnet18 --quotas none --profile-budget 5m   # quick look
    python benchmarks/latency_model.py --models vit_b_16 --quotas none --profile-budget 15m \
        --profile-only conv2d,linear,layer_norm,scaled_dot_product_attention,softmax,matmul,relu,add,cat,graph \
        --profile-dir /tmp/vit-profiles -o benchmarks/results/latency_model_vit.json   # a transformer
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Six torchvision models whose every op a profile measures; four have branches
#: (residual adds: resnets, mobilenet_v2, mnasnet; concatenations: googlenet, squeezenet).
MODELS = ("resnet18", "resnet50", "mobilenet_v2", "googlenet", "squeezenet1_1", "mnasnet1_0")
CUT_FRACTIONS = (0.25, 0.5, 0.75)


def _parse_quota(text: str) -> float | None:
    return None if text.lower() in ("none", "full", "1", "1.0") else float(text)


def cuts_of(graph: Any, fractions: tuple[float, ...] = CUT_FRACTIONS) -> list[str]:
    """The single-tensor cuts whose head holds the MACs fraction nearest each of ``fractions`` (distinct, in order)."""
    from cogent_compiler.passes import partition_at, single_tensor_cuts

    total = graph.total_macs
    inner = [c for c in single_tensor_cuts(graph) if c not in {t.name for t in graph.inputs} | set(graph.outputs)]
    share = {c: partition_at(graph, [c]).head_macs / total for c in inner}
    chosen: list[str] = []
    for f in fractions:
        best = min((c for c in inner if c not in chosen), key=lambda c: abs(share[c] - f))
        chosen.append(best)
    return sorted(chosen, key=lambda c: share[c])


def compile_halves(graph: Any, cut: str, work: Path) -> dict[str, tuple[Path, list[tuple[int, ...]]]]:
    """Compile the head and tail of ``graph`` cut at ``cut`` as a bundle compiles them: {"head": (folder, input shapes), "tail": ...}."""
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.backends.tvm_backend import compile_program
    from cogent_compiler.passes import partition_at, split_program

    split = split_program(partition_at(graph, [cut]))
    out = {}
    for half, program, inputs in (("head", split.head, split.model_inputs), ("tail", split.tail, split.sent)):
        folder = Path(tempfile.mkdtemp(prefix=f"{half}-", dir=work))
        compile_program(program, split.kind, resolve_target("llvm"), folder, name=f"{graph.name}-{half}")
        out[half] = (folder, [tuple(t.shape) for t in inputs])
    return out


def time_halves(halves: dict[Any, tuple[Path, list[tuple[int, ...]]]], worker: Any, quota: bool, rounds: int) -> dict[Any, list[float]]:
    """Each compiled half's whole call, ms, in each of ``rounds`` rounds that each time every half once.

    Interleaved rounds spread each half's timing over the run: this machine
    is a VM on a shared host, and the same half measured 1.76 ms in one run
    and 2.03 ms in the next.  Load from elsewhere only ever slows a call, so
    a half's time is its fastest round, as a profile's sample is its median
    batch over a fraction of a second.

    Under a quota the half is timed by the wall clock (the profile times its
    layers by CPU time over the quota), in batches of 0.1 s of work, about
    a second: the kernel throttles at its 4 ms tick, so a 10 % quota comes
    in bursts of about 4 ms of work and 36 ms of waiting (measured), and a
    batch of 20 ms of work took 8x to 12x that, by where the bursts fell.
    """
    times: dict[Any, list[float]] = {k: [] for k in halves}
    for _ in range(rounds):
        for key, (folder, shapes) in halves.items():
            answer = worker.time(folder, shapes, 0.1 if quota else 0.05, 3 if quota else 7, kernels=False, wall=True)
            if "error" in answer:
                raise RuntimeError(f"{key}: {answer['error']}")
            times[key].append(round(float(answer["wall_ms"]), 4))
    return times


def machine_drift(model: Any, worker: Any, work: Path, quota: bool) -> dict[str, Any]:
    """The profile's reference networks timed again now, against their time in the profile: is the machine as fast as when profiled?

    This VM shares its host: the same half measured up to 15 % slower half
    an hour later.  The ratio is reported, not used: predictions stay the
    profile's.
    """
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.cost.profiler import GRAPH, LayerSpec, _run_layer

    nets = {}
    for s in model.profile.samples:
        if s.op == GRAPH and s.wall_ms:
            _, _, answer = _run_layer(LayerSpec(GRAPH, 0, net=s.attrs["net"]), resolve_target("llvm"), work, worker, quota)
            nets[s.attrs["net"]] = round(float(answer["wall_ms"]) / s.wall_ms, 3)
    return {"now_over_profile": nets, "median": round(statistics.median(nets.values()), 3) if nets else None}


def _errors(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Median and largest relative error, and the geometric mean of predicted over measured, of (predicted, measured) pairs."""
    e = [abs(p - m) / m for p, m in pairs]
    return {"median_rel_error": round(statistics.median(e), 4), "max_rel_error": round(max(e), 4),
            "geomean_predicted_over_measured": round(math.exp(statistics.fmean(math.log(p / m) for p, m in pairs)), 4)}


def loo_error(model: Any) -> dict[str, float]:
    rel = [abs(p - s.ms) / s.ms for s, p in model.leave_one_out()]
    return {"median": round(statistics.median(rel), 4), "p90": round(sorted(rel)[int(0.9 * (len(rel) - 1))], 4), "samples": len(rel)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--quotas", default="none,0.1", help="comma-separated CPU quotas; none = full speed (default none,0.1)")
    ap.add_argument("--threads", type=int, default=1, help="TVM runtime threads for profiles and halves (default 1: a one-core device)")
    ap.add_argument("--profile-dir", default=str(Path.home() / ".cache/cogent/bench-profiles"),
                    help="where the profiles are measured (and resumed from)")
    ap.add_argument("--profile-budget", default="25m", help="budget of each profile's measuring (default 25m; resumable)")
    ap.add_argument("--profile-only", help="measure only these op kinds' reference layers (cogentc profile --only); default all")
    ap.add_argument("--recalibrate", action="store_true", help="after measuring (or resuming) each profile, time its reference networks again "
                    "(`cogentc profile --recalibrate`) and predict with it; each case keeps the prediction before as predicted_uncalibrated_ms")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds over all halves; each half's fastest counts (default 5)")
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks/results/latency_model.json"))
    args = ap.parse_args(argv)

    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from benchmarks.common import machine
    from benchmarks.models import benchmark_graph
    from cogent_compiler.cost import ProfileComputeModel
    from cogent_compiler.cost.profiler import _Worker, measure_profile, reference_layers
    from cogent_compiler.cost.units import parse_duration
    from cogent_compiler.passes import partition_at

    quotas = [_parse_quota(q) for q in args.quotas.split(",")]
    models = args.models.split(",")
    budget = parse_duration(args.profile_budget)
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "latency_model", "machine": machine(), "threads": args.threads, "models": models,
        "cut_fractions": list(CUT_FRACTIONS), "rounds": args.rounds, "profile_only": args.profile_only, "profiles": {}, "cases": [],
        "command": "python benchmarks/latency_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    graphs = {m: benchmark_graph(m) for m in models}
    for quota in quotas:
        tag = "full" if quota is None else f"quota{quota:g}"
        path = Path(args.profile_dir) / f"llvm-t{args.threads}-{tag}.json"
        t0 = time.time()
        layers = reference_layers(args.profile_only.split(",")) if args.profile_only else None
        measure_profile("llvm", path, budget_s=budget, cpu_quota=quota, threads=args.threads, layers=layers,
                        progress=lambda msg: print(f"[profile {tag}] {msg}", file=sys.stderr, flush=True))
        model = ProfileComputeModel.from_file("device", path, expect_target="llvm")
        result["profiles"][tag] = {"path": str(path), "samples": len(model.profile.samples), "measure_s": round(time.time() - t0, 1),
                                   "leave_one_out_rel_error": loo_error(model)}
        uncalibrated = None
        if args.recalibrate:  # as a user would before planning: `cogentc profile --recalibrate` (see the module doc)
            uncalibrated, t0 = model, time.time()
            measure_profile("llvm", path, budget_s=budget, cpu_quota=quota, threads=args.threads, recalibrate=True,
                            progress=lambda msg: print(f"[recalibrate {tag}] {msg}", file=sys.stderr, flush=True))
            model = ProfileComputeModel.from_file("device", path, expect_target="llvm")
            result["profiles"][tag]["recalibrated"] = {**model.profile.machine["recalibrated"], "seconds": round(time.time() - t0, 1)}
        worker = _Worker(args.threads, quota)
        try:
            with tempfile.TemporaryDirectory(prefix="cogent-latbench-") as tmp:
                halves = {}
                for name, graph in graphs.items():
                    for cut in cuts_of(graph):
                        for half, compiled in compile_halves(graph, cut, Path(tmp)).items():
                            halves[(name, cut, half)] = compiled
                drift_before = machine_drift(model, worker, Path(tmp), quota is not None)
                measured = time_halves(halves, worker, quota is not None, args.rounds)
                drift_after = machine_drift(model, worker, Path(tmp), quota is not None)
                result["profiles"][tag]["machine_drift"] = {"before_halves": drift_before, "after_halves": drift_after}
                print(f"[{tag}] reference networks now / in the profile: {drift_before['median']} before the halves, "
                      f"{drift_after['median']} after", file=sys.stderr, flush=True)
                for name, cut, half in halves:
                    graph = graphs[name]
                    part = partition_at(graph, [cut])
                    nodes = part.head_nodes if half == "head" else part.tail_nodes
                    predicted = model.nodes_ms(graph.node(n) for n in nodes)
                    rounds = measured[(name, cut, half)]
                    ms = min(rounds)
                    case = {"model": name, "cut": cut, "half": half, "target": "llvm", "quota": quota,
                            "head_macs_share": round(part.head_macs / graph.total_macs, 3), "nodes": len(nodes),
                            "predicted_ms": round(predicted, 4), "measured_ms": round(ms, 4), "rel_error": round(abs(predicted - ms) / ms, 4),
                            "measured_rounds_ms": rounds}
                    if uncalibrated is not None:
                        case["predicted_uncalibrated_ms"] = round(uncalibrated.nodes_ms(graph.node(n) for n in nodes), 4)
                    result["cases"].append(case)
                    print(f"{tag:>9} {name:<14} {cut:<24} {half}: predicted {predicted:9.3f} ms, measured {ms:9.3f} ms "
                          f"({predicted / ms:.2f}x)", file=sys.stderr, flush=True)
        finally:
            worker.close()
    errors = [c["rel_error"] for c in result["cases"]]
    result["median_rel_error"] = round(statistics.median(errors), 4)
    result["max_rel_error"] = round(max(errors), 4)
    result["by_quota"] = {}
    for quota in quotas:
        cases = [c for c in result["cases"] if c["quota"] == quota]
        summary = result["by_quota"]["full" if quota is None else f"{quota:g}"] = _errors([(c["predicted_ms"], c["measured_ms"]) for c in cases])
        if any("predicted_uncalibrated_ms" in c for c in cases):  # the same halves predicted by the profile before its recalibration
            summary["uncalibrated"] = _errors([(c["predicted_uncalibrated_ms"], c["measured_ms"]) for c in cases])
    result["targets"] = {"median_rel_error": 0.10, "max_rel_error": 0.25}
    result["wall_s"] = round(time.time() - started, 1)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_rel_error", "max_rel_error", "by_quota", "profiles")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
