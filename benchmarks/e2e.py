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

from cogent_compiler.cli import main as cogentc
from cogent_compiler.frontend import load_model, trace
from cogent_compiler.testbed.bench import BenchConfig, bench_bundle
from cogent_compiler.testbed.machine import machine_info

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


def compile_bundle(model: Path, out: Path, *flags: str) -> dict:
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


def run_model(name: str, work: Path, args: argparse.Namespace, say) -> list[dict]:
    import numpy as np

    shape = (1, 3, args.size, args.size)
    model = save_model(name, work, shape)
    macs = trace(load_model(str(model))).total_macs
    np.save(work / "x.npy", np.random.default_rng(0).standard_normal(shape).astype("float32"))
    config = BenchConfig(bandwidth_bps=BANDWIDTHS[0] * 1e6, device_quota=args.quota, requests=args.requests, containers=args.containers)

    dev_only = work / f"{name}-device-only"
    compile_bundle(model, dev_only, "--planner", "device")
    base = bench_bundle(dev_only, config, plans=("device_eager", "chosen"), progress=say, work=work / f"{name}-calib")
    device_ms = base["plans"]["chosen"]["median_ms"]
    edge_ms = edge_speed_ms(dev_only, config.edge_cpu, min(args.requests, 10))
    device_gmacs, edge_gmacs = macs / device_ms / 1e6, macs / edge_ms / 1e6
    say("calibrate", f"{name}: device {device_gmacs:.2f} GMAC/s (quota {args.quota}), edge {edge_gmacs:.2f} GMAC/s")

    cases = []
    for bw in args.bandwidths:
        out = work / f"{name}-{bw}mbit"
        plan = compile_bundle(model, out, "--bandwidth", f"{bw}mbit", "--rtt", "0ms",
                              "--device-gmacs", f"{device_gmacs:.4f}", "--edge-gmacs", f"{edge_gmacs:.4f}")
        cfg = BenchConfig(bandwidth_bps=bw * 1e6, device_quota=args.quota, requests=args.requests, containers=args.containers)
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--bandwidths", nargs="*", type=float, default=list(BANDWIDTHS))
    p.add_argument("--quota", type=float, default=0.1)
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--containers", action="store_true", help="run the bundles' podman containers (default: processes)")
    p.add_argument("--work", type=Path, default=Path("/tmp/cogent-e2e"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "e2e.json")
    p.add_argument("--transfer-dtype", default="float32", choices=("auto", "float32", "float16"),
                   help="how the bundles send float32 tensors (cogentc --transfer-dtype; default float32: bit-exact, as committed)")
    p.add_argument("--smoke", action="store_true", help="resnet18 at 64x64, one bandwidth, 5 requests, quota 0.5")
    args = p.parse_args()
    if args.smoke:
        args.models, args.bandwidths, args.requests, args.size, args.quota = ["resnet18"], [20.0], 5, 64, 0.5
    args.bandwidths = [int(b) if float(b).is_integer() else b for b in args.bandwidths]
    TRANSFER_DTYPE[1] = args.transfer_dtype
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def say(stage: str, msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {stage}: {msg}", file=sys.stderr, flush=True)

    cases = []
    for name in args.models:
        cases += run_model(name, args.work, args, say)
    result = {
        "benchmark": "e2e",
        "machine": machine_info(),
        "command": " ".join(["benchmarks/e2e.py", *sys.argv[1:]]),
        "setup": {"device": f"1 core under a {args.quota:g} CPU quota (cgroup v1, 10 ms period)", "edge": "1 full core",
                  "link": "veth pair between network namespaces, tbf each way, no added RTT",
                  "backends": "as the compiler chose per half (see each bundle's manifest)",
                  "mode": "containers" if args.containers else "processes", "requests": args.requests,
                  "transfer_dtype": args.transfer_dtype,
                  "input": f"1x3x{args.size}x{args.size}", "wall_s": round(time.time() - t0, 1)},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say("done", f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
