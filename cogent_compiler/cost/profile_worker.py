"""The timing process of ``cogentc profile`` (``python -m cogent_compiler.cost.profile_worker``).

It runs apart from the compiler so that it can sit in a CPU-quota cgroup and
start with its own ``TVM_NUM_THREADS``.  Protocol: one JSON request per line
on stdin, ``{"folder": ..., "inputs": [[shape], ...], "min_batch_s": ...,
"batches": ..., "kernels": true, "fastest": false, "cpu_share": null}`` (``"kernels": false`` times only the whole call; ``"fastest": true``
keeps each timing's fastest batch, not its median; ``"cpu_share": q`` times a call by its CPU time over ``q``, the process's CPU
quota); one JSON answer per line on the original stdout,
``{"kernels": [[symbol, ms], ...], "wall_ms": ..., "runs": ...}`` or
``{"error": "..."}``.  Everything else the process prints goes to stderr.

Each kernel is timed on its own: one instrumented run of the VM records every
kernel call with its arguments (the VM's own tensors), then each call is
repeated in batches of at least ``min_batch_s`` and the median batch mean is
its time.  Under a CPU quota a call is timed by its CPU time over the quota
(``profiler.QUOTA_TIMING`` says why): what it costs over many quota periods.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "time_call"]


def time_call(f: Callable[[], Any], min_batch_s: float, batches: int, fastest: bool = False, cpu_share: float | None = None) -> tuple[float, int]:
    """(median -- with ``fastest``, the smallest -- over ``batches`` of the mean ms per call in a batch of at least ``min_batch_s``, calls timed).

    A batch's size comes from the CPU time of one call, not its wall time:
    under a CPU quota one call may be throttled (20 ms for 1 ms of work),
    which would make batches of a single call, and a single call often fits
    in what is left of the quota's period, unthrottled: a 10 %-quota half
    then measured 1.4 ms instead of 12.  Sized by CPU time, a batch spans
    ``min_batch_s`` of work, i.e. ``min_batch_s / quota`` of wall time.
    With ``cpu_share`` a batch is timed by the process's CPU time, divided
    by ``cpu_share``.
    """
    f()
    # one call's CPU time, from enough calls to fill a millisecond: reading the process clock costs
    # microseconds in a VM, which timing a single small kernel counted as its own (batches of 0.2 ms
    # of work then fitted in a 10 % quota's 1 ms and ran unthrottled: kernels measured at full speed)
    calls, t0 = 0, time.process_time()
    while True:
        f()
        calls += 1
        if calls & (calls - 1) == 0:  # read the clock at powers of two only
            used = time.process_time() - t0
            if used >= 1e-3 or calls >= 65_536:
                break
    one = used / calls
    k = max(1, min(100_000, math.ceil(min_batch_s / max(one, 1e-7))))
    clock = time.process_time if cpu_share else time.perf_counter
    means = []
    for _ in range(batches):
        t0 = clock()
        for _ in range(k):
            f()
        means.append((clock() - t0) / k * 1e3 / (cpu_share or 1.0))
    return (min(means) if fastest else statistics.median(means)), k * batches


def _measure(req: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tvm

    from cogent_compiler.runtime.executor import _load_params

    folder = Path(req["folder"])
    min_batch_s, batches, fastest = float(req["min_batch_s"]), int(req["batches"]), bool(req.get("fastest", False))
    share = float(req["cpu_share"]) if req.get("cpu_share") else None
    dev = tvm.cpu(0)
    lib = tvm.runtime.load_module(str(folder / "model.so"))
    params = [tvm.runtime.tensor(p, dev) for p in _load_params(folder / "params.npz")] if (folder / "params.npz").exists() else []
    rng = np.random.default_rng(0)
    inputs = [tvm.runtime.tensor(rng.standard_normal(shape).astype("float32"), dev) for shape in req["inputs"]]

    calls: list[tuple[str, Any, tuple[Any, ...]]] = []

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
        if before and not str(symbol).startswith("vm."):
            calls.append((str(symbol), func, args))
        return 0

    if req.get("kernels", True):
        traced = tvm.runtime.vm.VirtualMachine(lib, dev)
        traced.set_instrument(instrument)
        traced["main"](*inputs, *params)
    kernels = []
    runs = 0
    for symbol, func, args in calls:
        ms, n = time_call(lambda: func(*args), min_batch_s, batches, fastest, share)
        kernels.append([symbol, ms])
        runs = max(runs, n)
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)
    entry = vm["main"]
    wall_ms, n = time_call(lambda: entry(*inputs, *params), min_batch_s, batches, fastest, share)
    return {"kernels": kernels, "wall_ms": wall_ms, "runs": runs or n}


def main(argv: Sequence[str] | None = None) -> int:
    # answers go to a private copy of stdout; anything a library prints lands on stderr
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    importlib.import_module("tvm")  # once, before the first request is timed

    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = _measure(json.loads(line))
        except Exception as e:  # one layer failing must not end the run: the parent reports it and goes on
            first = (str(e).strip().splitlines() or [""])[0][:300]
            answer = {"error": f"{type(e).__name__}: {first}"}
        out.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
