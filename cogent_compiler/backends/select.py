"""Choose each half's backend by measuring it on the target.

``choose_backend`` compiles a half with every candidate backend that applies
to the target (TVM always; ONNX Runtime for CPU halves of this machine's
architecture, see ``onnxruntime_applies``), runs each on the same random
input with the thread count the runtime will use (``runtime_threads``),
each in its own process, three rounds in rotated order, and keeps the
fastest by median time; TVM wins ties.  When the
candidates' outputs disagree (beyond ``AGREEMENT_RTOL``/``AGREEMENT_ATOL``),
ONNX Runtime is kept whatever the times, and the reason says so.  Targets
that are not this machine (``arm`` from x86, ``cuda``) cannot be measured
here: they get TVM and the choice says why.  One candidate (``--backend tvm``
or ``--backend onnxruntime``) is compiled without measuring.

The decision is data: ``BackendChoice`` records the backend, the reason, each
candidate's median milliseconds, the threads and how far the candidates'
outputs differ, for the compile report.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cogent_compiler.backends.onnxruntime_backend import compile_onnxruntime, onnxruntime_applies
from cogent_compiler.backends.targets import TargetSpec
from cogent_compiler.backends.tvm_backend import CompiledModule, compile_program
from cogent_compiler.errors import BackendError

__all__ = ["BACKEND_OPTIONS", "CANDIDATES", "BackendChoice", "backend_candidates", "choose_backend", "decide_backend", "measure_backends"]

log = logging.getLogger(__name__)

#: the backends a half can use, in tie-break order (the first wins a tie)
CANDIDATES = ("tvm", "onnxruntime")
#: values of ``--backend`` / ``CompileOptions.backend``
BACKEND_OPTIONS = ("auto", *CANDIDATES)
_CANDIDATES_DIR = ".candidates"
#: candidates' outputs must agree within ``AGREEMENT_RTOL * max|output| + AGREEMENT_ATOL`` to be compared on speed
AGREEMENT_RTOL = 1e-3
AGREEMENT_ATOL = 1e-4


@dataclass(frozen=True)
class BackendChoice:
    """Which backend a half uses and why.

    ``measured_ms`` holds each measured candidate's median milliseconds on this
    machine (empty when nothing was measured); ``threads`` the thread count
    used (``None`` when nothing was measured); ``max_abs_diff`` the largest
    absolute difference between the candidates' outputs on the measurement
    input.
    """

    backend: str
    reason: str
    measured_ms: Mapping[str, float] = field(default_factory=dict)
    threads: int | None = None
    max_abs_diff: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "reason": self.reason,
            "measured_ms": {k: round(v, 3) for k, v in self.measured_ms.items()},
            "threads": self.threads,
            "max_abs_diff": self.max_abs_diff,
        }


def backend_candidates(option: str) -> tuple[str, ...]:
    """The candidates for a ``--backend`` value: ``auto`` means all of ``CANDIDATES``."""
    if option == "auto":
        return CANDIDATES
    if option in CANDIDATES:
        return (option,)
    raise BackendError(f"--backend {option!r} is unknown; use one of {', '.join(BACKEND_OPTIONS)}")


def _compile(backend: str, program: Any, kind: str, target: TargetSpec, out_dir: Path, name: str, database: Any = None) -> CompiledModule:
    if backend == "tvm":
        return compile_program(program, kind, target, out_dir, name=name, database=database)
    return compile_onnxruntime(program, kind, target, out_dir, name=name)


def choose_backend(
    program: Any,
    kind: str,
    target: TargetSpec,
    out_dir: Path,
    *,
    name: str = "model",
    candidates: Sequence[str] = CANDIDATES,
    repeats: int = 10,
    warmup: int = 2,
    budget_s: float = 30.0,
    database: Any = None,
) -> tuple[CompiledModule, BackendChoice]:
    """Compile ``program`` into ``out_dir`` with the fastest applicable backend among ``candidates``.

    With several applicable candidates each is compiled into its own folder
    under ``out_dir/.candidates``, measured (``measure_backends``: ``warmup``
    runs, then up to ``repeats`` interleaved rounds of two runs each, at least
    3, stopping once ``budget_s`` seconds are spent), and the winner's files are moved into
    ``out_dir``.  TVM compiles apply ``database`` (a MetaSchedule database of
    tuning records), so a tuned TVM half competes.  Raises ``BackendError`` for an unknown candidate, a forced
    backend that does not apply to ``target``, or a failed compile.
    """
    out_dir = Path(out_dir)
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown or not candidates:
        raise BackendError(f"{name}: backend {', '.join(unknown) or '(none)'} is unknown; use one of {', '.join(CANDIDATES)}")
    ordered = [c for c in CANDIDATES if c in candidates]
    if len(ordered) == 1:
        compiled = _compile(ordered[0], program, kind, target, out_dir, name, database)
        return compiled, BackendChoice(ordered[0], f"chosen by --backend {ordered[0]}; not measured")
    ort_reason = onnxruntime_applies(target)
    applicable = [c for c in ordered if c != "onnxruntime" or ort_reason is None]
    if len(applicable) == 1:
        compiled = _compile(applicable[0], program, kind, target, out_dir, name, database)
        return compiled, BackendChoice(applicable[0], f"the only candidate: {ort_reason}")

    root = out_dir / _CANDIDATES_DIR
    shutil.rmtree(root, ignore_errors=True)
    try:
        built = {"tvm": _compile("tvm", program, kind, target, root / "tvm", name, database)}
        try:
            built["onnxruntime"] = _compile("onnxruntime", program, kind, target, root / "onnxruntime", name)
            measured, threads, diff, scale = measure_backends(
                {c: (root / c, m) for c, m in built.items()}, repeats=repeats, warmup=warmup, budget_s=budget_s
            )
        except BackendError as e:  # e.g. an op the ONNX exporter cannot translate: TVM still serves
            log.warning("%s: %s; using TVM", name, e)
            for entry in sorted((root / "tvm").iterdir()):
                shutil.move(str(entry), str(out_dir / entry.name))
            return built["tvm"], BackendChoice("tvm", f"ONNX Runtime was not available for this half: {e}")
        best, reason = decide_backend(measured, threads, diff, scale)
        for entry in sorted((root / best).iterdir()):
            shutil.move(str(entry), str(out_dir / entry.name))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log.info("%s: %s", name, reason)
    return built[best], BackendChoice(best, reason, measured, threads, diff)


def decide_backend(measured: Mapping[str, float], threads: int, diff: float, scale: float) -> tuple[str, str]:
    """The backend to keep given each candidate's median ms (in ``CANDIDATES`` order), and why.

    The fastest wins, TVM on a tie; but when the outputs differ by more than
    ``AGREEMENT_RTOL * scale + AGREEMENT_ATOL``, ONNX Runtime is kept as the
    reference — a mismatch is far likelier a TVM schedule or import bug.
    """
    order = [c for c in CANDIDATES if c in measured]
    plural = "s" if threads != 1 else ""
    if diff > AGREEMENT_RTOL * scale + AGREEMENT_ATOL and "onnxruntime" in measured:
        times = ", ".join(f"{c} {measured[c]:.2f} ms" for c in order)
        reason = (
            f"outputs differ by {diff:.3g} (largest output magnitude {scale:.3g}); keeping ONNX Runtime as the reference "
            f"({times} with {threads} thread{plural})"
        )
        log.warning("TVM and ONNX Runtime %s", reason)
        return "onnxruntime", reason
    best = min(order, key=lambda c: (measured[c], order.index(c)))
    others = ", ".join(f"{c} {measured[c]:.2f} ms" for c in order if c != best)
    return best, f"fastest on this machine with {threads} thread{plural}: {best} {measured[best]:.2f} ms vs {others} (median)"


def measure_backends(
    compiled: Mapping[str, tuple[Path, CompiledModule]],
    *,
    repeats: int = 10,
    warmup: int = 2,
    budget_s: float = 30.0,
    seed: int = 0,
) -> tuple[dict[str, float], int, float, float]:
    """Median milliseconds per backend, the threads used, the outputs' largest difference and largest magnitude.

    ``compiled`` maps a backend to the folder its ``CompiledModule`` was
    written to.  Every backend runs the same seeded random input, in its own
    process (``_time_in_child``), ``repeats // 3`` timed runs in each of three
    rounds in rotated order, so background load hits all of them alike.
    Threads follow the runtime's rule (``runtime_threads``).
    """
    from cogent_compiler.runtime.executor import runtime_threads

    threads = runtime_threads()
    specs: list[tuple[tuple[int, ...], Any]] | None = None
    for folder, module in compiled.values():
        if module.backend == "onnxruntime":
            _, specs = _onnxruntime_runner(folder / module.library, threads)  # its session ends here
    if specs is None:
        raise BackendError("measuring backends needs an ONNX Runtime candidate to read the input shapes from")
    rng = np.random.default_rng(seed)
    inputs = [
        rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating) else np.zeros(shape, dtype)
        for shape, dtype in specs
    ]
    names = list(compiled)
    times: dict[str, list[float]] = {b: [] for b in names}
    outputs: dict[str, list[np.ndarray]] = {}
    rounds = 3
    runs = max(1, repeats // rounds)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cogent-measure-") as tmp:
        np.savez(Path(tmp) / "inputs.npz", *inputs)
        for r in range(rounds):
            for b in names[r % len(names):] + names[: r % len(names)]:
                folder, module = compiled[b]
                times[b] += _time_in_child(folder, module, threads, Path(tmp), runs, warmup if r == 0 else 1)
                if b not in outputs:
                    with np.load(Path(tmp) / "outputs.npz") as z:
                        outputs[b] = [z[f"arr_{i}"] for i in range(len(z.files))]
            if time.perf_counter() - start > budget_s:
                break
    diff = 0.0
    first = next(iter(outputs.values()))
    scale = max((float(np.max(np.abs(a))) for a in first if a.size and np.issubdtype(a.dtype, np.number)), default=0.0)
    for other in outputs.values():
        for a, b in zip(first, other):
            if a.shape != b.shape:
                raise BackendError(f"backends disagree on an output's shape: {a.shape} vs {b.shape}")
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0)
    return {b: statistics.median(v) for b, v in times.items()}, threads, diff, scale


def _time_in_child(folder: Path, module: CompiledModule, threads: int, tmp: Path, runs: int, warmup: int) -> list[float]:
    """Time one candidate in a fresh process with the runtime's thread count; its outputs go to ``tmp/outputs.npz``.

    One process per candidate and round: in one process, each runtime's idle
    thread pool (ONNX Runtime's, TVM's) spins on the cores and slowed the other
    candidate 2-3x with 2 threads, whichever ran second.
    """
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    spec = json.dumps({"folder": str(folder), "library": module.library, "params": module.params, "backend": module.backend,
                       "threads": threads, "runs": runs, "warmup": warmup, "tmp": str(tmp)})
    r = subprocess.run([sys.executable, "-c", f"from cogent_compiler.backends.select import _child; _child({spec!r})"],
                       capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise BackendError(f"measuring the {module.backend} candidate failed: {(r.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _child(spec_json: str) -> None:
    """Entry point of ``_time_in_child``'s process: prints the timed runs' milliseconds as JSON."""
    spec = json.loads(spec_json)
    folder, tmp = Path(spec["folder"]), Path(spec["tmp"])
    module = CompiledModule(spec["library"], spec["params"], 0, 0.0, backend=spec["backend"])
    with np.load(tmp / "inputs.npz") as z:
        inputs = [z[f"arr_{i}"] for i in range(len(z.files))]
    if module.backend == "onnxruntime":
        run, _ = _onnxruntime_runner(folder / module.library, spec["threads"])
    else:
        run = _tvm_runner(folder, module, spec["threads"])
    np.savez(tmp / "outputs.npz", *run(inputs))
    for _ in range(spec["warmup"]):
        run(inputs)
    out = []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        run(inputs)
        out.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps(out))


_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def _onnxruntime_runner(path: Path, threads: int) -> tuple[Callable[[list[np.ndarray]], list[np.ndarray]], list[tuple[tuple[int, ...], Any]]]:
    from cogent_compiler.runtime.executor import onnxruntime_session

    try:
        session = onnxruntime_session(path, threads)
    except Exception as e:  # onnxruntime's pybind errors (unsupported op or opset, ...)
        raise BackendError(f"{path.name}: ONNX Runtime cannot load the export ({type(e).__name__}: {str(e).strip()[:300]})") from e
    names = [i.name for i in session.get_inputs()]
    specs = []
    for i in session.get_inputs():
        if i.type not in _ORT_DTYPES or not all(isinstance(d, int) for d in i.shape):
            raise BackendError(f"{path}: input {i.name!r} is {i.type} {i.shape}; measuring needs static shapes of a plain dtype")
        specs.append((tuple(i.shape), np.dtype(_ORT_DTYPES[i.type])))

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(None, dict(zip(names, inputs)))]

    return run, specs


def _tvm_runner(folder: Path, module: CompiledModule, threads: int) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Run the library as the runtime does (relax VM, parameters as device tensors), on the CPU."""
    import tvm

    from cogent_compiler.runtime.executor import _load_params, _to_numpy

    if int(tvm.runtime.num_threads()) != threads:
        log.warning(
            "TVM's thread pool in this process has %d threads, the runtime will use %d; "
            "set TVM_NUM_THREADS before compiling for a like-for-like measurement",
            tvm.runtime.num_threads(), threads,
        )
    dev = tvm.cpu(0)
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(folder / module.library)), dev)
    entry = vm["main"]
    params = [tvm.runtime.tensor(p, dev) for p in _load_params(folder / module.params)] if module.params else []

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return _to_numpy(entry(*[tvm.runtime.tensor(a, dev) for a in inputs], *params))

    return run
