"""What structured pruning buys and costs: MACs, top-1 (pruned, fine-tuned) and measured TVM latency per uniform ratio.

    python benchmarks/pruning.py              # VGG-style and ResNet-style CNNs, ratios 0..0.7, 1 TVM thread
    python benchmarks/pruning.py --smoke      # the ResNet-style one, ratios 0 and 0.5, short training (CI)

Two CNNs are trained inside the benchmark on scikit-learn's digits (real
data shipped offline; 8x8 images upsampled to 32x32, one channel; a seeded
75/25 train/validation split; fixed seeds throughout): ``vgg_digits`` (three
stages of two 3x3 convolutions with batch norm, max pooling, a linear head)
and ``resnet_digits`` (a stem and three stages of two basic residual blocks,
the later ones downsampling with a 1x1 shortcut).  For each uniform ratio
every prune group (``cogentc inspect --groups``) loses that fraction of its
channels (kept widths rounded to a multiple of 8) with ``PruneChannels``;
top-1 on the validation split is measured before pruning, right after, and
after fine-tuning for ``--finetune-steps`` steps (Adam, the training split).
Each pruned, fine-tuned model is then compiled as ``cogentc`` compiles a
half (batch norm folded, ``compile_program`` for this CPU, rule-based
schedules, no tuning records) and all ratios of a model are timed
interleaved in one process (``benchmarks.common.interleaved_medians``), so
the latencies are measured side by side under the same load.

Writes ``benchmarks/results/pruning.json``: ``machine``, ``command``,
``setup`` and ``cases`` with ``model``, ``ratio``, ``macs``,
``acc_before``, ``acc_pruned``, ``acc_finetuned``, ``latency_ms`` (median),
plus ``params``, ``latency_vs_unpruned`` and ``macs_vs_unpruned``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.digits_models import resnet_digits, vgg_digits  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "pruning.json"
MODELS = {"vgg_digits": vgg_digits, "resnet_digits": resnet_digits}
RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
SIZE = 32




def run_model(name: str, args: argparse.Namespace, work: Path, say: Any) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from benchmarks.common import interleaved_medians, medians, tvm_runner
    from cogent_compiler.accuracy import evaluate, finetune, load_data
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.backends.tvm_backend import compile_program
    from cogent_compiler.frontend import from_module, trace
    from cogent_compiler.passes import FoldBatchNorm, PruneChannels, prune_groups_of

    data = load_data("digits", (1, 1, SIZE, SIZE), 10, seed=args.seed)
    torch.manual_seed(args.seed)
    model = MODELS[name]()
    t0 = time.time()
    finetune(model, data, steps=args.train_steps, lr=2e-3, seed=args.seed)
    acc_before = evaluate(model, data.x_val, data.y_val)
    say(f"{name}: trained {args.train_steps} steps in {time.time() - t0:.0f}s, top-1 {acc_before:.4f}")
    x = data.x_val[:1]
    graph = trace(from_module(model.eval(), (torch.from_numpy(x),), name=name))
    groups = prune_groups_of(graph)
    llvm = resolve_target("llvm")
    cases, runners = [], {}
    for ratio in args.ratios:
        pruned = PruneChannels({g.name: ratio for g in groups.groups})(graph)
        acc_pruned = evaluate(pruned.module, data.x_val, data.y_val)
        stats: dict[str, Any] = {"steps": 0, "seconds": 0.0}
        if pruned.module is not graph.module:  # a ratio that removes no channel leaves the model itself: never fine-tuned in place
            stats = finetune(pruned.module, data, steps=args.finetune_steps, seed=args.seed)
        acc_ft = evaluate(pruned.module, data.x_val, data.y_val)
        shipped = FoldBatchNorm()(trace(from_module(pruned.module.eval(), (torch.from_numpy(x),), name=name)))
        folder = work / f"{name}-{ratio:g}"
        compile_program(shipped.source, "torch", llvm, folder, name=name)
        runners[ratio] = tvm_runner(folder, x)
        with torch.no_grad():
            err = float(np.abs(runners[ratio]() - pruned.module(torch.from_numpy(x)).numpy()).max())
        cases.append({"model": name, "ratio": ratio, "macs": shipped.total_macs, "params": sum(p.numel() for p in pruned.module.parameters()),
                      "acc_before": round(acc_before, 4), "acc_pruned": round(acc_pruned, 4), "acc_finetuned": round(acc_ft, 4),
                      "finetune_steps": stats["steps"], "finetune_s": round(stats["seconds"], 1), "tvm_max_abs_err_vs_torch": float(f"{err:.3g}")})
        say(f"{name} ratio {ratio:g}: {shipped.total_macs / graph.total_macs:.0%} of the MACs, top-1 pruned {acc_pruned:.4f}, "
            f"fine-tuned {acc_ft:.4f}")
    import tvm

    assert int(tvm.runtime.num_threads()) == args.threads, (tvm.runtime.num_threads(), args.threads)
    times = medians(interleaved_medians(runners, args.repeats, warmup=3))
    base = times[args.ratios[0]]
    for case in cases:
        case["latency_ms"] = times[case["ratio"]]
        case["latency_vs_unpruned"] = round(case["latency_ms"] / base, 3)
        case["macs_vs_unpruned"] = round(case["macs"] / cases[0]["macs"], 3)
        say(f"{name} ratio {case['ratio']:g}: {case['latency_ms']:.3f} ms ({case['latency_vs_unpruned']:.2f}x of unpruned)")
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS), help="uniform prune ratios (default 0,0.1,...,0.7; the first is the baseline)")
    p.add_argument("--train-steps", type=int, default=1500, help="training steps of each model (default 1500, batch 32)")
    p.add_argument("--finetune-steps", type=int, default=300, help="fine-tuning steps after pruning (default 300)")
    p.add_argument("--repeats", type=int, default=50, help="timed interleaved rounds (default 50)")
    p.add_argument("--threads", type=int, default=1, help="TVM runtime threads (default 1: a one-core device)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="resnet_digits, ratios 0 and 0.5, 200 training and 50 fine-tuning steps, 5 rounds")
    p.add_argument("-o", "--output", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.ratios, args.train_steps, args.finetune_steps, args.repeats = "resnet_digits", "0,0.5", 200, 50, 5
    args.ratios = [float(r) for r in args.ratios.split(",") if r]
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models {','.join(unknown)}: unknown; choose from {', '.join(MODELS)}")
    # before TVM's thread pool starts: the device this stands for has --threads cores
    os.environ["TVM_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))  # training uses the machine; timing is TVM's, with --threads
    from benchmarks.common import machine

    t0 = time.time()

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cogent-pruning-") as tmp:
        for name in models:
            cases += run_model(name, args, Path(tmp), say)
    result = {
        "benchmark": "pruning",
        "machine": machine(),
        "command": "python benchmarks/pruning.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": {"data": f"scikit-learn digits upsampled to {SIZE}x{SIZE}, 1 channel, seeded 75/25 split", "seed": args.seed,
                  "train_steps": args.train_steps, "finetune_steps": args.finetune_steps, "batch": 32, "optimizer": "Adam",
                  "prune": "uniform ratio over every prune group, kept widths a multiple of 8, group L2 magnitude",
                  "latency": f"TVM llvm for this CPU, rule-based schedules, {args.threads} thread(s), median of {args.repeats} "
                             "interleaved rounds, batch 1", "threads": args.threads},
        "cases": cases,
        "wall_s": round(time.time() - t0, 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps([{k: c[k] for k in ("model", "ratio", "macs", "acc_finetuned", "latency_ms")} for c in cases], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
