"""How fast the bundle's code is: PyTorch eager, ONNX Runtime, TVM untuned and tuned, and what the bundle chose.

    python benchmarks/backend_speed.py                          # 5 models, budgets 5,20,60 min, 2 threads
    python benchmarks/backend_speed.py --budgets 5,20 --resume  # continue an interrupted or shorter run

Models (``benchmarks/models.py``, seeded random weights, batch norm folded as
``cogentc`` folds it): resnet18, then its 50 %-pruned variant (whose kernels
have other shapes: how much of resnet18's tuning database serves it is
reported as ``tunedb_hits_before``), mobilenet_v2, vgg16 and googlenet, in
that order, sharing one tuning database that starts empty (``--tunedb``).

Per model, all for ``llvm`` on this CPU with ``--threads`` threads (tuning measures with
the same count):

- ``ort``: ONNX Runtime on the folded export;
- ``tvm_default``: TVM 0.27's own default pipeline (no fusion on CPU, no schedules);
- ``tvm_untuned``: Cogent's pipeline (``backends/pipeline.py``) without a database;
- ``tvm_tuned``: after MetaSchedule tuning (``backends/tuning.py``) to each
  cumulative budget in minutes (one resumed run: 5, then 15 more for 20, ...);
- ``chosen``: what ``choose_backend`` keeps for the bundle (the database applied) and why;
  its time is that of the same compile above (``chosen_same_as``: ``ort`` or the last ``tvm_tuned``).

Then each backend and PyTorch eager is timed in its own process (thread
counts fixed before any pool starts), ``--rounds`` rounds in rotated order:
in one process, ONNX Runtime's and OpenMP's idle pools spin and slowed the
other backends 2-3x.  ``tvm_default`` runs once per round.  Results are written after every model, so
``--resume`` skips models already done with every requested budget.

Writes ``benchmarks/results/backend_speed.json`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import artifact_runner, geomean, machine  # noqa: E402
from benchmarks.models import BENCHMARK_MODELS, benchmark_graph, example_input, torch_model  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "backend_speed.json"
SHAPE = (1, 3, 224, 224)


def _say(t0: float, msg: str) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _build_model(name: str, folder: Path, budgets: list[float], tunedb: Path, threads: int, t0: float) -> dict[str, Any]:
    """Compile, tune to each budget and choose, into ``folder``; return the row without timings."""
    from cogent_compiler.backends import resolve_target, tuning
    from cogent_compiler.backends.onnxruntime_backend import compile_onnxruntime
    from cogent_compiler.backends.select import choose_backend
    from cogent_compiler.backends.tvm_backend import compile_program, tvm_target_for

    np.save(folder / "x.npy", example_input(SHAPE).numpy())
    graph = benchmark_graph(name, SHAPE)
    llvm = resolve_target("llvm")
    target = tvm_target_for(llvm)
    row: dict[str, Any] = {"model": name, "gmacs": round(graph.total_macs / 1e9, 3), "compile_s": {}}

    def timed(label: str, fn: Any) -> None:
        t = time.perf_counter()
        fn(folder / label)
        row["compile_s"][label] = round(time.perf_counter() - t, 1)

    timed("ort", lambda d: compile_onnxruntime(graph.source, "torch", llvm, d, name=name))
    timed("tvm_default", lambda d: compile_program(graph.source, "torch", llvm, d, name=name, cpu_schedules=False))
    timed("tvm_untuned", lambda d: compile_program(graph.source, "torch", llvm, d, name=name))
    prepared = tuning.prepared_module(graph.source, "torch", target)
    hits, kernels = tuning.database_hits(prepared, target, tuning.open_database(target, tunedb))
    row["tunedb_hits_before"] = {"hits": hits, "kernels": kernels}
    _say(t0, f"{name}: compiled; {hits}/{kernels} kernels already in the tuning database")
    row["tuning"] = {}
    spent = 0.0
    for budget in budgets:
        result = tuning.tune_module(prepared, target, budget_s=max(0.0, budget * 60 - spent), root=tunedb, threads=threads,
                                    progress=lambda m: _say(t0, f"{name} tune@{budget:g}m: {m}") if "measured;" not in m else None)
        spent += result.seconds
        row["tuning"][f"{budget:g}"] = {"seconds_cumulative": round(spent, 1), **{k: v for k, v in result.to_json().items() if k not in ("target", "database", "budget_s")}}
        db = tuning.open_database(target, tunedb)
        timed(f"tvm_tuned_{budget:g}", lambda d: compile_program(graph.source, "torch", llvm, d, name=name, database=db))
        _say(t0, f"{name}: tuned to {budget:g} min ({spent:.0f} s, {result.trials} trials); kernels sum {result.estimated_ms_after} ms")
    db = tuning.open_database(target, tunedb)
    t = time.perf_counter()
    compiled, choice = choose_backend(graph.source, "torch", llvm, folder / "chosen", name=name, database=db)
    row["compile_s"]["chosen"] = round(time.perf_counter() - t, 1)
    row["chosen_backend"], row["chosen_reason"] = choice.backend, choice.reason
    row["chosen_twin"] = "ort" if choice.backend == "onnxruntime" else f"tvm_tuned_{budgets[-1]:g}" if budgets else "tvm_untuned"
    shutil.rmtree(folder / "chosen")
    _say(t0, f"{name}: bundle would use {choice.backend} ({choice.reason})")
    return row


def _time_one(name: str, folder: Path, label: str, threads: int, runs: int, warmup: int) -> list[float]:
    """Child process: ``warmup`` then ``runs`` timed inferences of one backend; its output goes to ``folder/out-<label>.npy``."""
    import torch
    import tvm

    torch.set_num_threads(threads)
    assert int(tvm.runtime.num_threads()) == threads, (tvm.runtime.num_threads(), threads)
    x = np.load(folder / "x.npy")
    if label == "torch":
        model, xt = torch_model(name), torch.from_numpy(x)

        def run() -> np.ndarray:
            with torch.inference_mode():
                return model(xt).numpy()
    else:
        run = artifact_runner(folder / label, x, threads)
    np.save(folder / f"out-{label}.npy", np.asarray(run()))
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def _measure(name: str, folder: Path, labels: list[str], threads: int, rounds: int, runs: int, warmup: int) -> dict[str, Any]:
    """Time torch and each artifact folder, each in its own process, ``rounds`` rounds in rotated order.

    One process per backend per round: a runtime's idle thread pool (ONNX
    Runtime's and OpenMP's spin for a while) then never competes with another
    backend's run, and rounds spread slow drifts of a shared machine over all.
    ``tvm_default`` (tens of times slower) runs once per round.
    """
    import statistics

    labels = ["torch", *labels]
    times: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            n, w = (1, 0) if label == "tvm_default" else (runs, warmup)
            cmd = [sys.executable, __file__, "--threads", str(threads), "--_child", name, str(folder), label, str(n), str(w)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(f"{name} {label}: {out.stderr[-2000:]}")
            times[label] += json.loads(out.stdout.strip().splitlines()[-1])
    reference = np.load(folder / "out-torch.npy")
    err = {k: float(f"{float(np.abs(np.load(folder / f'out-{k}.npy') - reference).max()):.3g}") for k in labels if k != "torch"}
    return {"ms": {k: round(statistics.median(v), 3) for k, v in times.items()}, "runs": {k: len(v) for k, v in times.items()},
            "max_abs_err_vs_torch": err, "reference_max_abs": float(f"{float(np.abs(reference).max()):.3g}")}


def _summarize(doc: dict[str, Any]) -> None:
    rows = [r for r in doc["results"] if "chosen_ms" in r]
    if not rows:
        return
    best_tvm = [min(r["tvm_tuned_ms"].values(), default=r["tvm_untuned_ms"]) for r in rows]
    doc["geomean_chosen_vs_torch"] = geomean([r["chosen_ms"] / r["torch_ms"] for r in rows])
    doc["geomean_tvm_best_vs_torch"] = geomean([min(b, r["tvm_untuned_ms"]) / r["torch_ms"] for b, r in zip(best_tvm, rows)])
    doc["geomean_chosen_vs_best"] = geomean([r["chosen_ms"] / min(r["torch_ms"], r["ort_ms"]) for r in rows])
    doc["geomean_tvm_best_vs_ort"] = geomean([min(b, r["tvm_untuned_ms"]) / r["ort_ms"] for b, r in zip(best_tvm, rows)])
    doc["geomean_tvm_untuned_vs_ort"] = geomean([r["tvm_untuned_ms"] / r["ort_ms"] for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(BENCHMARK_MODELS), help=f"comma-separated (default {','.join(BENCHMARK_MODELS)})")
    p.add_argument("--budgets", default="5,20,60", help="cumulative tuning budgets in minutes (default 5,20,60)")
    p.add_argument("--threads", type=int, default=2, help="threads for every backend and for tuning measurements (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each backend runs in its own process once per round (default 3)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per backend per round (default 10; tvm_default: 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per backend per round first (default 3)")
    p.add_argument("--tunedb", type=Path, help="tuning database root (default: <cache>/bench-tunedb/<output name>, emptied unless --resume)")
    p.add_argument("--resume", action="store_true", help="keep the output's finished models and database; do the rest")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT, help=f"result JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--_child", nargs=5, metavar=("MODEL", "FOLDER", "LABEL", "RUNS", "WARMUP"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before TVM's pool starts
    if args._child:
        name, folder, label, runs, warmup = args._child
        print(json.dumps(_time_one(name, Path(folder), label, args.threads, int(runs), int(warmup))))
        return 0

    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    from cogent_compiler.backends.tuning import tunedb_root

    tunedb = args.tunedb or tunedb_root().parent / "bench-tunedb" / args.output.stem
    t0 = time.perf_counter()
    doc: dict[str, Any] = {}
    if args.resume and args.output.exists():
        doc = json.loads(args.output.read_text())
    elif tunedb.exists() and not args.tunedb:
        shutil.rmtree(tunedb)  # a fresh database: hits on later models come from earlier ones in this run
    doc.setdefault("results", [])
    doc.update({
        "benchmark": "backend_speed",
        # every run that contributed rows (a --resume run adds its command)
        "commands": [*doc.get("commands", []), "python benchmarks/backend_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)],
        "machine": machine(),
        "threads": args.threads,
        "input_shape": list(SHAPE),
        "rounds": args.rounds, "runs_per_round": args.runs,
        "tunedb": str(tunedb),
        "note": "median ms per inference over rounds x runs, each backend in its own process per round (rotated order), same thread count; "
        "torch = PyTorch eager (unfolded model); ort = ONNX Runtime; tvm_default = TVM 0.27's default pipeline; "
        "tvm_untuned = Cogent's pipeline without tuning; tvm_tuned = with the tuning database after each cumulative budget "
        "(minutes); chosen = the backend the bundle's measured choice keeps",
    })
    done = {r["model"] for r in doc["results"] if set(r.get("tvm_tuned_ms", {})) >= {f"{b:g}" for b in budgets}}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name in done:
            _say(t0, f"{name}: done in {args.output.name}; skipped (--resume)")
            continue
        with tempfile.TemporaryDirectory(prefix="cogent-speed-") as tmp:
            folder = Path(tmp)
            row = _build_model(name, folder, budgets, tunedb, args.threads, t0)
            labels = ["ort", "tvm_default", "tvm_untuned", *[f"tvm_tuned_{b:g}" for b in budgets]]
            m = _measure(name, folder, labels, args.threads, args.rounds, args.runs, args.warmup)
        ms = m["ms"]
        row.update({
            "torch_ms": ms["torch"], "ort_ms": ms["ort"], "tvm_default_ms": ms["tvm_default"], "tvm_untuned_ms": ms["tvm_untuned"],
            "tvm_tuned_ms": {f"{b:g}": ms[f"tvm_tuned_{b:g}"] for b in budgets},
            # the bundle's artifact is the same compile as this one (choose_backend compiled it the same way)
            "chosen_same_as": row["chosen_twin"], "chosen_ms": ms[row.pop("chosen_twin")],
            "runs": m["runs"], "max_abs_err_vs_torch": m["max_abs_err_vs_torch"], "reference_max_abs": m["reference_max_abs"],
            "tunedb": str(tunedb),  # rows of --resume runs may come from different databases
        })
        tuned = ", ".join(f"{b}m {v:.1f}" for b, v in row["tvm_tuned_ms"].items())
        _say(t0, f"{name}: torch {ms['torch']:.1f} ms, ort {ms['ort']:.1f}, tvm untuned {ms['tvm_untuned']:.1f}, "
             f"tuned {tuned}, chosen {row['chosen_backend']} {row['chosen_ms']:.1f}")
        doc["results"] = [r for r in doc["results"] if r["model"] != name] + [row]
        _summarize(doc)
        doc["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(doc, indent=2) + "\n")
    _say(t0, f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
