"""Timing helpers shared by the backend benchmarks: runners for each backend and interleaved medians.

Every round runs each backend twice in a rotated order and times the second
run: after its last run a thread pool keeps spinning on the cores for a
while, which would slow the next backend's first run; interleaving makes
background load on a shared machine hit all backends alike.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

Runner = Callable[[], np.ndarray]


def machine() -> dict[str, Any]:
    """``machine_info()`` plus LLVM's name for this CPU and the load average now."""
    from tvm.target import codegen

    from cogent_compiler.testbed.machine import machine_info

    return {**machine_info(), "llvm_mcpu": str(codegen.llvm_get_system_cpu()), "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]}


def geomean(values: list[float]) -> float:
    return round(math.exp(sum(math.log(v) for v in values) / len(values)), 3)


def tvm_runner(folder: Path, x: np.ndarray) -> Runner:
    """Run the TVM library ``folder/model.so`` with ``folder/params.npz`` on ``x`` (TVM's CPU thread pool as configured)."""
    import tvm

    from cogent_compiler.runtime.executor import _load_params, _to_numpy

    dev = tvm.cpu(0)
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(folder / "model.so")), dev)
    entry = vm["main"]
    params = [tvm.runtime.tensor(p, dev) for p in _load_params(folder / "params.npz")]
    arg = tvm.runtime.tensor(x, dev)
    return lambda: _to_numpy(entry(arg, *params))[0]


def ort_runner(model: Path, x: np.ndarray, threads: int) -> Runner:
    from cogent_compiler.runtime.executor import onnxruntime_session

    session = onnxruntime_session(model, threads)
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)[0]


def artifact_runner(folder: Path, x: np.ndarray, threads: int) -> Runner:
    """A runner for whatever ``folder`` holds: an ONNX model (ONNX Runtime) or a TVM library."""
    return ort_runner(folder / "model.onnx", x, threads) if (folder / "model.onnx").exists() else tvm_runner(folder, x)


def interleaved_medians(runners: Mapping[str, Runner], repeats: int, warmup: int, few: Mapping[str, int] | None = None) -> dict[str, list[float]]:
    """Milliseconds per run for each runner over ``repeats`` interleaved rounds (see the module doc).

    ``few`` caps the rounds of slow runners (label -> rounds; they get no warm-up).
    """
    few = dict(few or {})
    for k, run in runners.items():
        for _ in range(0 if k in few else warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            if k in few and r >= few[k]:
                continue
            for timed in (False, True):
                t0 = time.perf_counter()
                runners[k]()
                if timed:
                    times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def write_result(path: str | Path, result: Mapping[str, Any], show: str = "summary") -> None:
    """Write a benchmark's result JSON to ``path`` (folders made as needed) and print its ``show`` part on stdout."""
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result.get(show), indent=1))
