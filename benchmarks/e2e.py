"""End-to-end latency on the emulated deployment: Cogent's plan vs every baseline, measured.

For each model (torchvision architectures at 224x224, seeded weights saved as
.pt2) and each bandwidth, on the testbed (device: one core under a 10 % CPU
quota; edge: one full core; link shaped with tbf):

1. calibrate: the device-only bundle is measured on the device (quota) and on
   the edge core (no quota); the two throughputs (GMAC/s) feed the planner's
   latency model (``--device-gmacs/--edge-gmacs``) — measured, not assumed;
2. per bandwidth: compile with the single-cut planner and measure the chosen
   plan and edge-only (raw input sent); device-only and PyTorch eager do not
   use the link and are measured once per model.

Writes ``benchmarks/results/e2e.json``.  Needs root (namespaces, tc, cgroups).
Run: ``sudo .venv/bin/python benchmarks/e2e.py`` (about 30-60 min), or
``--smoke`` for a one-minute check on a tiny model.

``--policy`` measures the learned policy's plans instead (pruning + partition,
``cogentc --planner rl``) on a model trained on scikit-learn's digits inside
the benchmark (``benchmarks/digits_models.py``: torchvision's ResNet-18 at
3x128x128), so accuracy is measured: the compile prunes by the policy's
answer, fine-tunes (``--finetune-steps``) and holds top-1 on held-out digits
to ``--max-drop``.  Why not a smaller model: the 10 % quota gives the device
1 ms of CPU every 10 ms (the kernel's smallest quota), so a request needing
under about 1 ms of CPU at full speed runs unthrottled and the device is not
slow at all (the VGG-style digits CNN, 38 MMAC, measured 0.4 ms median
under the quota); at 128x128 ResNet-18 needs about 5 ms.  ``--device-sched repeat`` slows the
device by running each inference's compute 1/quota times instead
(``cogent_compiler/testbed/slowdown.py``), which slows short work too: a
heavily pruned head is timed as a slow device runs it, not at full speed
inside the quota's first millisecond.  Per model, one policy is trained (over
ranges of bandwidth, RTT, edge load and device speed) at the first
bandwidth's compile and answers the others from the cache.  Per case:
device-only, edge-only and the best single cut of the *unpruned* model,
all measured; ``speedup_vs_device_only`` and
``speedup_vs_best_partition_only`` (the fastest of those three, measured:
what partitioning alone reaches).  Writes ``results/e2e-policy.json``:
``sudo .venv/bin/python benchmarks/e2e.py --policy`` (about 40 min).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks.digits_models: the --policy models' factories
    sys.path.insert(0, str(REPO))

from cogent_compiler.cli import main as cogentc  # noqa: E402
from cogent_compiler.frontend import load_model, trace  # noqa: E402
from cogent_compiler.testbed.bench import BenchConfig, bench_bundle  # noqa: E402
from cogent_compiler.testbed.machine import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parent
MODELS = ("resnet18", "mobilenet_v2", "resnet50", "vgg16")
BANDWIDTHS = (5, 20, 100)


def save_model(name: str, folder: Path, shape: tuple[int, ...]) -> Path:
    """A torchvision architecture with seeded random weights, saved with torch.export.save."""
    path = folder / f"{name}.pt2"
    if not path.exists():
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        torch.export.save(torch.export.export(model, (torch.randn(*shape),)), path)
    return path


#: how tensors cross: set from --transfer-dtype (float32 by default, as in the committed results)
TRANSFER_DTYPE = ["--transfer-dtype", "float32"]


def compile_bundle(model: str | Path, out: Path, *flags: str) -> dict:
    code = cogentc([str(model), "-o", str(out), "--target", "llvm,llvm", "-q", *TRANSFER_DTYPE, *flags])
    if code != 0:
        raise SystemExit(f"cogentc failed on {model} {flags}")
    return json.loads((out / "plan.json").read_text())


def edge_speed_ms(bundle: Path, edge_cpu: int, requests: int) -> float:
    """Median latency of the device-only bundle run on the edge's core, without a quota."""
    r = subprocess.run(
        ["taskset", "-c", str(edge_cpu), sys.executable, "-m", "cogent_compiler.runtime.device", "run",
         str(bundle / "device"), "--input", str(bundle.parent / "x.npy"), "--repeat", str(requests), "--json"],
        capture_output=True, text=True, check=True, env={"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    return json.loads(r.stdout.strip().splitlines()[-1])["median_ms"]["total_ms"]


def calibrate(name: str, model: str | Path, model_flags: tuple[str, ...], macs: int, work: Path, args: argparse.Namespace,
              say) -> tuple[dict, float, float]:
    """Measure the device-only bundle on the device (quota) and on the edge core: (its bench result, device GMAC/s, edge GMAC/s)."""
    config = BenchConfig(bandwidth_bps=args.bandwidths[0] * 1e6, device_quota=args.quota, device_sched=args.device_sched,
                         requests=args.requests, containers=args.containers)
    dev_only = work / f"{name}-device-only"
    compile_bundle(model, dev_only, *model_flags, "--planner", "device")
    base = bench_bundle(dev_only, config, plans=("device_eager", "chosen"), progress=say, work=work / f"{name}-calib")
    device_ms = base["plans"]["chosen"]["median_ms"]
    edge_ms = edge_speed_ms(dev_only, config.edge_cpu, min(args.requests, 10))
    device_gmacs, edge_gmacs = macs / device_ms / 1e6, macs / edge_ms / 1e6
    say("calibrate", f"{name}: device {device_gmacs:.2f} GMAC/s (quota {args.quota}), edge {edge_gmacs:.2f} GMAC/s")
    return base, device_gmacs, edge_gmacs


def run_model(name: str, work: Path, args: argparse.Namespace, say) -> list[dict]:
    import numpy as np

    shape = (1, 3, args.size, args.size)
    model = save_model(name, work, shape)
    macs = trace(load_model(str(model))).total_macs
    np.save(work / "x.npy", np.random.default_rng(0).standard_normal(shape).astype("float32"))
    base, device_gmacs, edge_gmacs = calibrate(name, model, (), macs, work, args, say)

    cases = []
    for bw in args.bandwidths:
        out = work / f"{name}-{bw}mbit"
        plan = compile_bundle(model, out, "--bandwidth", f"{bw}mbit", "--rtt", "0ms",
                              "--device-gmacs", f"{device_gmacs:.4f}", "--edge-gmacs", f"{edge_gmacs:.4f}")
        cfg = BenchConfig(bandwidth_bps=bw * 1e6, device_quota=args.quota, device_sched=args.device_sched, requests=args.requests,
                          containers=args.containers)
        r = bench_bundle(out, cfg, plans=("chosen", "edge_only"), progress=say, work=work / f"{name}-{bw}mbit-bench")
        measured = {
            "chosen": r["plans"]["chosen"],
            "edge_only": r["plans"]["edge_only"],
            "device_only": base["plans"]["chosen"],
            "device_eager": base["plans"]["device_eager"],
        }
        predicted = {"chosen": plan["chosen"]["predicted"]["total_ms"], **{k: v["predicted"]["total_ms"] for k, v in plan["baselines"].items()}}
        # the single-cut planner is the only planner today: the best single cut is the chosen plan
        plans = {
            k: {"measured_ms": m["median_ms"], "p95_ms": m["p95_ms"], "predicted_ms": predicted.get(k), "max_abs_error": m["max_abs_error"],
                "cut": m.get("cut"), **({k2: m[k2] for k2 in m if k2.endswith("_bytes")})}
            for k, m in measured.items()
        }
        plans["single_cut"] = dict(plans["chosen"], note="the single-cut planner chose this plan")
        chosen_ms = plans["chosen"]["measured_ms"]
        cases.append({
            "model": name,
            "bandwidth_mbps": bw,
            "macs": macs,
            "calibration": {"device_gmacs": device_gmacs, "edge_gmacs": edge_gmacs},
            "plans": plans,
            "chosen": plan["chosen"]["cut"],
            "speedup_vs_device_eager": plans["device_eager"]["measured_ms"] / chosen_ms,
            "speedups": {f"vs_{k}": p["measured_ms"] / chosen_ms for k, p in plans.items() if k != "chosen"},
            "accuracy_drop": 0.0,
        })
        say("case", f"{name} @ {bw} Mbit/s: cut {plan['chosen']['cut']}, {chosen_ms:.0f} ms, "
            f"{cases[-1]['speedup_vs_device_eager']:.2f}x vs device eager")
    return cases


#: --policy: the digits-trained models (benchmarks/digits_models.py TRAINED)
POLICY_MODELS = ("resnet18_digits",)


def measured_plan(m: dict, predicted: float | None, *, checked: bool = True) -> dict:
    """A bench measurement as a case's plan; ``checked``: also its output error against the eager model (an unpruned plan)."""
    return {"measured_ms": m["median_ms"], "p95_ms": m["p95_ms"], "predicted_ms": predicted, "cut": m.get("cut"),
            **{k: m[k] for k in m if k.endswith("_bytes")}, **({"max_abs_error": m["max_abs_error"]} if checked else {})}


def run_policy_model(name: str, work: Path, args: argparse.Namespace, say) -> list[dict]:
    """The policy's plans (pruning + cut) for one digits-trained model at every bandwidth, beside partitioning alone."""
    import os

    import numpy as np

    from benchmarks.digits_models import TRAINED, trained

    shape = TRAINED[name][1]
    spec = f"benchmarks.digits_models:{name}_trained"
    shape_flags = ("--input-shape", ",".join(map(str, shape)))
    t = time.time()
    trained(name)  # trains once (seeded), cached; the factory the compiles load reads the cache
    say("train", f"{name}: trained on digits ({time.time() - t:.0f}s)")
    macs = trace(load_model(spec, input_shape=shape)).total_macs
    np.save(work / "x.npy", np.random.default_rng(0).standard_normal(shape).astype("float32"))
    os.environ["COGENT_POLICIES"] = str(work / "policies")  # this run's own policies, trained here
    base, device_gmacs, edge_gmacs = calibrate(name, spec, shape_flags, macs, work, args, say)
    gmacs = ["--device-gmacs", f"{device_gmacs:.4f}", "--edge-gmacs", f"{edge_gmacs:.4f}"]

    cases = []
    for bw in args.bandwidths:
        link = ["--bandwidth", f"{bw}mbit", "--rtt", "0ms", *gmacs]
        t = time.time()
        rl_out = work / f"{name}-{bw}mbit-rl"
        rl_plan = compile_bundle(spec, rl_out, *shape_flags, "--planner", "rl", "--data", "digits", "--max-accuracy-drop", str(args.max_drop),
                                "--rl-steps", str(args.rl_steps), "--finetune-steps", str(args.finetune_steps),
                                "--max-prune-ratio", str(args.max_prune_ratio), "--search-finetune-steps", str(args.search_finetune_steps), *link)
        compile_s = time.time() - t
        part_out = work / f"{name}-{bw}mbit-partition"
        part_plan = compile_bundle(spec, part_out, *shape_flags, "--planner", "single-cut", *link)
        cfg = BenchConfig(bandwidth_bps=bw * 1e6, device_quota=args.quota, device_sched=args.device_sched, requests=args.requests,
                          containers=args.containers)
        r_rl = bench_bundle(rl_out, cfg, plans=("chosen",), progress=say, work=work / f"{name}-{bw}mbit-rl-bench")
        r_part = bench_bundle(part_out, cfg, plans=("chosen", "edge_only"), progress=say, work=work / f"{name}-{bw}mbit-partition-bench")
        plans = {
            # the pruned plan is another (fine-tuned) model: its accuracy, not its error against the unpruned one, says how good it is
            "rl": measured_plan(r_rl["plans"]["chosen"], rl_plan["chosen"]["predicted"]["total_ms"], checked=False),
            "single_cut": measured_plan(r_part["plans"]["chosen"], part_plan["chosen"]["predicted"]["total_ms"]),
            "edge_only": measured_plan(r_part["plans"]["edge_only"], part_plan["baselines"]["edge_only"]["predicted"]["total_ms"]),
            "device_only": measured_plan(base["plans"]["chosen"], part_plan["baselines"]["device_only"]["predicted"]["total_ms"]),
            "device_eager": measured_plan(base["plans"]["device_eager"], None, checked=False),
        }
        rl_ms = plans["rl"]["measured_ms"]
        best_partition = min(("device_only", "edge_only", "single_cut"), key=lambda k: plans[k]["measured_ms"])
        acc = rl_plan.get("accuracy") or {}
        policy = rl_plan.get("policy") or {}
        cases.append({
            "model": name,
            "input": list(shape),
            "bandwidth_mbps": bw,
            "macs": macs,
            "macs_after_pruning": acc.get("macs_after", macs),
            "calibration": {"device_gmacs": device_gmacs, "edge_gmacs": edge_gmacs},
            "plans": plans,
            "rl_cut": rl_plan["chosen"]["cut"],
            "rl_ratios": rl_plan["chosen"].get("prune_ratios", {}),
            "accuracy": {k: acc.get(k) for k in ("status", "data", "top1_before", "top1_pruned", "top1_finetuned", "drop",
                                                 "max_accuracy_drop", "finetune") if k in acc},
            "policy": {k: policy.get(k) for k in ("answer_ms", "source", "conditions", "predicted_ms")} | {
                "train_s": (policy.get("policy_info") or {}).get("train_s"),
                "timesteps": (policy.get("policy_info") or {}).get("timesteps"),
                "accuracy_evaluations": (policy.get("policy_info") or {}).get("accuracy_evaluations")},
            "rl_compile_s": round(compile_s, 1),
            "speedup_vs_device_only": plans["device_only"]["measured_ms"] / rl_ms,
            "speedup_vs_device_eager": plans["device_eager"]["measured_ms"] / rl_ms,
            "best_partition_only": best_partition,
            "speedup_vs_best_partition_only": plans[best_partition]["measured_ms"] / rl_ms,
        })
        c = cases[-1]
        say("case", f"{name} @ {bw} Mbit/s: rl cut {c['rl_cut']}, {rl_ms:.1f} ms, {c['speedup_vs_device_only']:.2f}x vs device-only, "
            f"{c['speedup_vs_best_partition_only']:.2f}x vs best partition-only ({best_partition}); top-1 drop {acc.get('drop')}")
    return cases


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--bandwidths", nargs="*", type=float, default=list(BANDWIDTHS))
    p.add_argument("--quota", type=float, default=0.1)
    p.add_argument("--device-sched", choices=("quota", "repeat"), default="quota",
                   help="how the device is slowed to --quota: a cgroup quota (default, as committed) or repeat (each inference's "
                        "compute runs 1/quota times: slows short work too)")
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--containers", action="store_true", help="run the bundles' podman containers (default: processes)")
    p.add_argument("--work", type=Path, default=Path("/tmp/cogent-e2e"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "e2e.json")
    p.add_argument("--transfer-dtype", default="float32", choices=("auto", "float32", "float16"),
                   help="how the bundles send float32 tensors (cogentc --transfer-dtype; default float32: bit-exact, as committed)")
    p.add_argument("--smoke", action="store_true", help="resnet18 at 64x64, one bandwidth, 5 requests, quota 0.5")
    p.add_argument("--policy", action="store_true", help="the learned policy's plans (pruning + cut) on digits-trained models, "
                   f"accuracy measured; --models default {','.join(POLICY_MODELS)}; writes results/e2e-policy.json")
    p.add_argument("--rl-steps", type=int, default=600, help="--policy: TD3 steps per model's policy (cogentc --rl-steps; default 600)")
    p.add_argument("--finetune-steps", type=int, default=100, help="--policy: fine-tuning steps after pruning (cogentc --finetune-steps; default 100)")
    p.add_argument("--max-prune-ratio", type=float, default=0.9, help="--policy: cogentc --max-prune-ratio (default 0.9, as cogentc's)")
    p.add_argument("--search-finetune-steps", type=int, default=20, help="--policy: cogentc --search-finetune-steps (default 20)")
    p.add_argument("--max-drop", type=float, default=0.01, help="--policy: accuracy budget, a fraction of top-1 (default 0.01)")
    args = p.parse_args()
    if args.policy:
        if args.models == list(MODELS):
            args.models = list(POLICY_MODELS)
        if args.out == ROOT / "results" / "e2e.json":
            args.out = ROOT / "results" / "e2e-policy.json"
        if "--transfer-dtype" not in sys.argv:
            args.transfer_dtype = "auto"  # the compiler's default
    if args.smoke:
        args.models, args.bandwidths, args.requests, args.size, args.quota = ["resnet18"], [20.0], 5, 64, 0.5
        if args.policy:
            args.models, args.rl_steps, args.finetune_steps = ["vgg_digits"], 120, 20
    args.bandwidths = [int(b) if float(b).is_integer() else b for b in args.bandwidths]
    TRANSFER_DTYPE[1] = args.transfer_dtype
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def say(stage: str, msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {stage}: {msg}", file=sys.stderr, flush=True)

    cases = []
    for name in args.models:
        cases += (run_policy_model if args.policy else run_model)(name, args.work, args, say)
    result = {
        "benchmark": "e2e",
        "machine": machine_info(),
        "command": " ".join(["benchmarks/e2e.py", *sys.argv[1:]]),
        "setup": {"device": (f"1 core under a {args.quota:g} CPU quota (cgroup v1, 10 ms period)" if args.device_sched == "quota" else
                             f"1 core, each inference's compute run {round(1 / args.quota)} times (testbed.slowdown)"),
                  "device_sched": args.device_sched, "edge": "1 full core",
                  "link": "veth pair between network namespaces, tbf each way, no added RTT",
                  "backends": "as the compiler chose per half (see each bundle's manifest)",
                  "mode": "containers" if args.containers else "processes", "requests": args.requests,
                  "transfer_dtype": args.transfer_dtype,
                  "input": "per case" if args.policy else f"1x3x{args.size}x{args.size}", "wall_s": round(time.time() - t0, 1),
                  **({"planner": "rl (cogentc --planner rl --data digits)", "rl_steps": args.rl_steps, "max_drop": args.max_drop,
                      "finetune_steps": args.finetune_steps, "max_prune_ratio": args.max_prune_ratio,
                      "search_finetune_steps": args.search_finetune_steps,
                      "data": "scikit-learn digits, held-out split", "weights": "trained in the benchmark, seeded"} if args.policy else {})},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say("done", f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
