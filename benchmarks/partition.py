"""Where to cut: min-cut vs the best single cut vs device-only vs edge-only, predicted per model and bandwidth, a few measured.

For each model (torchvision architectures at 224x224, seeded weights, batch
norm folded: ``benchmarks.models.benchmark_graph``) and each uplink bandwidth,
four plans are scored with the planner's latency model (``LatencyModel``):
device compute from a profile measured on this CPU under a 10 % CPU quota
(the emulated weak device), edge compute from a profile measured at full
speed, and a link of that bandwidth both ways with ``--rtt`` and
``--per-message`` on every request.  Tensors cross as ``--transfer-dtype``
says (default ``auto``: a float32 tensor as float16 where that is faster,
casts included; ``plan_details.*.encodings`` and ``wire_bytes`` show it):

- ``device_only``: everything on the device;
- ``edge_only``: the raw input sent, everything on the edge;
- ``single_cut``: the best cut among the tensors that alone separate input
  from output (``plan_single_cut``'s search; it may be one of the above);
- ``min_cut``: the DADS max-flow/min-cut over the whole DAG
  (``min_cut_tensors``; an empty cut is device-only), scored with the same
  model as the others.

``chosen`` is the fastest of the four (what ``--planner mincut`` ships; ties
go to the simpler plan, in the order above).  Every one of these numbers is
*predicted*; none was run.  Predicting needs no compiling: about a minute for
six models, most of it tracing.

``--measure N`` then runs the chosen plan of N cases end to end on this
machine: the seeded model is saved as ``.pt2``, compiled by ``cogentc`` with
that cut forced, TVM halves with rule-based schedules (``--backend tvm
--no-tunedb``: what the profiles measured) and the same profiles and link
figures, and measured by ``cogentc bench``'s testbed (device and edge in
network namespaces, a ``tbf``-shaped link at the case's bandwidth, the device
under the device profile's CPU quota; needs root).  The cases measured are
those whose chosen plan runs something on the edge, one per model first,
preferring a chosen min-cut and bandwidths near 20 Mbit/s; ``--measure-cases
resnet18@20,...`` names them instead.  Each takes a few minutes (compiling the
halves, and each baseline in ``--measure-plans``).  The testbed's ``tbf`` lets
a burst of 1 ms of bytes (at least two frames) through at line rate
(``testbed.emulation.tbf_burst``; runs before its fix had 10 ms, at least 32 KiB,
and measured small tensors faster than their link allows).

Writes ``benchmarks/results/partition.json``: ``machine``, ``command``,
``profiles``, ``link``, ``cases`` (``model``, ``bandwidth_mbps``, ``plans``:
predicted ms per plan, ``plan_details``: each plan's cut and its device /
transfer / edge split, ``chosen``, and where measured ``measured_ms``, the
median end-to-end latency of the chosen plan, with ``measured``: the bench's
figures per plan run) and ``summary`` (per bandwidth: how often min-cut beats
the best single cut and by how much, which plan is chosen, geomean predicted
speedup of the chosen plan over device-only).  Run as root for ``--measure``:

    .venv/bin/python benchmarks/partition.py                 # predicted: 6 models x {1, 5, 20, 100} Mbit/s, ~1 min
    .venv/bin/python benchmarks/partition.py --measure 3     # and 3 cases measured, ~15 min
    .venv/bin/python benchmarks/partition.py --models squeezenet1_1 --bandwidths 20 -o /tmp/p.json   # quick look
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Six torchvision models whose every op the profiles measure; all but one have branches
#: (residual adds: resnets, mobilenet_v2, mnasnet; concatenations: googlenet, squeezenet).
MODELS = ("resnet18", "resnet50", "mobilenet_v2", "googlenet", "squeezenet1_1", "mnasnet1_0")
BANDWIDTHS_MBPS = (1.0, 5.0, 20.0, 100.0)
#: The plans compared, in the order ties are broken (the simpler plan wins a tie).
PLANS = ("device_only", "edge_only", "single_cut", "min_cut")
PROFILE_DIR = Path.home() / ".cache/cogent/bench-profiles"
DEVICE_PROFILE = PROFILE_DIR / "llvm-t1-quota0.1.json"
EDGE_PROFILE = PROFILE_DIR / "llvm-t1-full.json"
#: How each default profile is made (``cogentc profile`` resumes an existing file).
PROFILE_COMMANDS = {
    str(DEVICE_PROFILE): f"cogentc profile --target llvm --threads 1 --cpu-quota 0.1 --budget 25m -o {DEVICE_PROFILE}",
    str(EDGE_PROFILE): f"cogentc profile --target llvm --threads 1 --budget 25m -o {EDGE_PROFILE}",
}


def load_profile_model(role: str, path: Path) -> Any:
    """The ``ProfileComputeModel`` of ``path``; exits naming the ``cogentc profile`` command that makes it if it is missing."""
    from cogent_compiler.cost import ProfileComputeModel

    if not path.is_file():
        how = PROFILE_COMMANDS.get(str(path), f"cogentc profile --target llvm --threads 1 [--cpu-quota Q] -o {path}")
        raise SystemExit(f"{role} profile {path} does not exist; measure it first (as root for a quota): {how}")
    return ProfileComputeModel.from_file(role, path, expect_target="llvm")


def profile_info(model: Any) -> dict[str, Any]:
    m = model.profile.machine
    return {"path": model.path, "samples": len(model.profile.samples), "date": model.profile.date, "cpu": m.get("cpu"),
            "cpu_quota": m.get("cpu_quota"), "threads": m.get("threads"), "fits": len(model.profile.fits)}


def _detail(graph: Any, cut: Sequence[str], model: Any) -> dict[str, Any]:
    from cogent_compiler.passes import partition_at

    part = partition_at(graph, cut)
    lat = model.estimate(part)
    wire = model.encodings(part)
    wire_bytes = sum(graph.tensors[t].numel * 2 if t in wire else graph.tensors[t].nbytes for t in part.sent)
    return {"cut": list(cut), "predicted_ms": round(lat.total_ms, 3), "device_ms": round(lat.device_ms, 3),
            "transfer_ms": round(lat.transfer_ms, 3), "edge_ms": round(lat.edge_ms, 3), "sent_bytes": part.sent_bytes,
            "wire_bytes": wire_bytes, "encodings": dict(sorted(wire.items())),
            "head_macs_share": round(part.head_macs / graph.total_macs, 4) if graph.total_macs else 0.0}


def predict_case(name: str, graph: Any, model: Any) -> dict[str, Any]:
    """The four plans of ``graph`` under ``model`` (a ``LatencyModel``): predicted ms, details and the chosen one."""
    from cogent_compiler.policy import baseline_plans, min_cut_tensors, plan_single_cut

    base = baseline_plans(graph, model)
    single = plan_single_cut(graph, model).chosen
    sent = min_cut_tensors(graph, model)
    min_cut = sent or tuple(graph.outputs)
    cuts = {"device_only": base["device_only"].cut, "edge_only": base["edge_only"].cut, "single_cut": single.cut, "min_cut": min_cut}
    details = {k: _detail(graph, cuts[k], model) for k in PLANS}
    chosen = min(PLANS, key=lambda k: details[k]["predicted_ms"])  # min keeps the first of equals: PLANS is the tie order
    return {
        "model": name,
        "bandwidth_mbps": model.link.bandwidth_bps / 1e6,
        "plans": {k: details[k]["predicted_ms"] for k in PLANS},
        "chosen": chosen,
        "plan_details": details,
        "min_cut_tensors_sent": len(sent),
        "speedup_predicted_vs_device_only": round(details["device_only"]["predicted_ms"] / details[chosen]["predicted_ms"], 4),
    }


def _geomean(values: Sequence[float]) -> float | None:
    return round(math.exp(statistics.fmean(math.log(v) for v in values)), 4) if values else None


def summarize(cases: Sequence[Mapping[str, Any]], rel_tol: float = 0.005) -> dict[str, Any]:
    """Per bandwidth and overall: min-cut vs best single cut, the chosen plans, speedups over device-only (predicted; measured where run).

    Min-cut *beats* the single cut when it is more than ``rel_tol`` faster,
    *loses* when more than ``rel_tol`` slower (the flow network sums per-op
    times; the plans are scored with fusion and layout costs).
    """
    def block(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        gain = [c["plans"]["single_cut"] / c["plans"]["min_cut"] for c in group]
        better = [g for g in gain if g > 1 + rel_tol]
        return {
            "cases": len(group),
            "min_cut_beats_single_cut": len(better),
            "min_cut_ties_single_cut": sum(1 for g in gain if abs(g - 1) <= rel_tol),
            "min_cut_loses_to_single_cut": sum(1 for g in gain if g < 1 - rel_tol),
            "median_single_over_min_cut_when_better": round(statistics.median(better), 4) if better else None,
            "max_single_over_min_cut": round(max(gain), 4) if gain else None,
            "chosen": {k: sum(1 for c in group if c["chosen"] == k) for k in PLANS},
            "geomean_speedup_chosen_vs_device_only_predicted": _geomean([c["speedup_predicted_vs_device_only"] for c in group]),
        }

    bandwidths = sorted({c["bandwidth_mbps"] for c in cases})
    by_bandwidth = {f"{b:g}": block([c for c in cases if c["bandwidth_mbps"] == b]) for b in bandwidths}
    out: dict[str, Any] = {"all": block(cases), "by_bandwidth_mbps": by_bandwidth}
    measured = [c for c in cases if "measured_ms" in c]
    if measured:
        out["measured"] = {
            "cases": len(measured),
            "geomean_measured_over_predicted": _geomean([c["measured_ms"] / c["plans"][c["chosen"]] for c in measured]),
            "geomean_speedup_chosen_vs_device_only_measured": _geomean(
                [c["measured"]["device_only"]["median_ms"] / c["measured_ms"] for c in measured if "device_only" in c["measured"]]),
        }
    return out


def pick_measured(cases: Sequence[Mapping[str, Any]], n: int, named: Sequence[str] = ()) -> list[Mapping[str, Any]]:
    """The cases to measure: ``named`` (``model@mbps``) if given, else ``n`` whose chosen plan uses the edge (see the module doc)."""
    if named:
        index = {f"{c['model']}@{c['bandwidth_mbps']:g}": c for c in cases}
        missing = [k for k in named if k not in index]
        if missing:
            raise SystemExit(f"--measure-cases {','.join(missing)}: no such case; choose from {', '.join(index)}")
        return [index[k] for k in named]
    split = [c for c in cases if c["chosen"] != "device_only"]
    order = {m: i for i, m in enumerate(MODELS)}
    ranked = sorted(split, key=lambda c: (c["chosen"] != "min_cut", abs(math.log(c["bandwidth_mbps"] / 20)), order.get(c["model"], len(order))))
    picked: list[Mapping[str, Any]] = []
    for c in ranked:  # one per model first
        if c["model"] not in {p["model"] for p in picked}:
            picked.append(c)
    picked += [c for c in ranked if c not in picked]
    return picked[:n]


def save_pt2(name: str, folder: Path) -> Path:
    """The seeded benchmark model ``name`` exported with ``torch.export.save`` (what ``cogentc`` and the bench load)."""
    import torch

    from benchmarks.models import benchmark_model

    path = folder / f"{name}.pt2"
    if not path.exists():
        model, x = benchmark_model(name)
        torch.export.save(torch.export.export(model, (x,)), path)
    return path


def measure_case(case: Mapping[str, Any], args: argparse.Namespace, work: Path, plans: Sequence[str]) -> dict[str, Any]:
    """Compile ``case``'s chosen plan with ``cogentc`` and measure it with ``cogentc bench``'s testbed; the bench figures per plan."""
    from cogent_compiler.cli import main as cogentc
    from cogent_compiler.testbed.bench import BenchConfig, bench_bundle
    from cogent_compiler.testbed.emulation import tbf_burst

    bw = case["bandwidth_mbps"]
    cut = case["plan_details"][case["chosen"]]["cut"]
    out = work / f"{case['model']}-{bw:g}mbit"
    flags = [str(save_pt2(case["model"], work)), "-o", str(out), "--target", "llvm,llvm", "--backend", "tvm", "--no-tunedb", "-q",
             "--device-profile", args.device_profile, "--edge-profile", args.edge_profile,
             "--bandwidth", f"{bw:g}mbit", "--rtt", f"{args.rtt_ms:g}ms", "--cut", ",".join(cut), "--transfer-dtype", args.transfer_dtype]
    t0 = time.time()
    if cogentc(flags) != 0:
        raise SystemExit(f"cogentc failed: cogentc {' '.join(flags)}")
    compiled_s = time.time() - t0
    built = json.loads((out / "plan.json").read_text())["chosen"]
    burst = tbf_burst(int(bw * 1e6))  # the testbed's token bucket: this much crosses at line rate after a pause
    config = BenchConfig(bandwidth_bps=bw * 1e6, rtt_s=args.rtt_ms / 1e3, device_quota=args.device_quota, requests=args.requests,
                         device_cpu=args.device_cpu, edge_cpu=args.edge_cpu)
    say = (lambda stage, msg: print(f"[{stage}] {msg}", file=sys.stderr, flush=True))
    result = bench_bundle(out, config, plans=["chosen", *plans], progress=say, work=work / f"{out.name}.bench")
    (work / f"{out.name}.bench.json").write_text(json.dumps(result, indent=1) + "\n")
    measured = {k: {key: v.get(key) for key in ("median_ms", "p95_ms", "requests", "cut", "predicted_ms", "max_abs_error")}
                for k, v in result["plans"].items()}
    return {"measured_ms": measured["chosen"]["median_ms"], "measured": measured,
            "measured_setup": {"cut_run": built["cut"], "bundle_predicted_ms": round(built["predicted"]["total_ms"], 3),
                               "conditions": result["conditions"], "mode": result["mode"], "tbf_burst_bytes": burst,
                               "sent_bytes": case["plan_details"][case["chosen"]]["sent_bytes"], "compile_s": round(compiled_s, 1),
                               "bench_s": round(time.time() - t0 - compiled_s, 1)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated benchmark models (default: the six above)")
    ap.add_argument("--bandwidths", default=",".join(f"{b:g}" for b in BANDWIDTHS_MBPS), help="uplink = downlink Mbit/s (default 1,5,20,100)")
    ap.add_argument("--rtt-ms", type=float, default=0.0,
                    help="round trip added per request, ms (default 0: the testbed's link adds none; a namespace veth's own is ~0.05 ms)")
    ap.add_argument("--per-message-ms", type=float, default=0.0,
                    help="the runtime's cost per request beyond the round trip, ms, predicted only (default 0; `cogentc profile --peer` measures it)")
    ap.add_argument("--transfer-dtype", default="auto", choices=("auto", "float32", "float16"),
                    help="how float32 tensors cross (cogentc --transfer-dtype; default auto: float16 where it pays)")
    ap.add_argument("--device-profile", default=str(DEVICE_PROFILE), help=f"device compute profile (default {DEVICE_PROFILE})")
    ap.add_argument("--edge-profile", default=str(EDGE_PROFILE), help=f"edge compute profile (default {EDGE_PROFILE})")
    ap.add_argument("--measure", type=int, default=0, help="measure the chosen plan of this many cases end to end (needs root; default 0)")
    ap.add_argument("--measure-cases", default="", help="measure these cases instead, e.g. resnet18@20,mobilenet_v2@5")
    ap.add_argument("--measure-plans", default="device_only",
                    help="baselines bench measures beside each chosen plan: any of device_only,edge_only,single_cut,device_eager or none "
                         "(default device_only)")
    ap.add_argument("--requests", type=int, default=30, help="timed requests per measured plan (default 30)")
    ap.add_argument("--device-quota", type=float, default=None, help="device CPU quota for measuring (default: the device profile's)")
    ap.add_argument("--device-cpu", type=int, default=0, help="core of the measured device (default 0)")
    ap.add_argument("--edge-cpu", type=int, default=1, help="core of the measured edge (default 1)")
    ap.add_argument("--work", default="", help="folder for the measured bundles (default: a temporary one, removed)")
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks/results/partition.json"))
    args = ap.parse_args(argv)

    from benchmarks.common import machine, write_result
    from benchmarks.models import benchmark_graph
    from cogent_compiler.cost import LatencyModel, Link

    plans = [p for p in args.measure_plans.split(",") if p and p != "none"]
    known = ("device_only", "edge_only", "single_cut", "device_eager")
    unknown = sorted(set(plans) - set(known))
    if unknown:
        raise SystemExit(f"--measure-plans {','.join(unknown)}: unknown; choose from {', '.join(known)} or none")
    started = time.time()
    device = load_profile_model("device", Path(args.device_profile))
    edge = load_profile_model("edge", Path(args.edge_profile))
    if args.device_quota is None:
        args.device_quota = device.profile.machine.get("cpu_quota")
    models = [m for m in args.models.split(",") if m]
    bandwidths = [float(b) for b in args.bandwidths.split(",") if b]
    result: dict[str, Any] = {
        "benchmark": "partition",
        "machine": machine(),
        "command": "python benchmarks/partition.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "note": "plans.* and plan_details.* are PREDICTED by the latency model from measured profiles; only measured_ms / measured were run",
        "profiles": {"device": profile_info(device), "edge": profile_info(edge)},
        "link": {"bandwidths_mbps": bandwidths, "both_ways": True, "rtt_ms": args.rtt_ms, "per_message_ms": args.per_message_ms,
                 "edge_load": 1.0, "transfer_dtype": args.transfer_dtype, "source": "flags of this benchmark"},
        "models": models,
        "cases": [],
    }
    t0 = time.time()
    for name in models:
        graph = benchmark_graph(name)
        for bw in bandwidths:
            link = Link(bw * 1e6, args.rtt_ms / 1e3, args.per_message_ms / 1e3, source="benchmark flags")
            case = predict_case(name, graph, LatencyModel(device, edge, link, transfer_dtype=args.transfer_dtype))
            result["cases"].append(case)
            p = case["plans"]
            print(f"{name:<14} {bw:>5g} Mbit/s  device {p['device_only']:8.1f}  edge {p['edge_only']:8.1f}  single {p['single_cut']:8.1f}  "
                  f"min-cut {p['min_cut']:8.1f} ms (sends {case['min_cut_tensors_sent']})  chosen {case['chosen']} "
                  f"{','.join(case['plan_details'][case['chosen']]['cut'])[:40]}  [predicted]", file=sys.stderr, flush=True)
    result["predict_s"] = round(time.time() - t0, 1)

    named = [c for c in args.measure_cases.split(",") if c]
    if args.measure or named:
        from cogent_compiler.testbed.emulation import require_root

        require_root("--measure")
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="cogent-partition-") as tmp:
            work = Path(args.work) if args.work else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            for case in pick_measured(result["cases"], args.measure, named):
                print(f"measuring {case['model']} at {case['bandwidth_mbps']:g} Mbit/s: {case['chosen']} "
                      f"(predicted {case['plans'][case['chosen']]:.1f} ms)", file=sys.stderr, flush=True)
                case.update(measure_case(case, args, work, plans))
                print(f"  measured {case['measured_ms']:.1f} ms (median of {args.requests})", file=sys.stderr, flush=True)
        result["measure_s"] = round(time.time() - t0, 1)
    result["summary"] = summarize(result["cases"])
    result["wall_s"] = round(time.time() - started, 1)
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
