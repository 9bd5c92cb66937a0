"""How fast the edge's CUDA code is: Cogent's TVM pipeline for ``cuda`` (dlight schedules) against PyTorch CUDA eager.

    python benchmarks/backend_speed_gpu.py                    # on a host with an NVIDIA GPU
    python benchmarks/backend_speed_gpu.py --compile-only     # anywhere nvcc is: compile and report, run nothing

Models: ``benchmarks/models.py``'s five (seeded weights, batch norm folded as
``cogentc`` folds it), batch 1, 224x224.  Each is compiled by
``compile_program`` for ``cuda:sm_XX`` with XX the visible GPU's compute
capability (``--arch`` without a GPU), its kernels built by nvcc as a bundle
ships them, then loaded the way the edge runtime loads a bundle: TVM's VM on
``tvm.cuda(0)`` with the precompiled kernels served to it
(``serve_precompiled_kernels``), parameters on the GPU.

Timing, both backends alike: the input already on the GPU, one call then a
device synchronisation per run, ``--repeats`` timed runs each after
``--warmup``, the backends alternated (``interleaved_medians``); the median in
ms.  PyTorch runs in ``inference_mode`` with cuDNN's defaults.  Each
row also has the largest difference of TVM's output from PyTorch's.

Writes ``benchmarks/results/backend_speed_gpu.json`` with the machine and GPU
it ran on.  Without a visible CUDA GPU it stops with one line, unless
``--compile-only`` (then the file records compile times only, ``ran: false``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import geomean, interleaved_medians, machine, medians, write_result  # noqa: E402
from benchmarks.models import BENCHMARK_MODELS, INPUT_SHAPE, benchmark_graph, example_input, torch_model  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "backend_speed_gpu.json"


def gpu() -> dict[str, Any] | None:
    """The visible GPU as PyTorch and TVM see it, or None when neither sees one."""
    import torch
    import tvm

    if not (torch.cuda.is_available() and tvm.cuda(0).exist):
        return None
    major, minor = torch.cuda.get_device_capability(0)
    props = torch.cuda.get_device_properties(0)
    return {"name": torch.cuda.get_device_name(0), "arch": f"sm_{major}{minor}", "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__, "torch_cuda": torch.version.cuda}


def compile_cuda(name: str, arch: str, folder: Path) -> tuple[dict[str, Any], Any]:
    """Compile ``name`` for ``cuda:<arch>`` into ``folder``: (the row's compile facts, the ``CompiledModule``)."""
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.backends.pipeline import stages_for
    from cogent_compiler.backends.tvm_backend import compile_program

    target = resolve_target(f"cuda:{arch}")
    t = time.perf_counter()
    graph = benchmark_graph(name, INPUT_SHAPE)
    compiled = compile_program(graph.source, "torch", target, folder, name=name)
    return {"model": name, "gmacs": round(graph.total_macs / 1e9, 3), "compile_s": round(time.perf_counter() - t, 1),
            "fatbins": len(compiled.kernels), "stages": list(stages_for(target.tvm_target()))}, compiled


def tvm_cuda_runner(folder: Path, kernels: tuple[str, ...], x: np.ndarray) -> tuple[Any, Any]:
    """(timed run: one call + sync, fetch: the output as numpy) for the compiled half in ``folder`` on GPU 0."""
    import tvm

    from cogent_compiler.runtime.executor import _load_params, _to_numpy, serve_precompiled_kernels

    serve_precompiled_kernels(folder, kernels)
    dev = tvm.cuda(0)
    entry = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(folder / "model.so")), dev)["main"]
    params = [tvm.runtime.tensor(p, dev) for p in _load_params(folder / "params.npz")]
    arg = tvm.runtime.tensor(x, dev)

    def run() -> None:
        entry(arg, *params)
        dev.sync()

    return run, lambda: _to_numpy(entry(arg, *params))[0]


def torch_cuda_runner(name: str, x: np.ndarray) -> tuple[Any, Any]:
    """(timed run, fetch) for PyTorch eager on GPU 0 (the unfolded model, as a user would run it)."""
    import torch

    model, xt = torch_model(name).cuda().eval(), torch.from_numpy(x).cuda()

    def run() -> None:
        with torch.inference_mode():
            model(xt)
        torch.cuda.synchronize()

    def fetch() -> np.ndarray:
        with torch.inference_mode():
            return model(xt).cpu().numpy()

    return run, fetch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(BENCHMARK_MODELS), help=f"comma-separated (default {','.join(BENCHMARK_MODELS)})")
    p.add_argument("--arch", help="CUDA architecture to compile for (default: the visible GPU's; sm_80 with --compile-only and no GPU)")
    p.add_argument("--repeats", type=int, default=100, help="timed runs per backend, alternating the backends (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per backend first (default 10)")
    p.add_argument("--compile-only", action="store_true", help="compile every model and record it; run nothing (no GPU needed)")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT, help=f"result JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    args = p.parse_args(argv)

    device = gpu()
    if device is None and not args.compile_only:
        print("backend_speed_gpu: no CUDA GPU is visible to PyTorch and TVM; run it on a host with an NVIDIA GPU, "
              "or pass --compile-only to compile without running", file=sys.stderr)
        return 2
    arch = args.arch or (device["arch"] if device else "sm_80")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = []
    t0 = time.perf_counter()
    for name in names:
        with tempfile.TemporaryDirectory(prefix="cogent-gpu-") as tmp:
            row, compiled = compile_cuda(name, arch, Path(tmp))
            print(f"[{time.perf_counter() - t0:6.1f}s] {name}: compiled for cuda:{arch} in {row['compile_s']} s, "
                  f"{row['fatbins']} fatbin(s)", file=sys.stderr, flush=True)
            if device is not None and not args.compile_only:
                x = example_input(INPUT_SHAPE).numpy()
                (tvm_run, tvm_fetch), (torch_run, torch_fetch) = tvm_cuda_runner(Path(tmp), compiled.kernels, x), torch_cuda_runner(name, x)
                reference = torch_fetch()
                row["max_abs_err_vs_torch"] = float(f"{float(np.abs(tvm_fetch() - reference).max()):.3g}")
                row["reference_max_abs"] = float(f"{float(np.abs(reference).max()):.3g}")
                ms = medians(interleaved_medians({"torch": torch_run, "tvm": tvm_run}, repeats=args.repeats, warmup=args.warmup))
                row.update(torch_cuda_ms=ms["torch"], tvm_cuda_ms=ms["tvm"], tvm_vs_torch=round(ms["tvm"] / ms["torch"], 3))
                print(f"[{time.perf_counter() - t0:6.1f}s] {name}: PyTorch CUDA eager {ms['torch']:.3f} ms, TVM cuda {ms['tvm']:.3f} ms",
                      file=sys.stderr, flush=True)
        rows.append(row)
    ran = [r for r in rows if "tvm_cuda_ms" in r]
    doc = {
        "benchmark": "backend_speed_gpu",
        "command": "python benchmarks/backend_speed_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(), "gpu": device, "arch": arch, "input_shape": list(INPUT_SHAPE), "ran": bool(ran),
        "repeats": args.repeats, "warmup": args.warmup,
        "note": "median ms per inference, input resident on the GPU, one call + device sync per run, backends alternated; "
        "torch_cuda = PyTorch eager (unfolded model, inference_mode); tvm_cuda = Cogent's cuda pipeline (batch norm folded, "
        "dlight schedules, kernels precompiled by nvcc, loaded as the edge runtime loads a bundle)",
        "results": rows,
        "summary": {"geomean_tvm_vs_torch": geomean([r["tvm_vs_torch"] for r in ran]) if ran else None,
                    "models": len(rows), "wall_s": round(time.perf_counter() - t0, 1)},
    }
    write_result(args.output, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
