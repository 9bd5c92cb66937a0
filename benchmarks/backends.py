"""TVM (Cogent's CPU pipeline) vs TVM's default pipeline vs ONNX Runtime vs PyTorch eager on this CPU.

    python benchmarks/backends.py                      # resnet18, mobilenet_v2, resnet50 at 1x3x224x224, 1 and 2 threads
    python benchmarks/backends.py --smoke              # resnet18 at 1x3x64x64, 1 thread, 3 rounds (CI)

Each model (torchvision architecture, seeded random weights, batch norm folded
as ``cogentc`` folds it; built by ``benchmarks/models.py``) is compiled once:
TVM with ``compile_program`` (the rule-based CPU schedules, ``llvm`` for this CPU), TVM with
``cpu_schedules=False`` (TVM 0.27's default pipeline, generic ``llvm``), and
the ONNX export ``compile_onnxruntime`` writes.  Then, for each thread count,
a fresh process (``TVM_NUM_THREADS``/``OMP_NUM_THREADS`` set before TVM's
thread pool starts; ``torch.set_num_threads``; ONNX Runtime's intra-op
threads) loads them beside PyTorch eager on the unfolded model and times them
interleaved: every round runs each backend twice, in a rotated order, and
times the second run (after its last run a thread pool keeps spinning for a
while, which would slow the next backend's first run), so background load on
a shared machine hits all of them alike.  TVM's default
pipeline is timed in the first 3 rounds only (it is 20-40x slower).  Reported:
median milliseconds, the largest absolute difference from PyTorch eager, and
which backend ``--backend auto`` would keep given these medians (TVM when at
least as fast as ONNX Runtime).

Writes ``benchmarks/results/backends.json`` (``-o`` to change), with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmarks.models lives beside this file
    sys.path.insert(0, str(ROOT))

from benchmarks.common import geomean, interleaved_medians, machine, medians, ort_runner, tvm_runner  # noqa: E402
from benchmarks.models import benchmark_graph, example_input, torch_model  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "backends.json"
MODELS = ("resnet18", "mobilenet_v2", "resnet50")
DEFAULT_ROUNDS = 3  # rounds in which TVM's default pipeline is timed


def _compile(name: str, shape: tuple[int, ...], folder: Path) -> dict[str, Any]:
    """Compile ``name`` three ways into ``folder``; return compile seconds."""
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.backends.onnxruntime_backend import compile_onnxruntime
    from cogent_compiler.backends.tvm_backend import compile_program

    np.save(folder / "x.npy", example_input(shape).numpy())
    graph = benchmark_graph(name, shape)
    llvm = resolve_target("llvm")
    seconds = {}
    for label, fn in (
        ("tvm", lambda d: compile_program(graph.source, "torch", llvm, d, name=name)),
        ("tvm_default", lambda d: compile_program(graph.source, "torch", llvm, d, name=name, cpu_schedules=False)),
        ("onnxruntime", lambda d: compile_onnxruntime(graph.source, "torch", llvm, d, name=name)),
    ):
        t0 = time.perf_counter()
        fn(folder / label)
        seconds[label] = round(time.perf_counter() - t0, 2)
    return seconds


def _measure(name: str, folder: Path, threads: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Runs in a child process whose TVM_NUM_THREADS/OMP_NUM_THREADS equal ``threads``."""
    import torch
    import tvm

    torch.set_num_threads(threads)
    x = np.load(folder / "x.npy")
    model = torch_model(name)
    xt = torch.from_numpy(x)
    assert int(tvm.runtime.num_threads()) == threads, (tvm.runtime.num_threads(), threads)

    def eager() -> np.ndarray:
        with torch.inference_mode():
            return model(xt).numpy()

    runners = {
        "torch": eager,
        "onnxruntime": ort_runner(folder / "onnxruntime" / "model.onnx", x, threads),
        "tvm": tvm_runner(folder / "tvm", x),
        "tvm_default": tvm_runner(folder / "tvm_default", x),
    }
    reference = eager()
    err = {k: float(np.abs(np.asarray(run()) - reference).max()) for k, run in runners.items() if k != "torch"}
    # the error check above was tvm_default's warm-up
    times = interleaved_medians(runners, repeats, warmup, few={"tvm_default": DEFAULT_ROUNDS})
    med = medians(times)
    auto = "tvm" if med["tvm"] <= med["onnxruntime"] else "onnxruntime"
    return {
        "model": name,
        "threads": threads,
        "torch_ms": med["torch"],
        "ort_ms": med["onnxruntime"],
        "tvm_ms": med["tvm"],
        "tvm_default_ms": med["tvm_default"],
        "runs": {k: len(v) for k, v in times.items()},
        "max_abs_err_vs_torch": {k: float(f"{v:.3g}") for k, v in err.items()},
        "reference_max_abs": float(f"{float(np.abs(reference).max()):.3g}"),
        "auto_would_choose": auto,
        "tvm_vs_ort": round(med["tvm"] / med["onnxruntime"], 3),
        "tvm_vs_tvm_default_speedup": round(med["tvm_default"] / med["tvm"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated torchvision models, or <model>_pruned<percent> (default {','.join(MODELS)})")
    p.add_argument("--shape", default="1,3,224,224", help="input shape (default 1,3,224,224)")
    p.add_argument("--threads", default="1,2", help="thread counts, each measured in its own process (default 1,2)")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per backend first (default 3)")
    p.add_argument("--smoke", action="store_true", help="resnet18 at 1x3x64x64, 1 thread, 3 rounds; writes backends-smoke.json")
    p.add_argument("-o", "--output", type=Path, help=f"result JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--_child", nargs=3, metavar=("MODEL", "FOLDER", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child:
        name, folder, threads = args._child
        print(json.dumps(_measure(name, Path(folder), int(threads), args.repeats, args.warmup)))
        return 0
    if args.smoke:
        args.models, args.shape, args.threads, args.repeats, args.warmup = "resnet18", "1,3,64,64", "1", 3, 1
    out = args.output or (DEFAULT_OUT.with_name("backends-smoke.json") if args.smoke else DEFAULT_OUT)
    shape = tuple(int(s) for s in args.shape.split(","))
    thread_counts = [int(t) for t in args.threads.split(",")]
    t_start = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "backends",
        "command": "python benchmarks/backends.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "input_shape": list(shape),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "tvm_default_rounds": min(DEFAULT_ROUNDS, args.repeats),
        "note": "median ms per single inference; backends interleaved in one process per thread count, each timed on the "
        "second of two back-to-back runs per round; "
        "tvm = Cogent's CPU schedules (llvm for this CPU), tvm_default = TVM 0.27's default pipeline (generic llvm); "
        "torch = PyTorch eager on the unfolded model; ort = ONNX Runtime on the folded export",
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="cogent-bench-") as tmp:
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            print(f"[{time.perf_counter() - t_start:6.1f}s] {name}: compiling", file=sys.stderr, flush=True)
            compile_s = _compile(name, shape, folder)
            for threads in thread_counts:
                env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
                cmd = [sys.executable, __file__, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                       "--_child", name, str(folder), str(threads)]
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
                if r.returncode != 0:
                    print(r.stderr, file=sys.stderr)
                    return 1
                row = json.loads(r.stdout.strip().splitlines()[-1])
                row["compile_s"] = compile_s
                doc["results"].append(row)
                print(f"[{time.perf_counter() - t_start:6.1f}s] {name} x{threads}: torch {row['torch_ms']:.1f} ms, "
                      f"ort {row['ort_ms']:.1f}, tvm {row['tvm_ms']:.1f}, tvm default {row['tvm_default_ms']:.1f}",
                      file=sys.stderr, flush=True)
    for threads in thread_counts:
        rows = [r for r in doc["results"] if r["threads"] == threads]
        doc.setdefault("geomean", {})[f"threads_{threads}"] = {
            "tvm_vs_ort": geomean([r["tvm_ms"] / r["ort_ms"] for r in rows]),
            "tvm_vs_torch": geomean([r["tvm_ms"] / r["torch_ms"] for r in rows]),
            "ort_vs_torch": geomean([r["ort_ms"] / r["torch_ms"] for r in rows]),
            "tvm_default_vs_tvm": geomean([r["tvm_default_ms"] / r["tvm_ms"] for r in rows]),
        }
    doc["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    doc["wall_s"] = round(time.perf_counter() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
