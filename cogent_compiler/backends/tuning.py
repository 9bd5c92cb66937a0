"""Tune a half's kernels with MetaSchedule on a time budget; keep the records in a tuning database.

What is tuned: the fused kernels (PrimFuncs) of a prepared Relax module
(``pipeline.prepare``: the exact functions that are later scheduled and built),
one MetaSchedule task per distinct kernel, weighted by how often it is called.

How: first every kernel's rule-based schedule (``pipeline.rule_schedule``) is
measured with the same builder and runner and stored as a tuning record, so
the database never holds a worse schedule than the one a plain compile would
use, and MetaSchedule's evolutionary search starts from it.  Then
``tune_tasks`` searches the kernels that hold 95 % of the measured time,
round-robin, with XGBoost's cost model and a measure callback that reports
progress and ends every task once the budget is spent (the batch in flight
finishes, so a budget is overrun by at most one batch; the first search in a
process also spends about 20 s importing TVM's tensor intrinsics).  Seeding
is not bounded by the budget: a tiny budget still measures every kernel once.

Where records go: a JSON database per target (``database_dir``) under the
tuning root (``$COGENT_TUNEDB``, else ``<cache>/tunedb``), keyed by workload
(MetaSchedule's structural hash of the kernel).  Records are appended as they
are measured, so an interrupted run loses nothing and the next run resumes
from them; every later compile for that target applies the best record of
each kernel it finds (``open_database``), whatever model the kernel came from.
``export_database``/``merge_database`` move records between machines as one file.

Measurement: on this machine (``LocalRunner``) with the runtime's thread
count, or on other machines through TVM's RPC tracker (``RPCSpec``): the
standard ``python -m tvm.exec.rpc_tracker`` and ``python -m tvm.exec.rpc_server
--tracker HOST:PORT --key KEY``.  A target this machine cannot run (``arm``
from x86, ``cuda`` without a GPU) can only be tuned through a tracker.

Builds do not import ``tvm.s_tir.tensor_intrin`` in each worker (TVM's
default build does, about 55 s a fresh worker here, past the build timeout):
``_build`` lowers and builds directly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogent_compiler.errors import BackendError

__all__ = [
    "DatabaseSummary",
    "RPCSpec",
    "TuningResult",
    "database_dir",
    "database_hits",
    "export_database",
    "extract_tasks",
    "merge_database",
    "open_database",
    "parse_rpc_tracker",
    "prepared_module",
    "summarize_database",
    "tune_halves",
    "tune_module",
    "tunedb_root",
]

log = logging.getLogger(__name__)

#: format tag of the single-file form of a database (``export_database``)
EXPORT_FORMAT = "cogent-tunedb/1"
_WORKLOADS = "database_workload.json"
_RECORDS = "database_tuning_record.json"
#: workload hash -> kernel name (the fused function's name when it was tuned), for ``show``
_NAMES = "kernel_names.json"


def tunedb_root() -> Path:
    """Where tuning databases live: ``$COGENT_TUNEDB``, else ``<cache>/tunedb`` (cache: ``$COGENT_CACHE_DIR`` or ``~/.cache/cogent``)."""
    if os.environ.get("COGENT_TUNEDB"):
        return Path(os.environ["COGENT_TUNEDB"])
    base = os.environ.get("COGENT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cogent")
    return Path(base) / "tunedb"


def target_key(tvm_target: Any) -> str:
    """A folder name for a TVM target: kind, CPU or arch, and a short hash of the whole target string.

    Records are only valid for the code generator they were measured with, so
    the key covers every attribute (``mcpu``, ``mtriple``, ``arch``, ``num-cores``...).
    """
    import hashlib

    text = str(tvm_target)
    kind = tvm_target.kind.name
    attrs = tvm_target.attrs
    cpu = str(attrs.get("mcpu", "") or attrs.get("arch", "") or attrs.get("mtriple", "") or "generic")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{kind}-{cpu}-{digest}")


def database_dir(tvm_target: Any, root: Path | None = None) -> Path:
    """The folder of ``tvm_target``'s database under ``root`` (default ``tunedb_root()``)."""
    return Path(root or tunedb_root()) / target_key(tvm_target)


def _json_database(folder: Path, *, create: bool) -> Any:
    from tvm.s_tir import meta_schedule as ms

    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(folder / _WORKLOADS), path_tuning_record=str(folder / _RECORDS), allow_missing=create
    )


def open_database(tvm_target: Any, root: Path | None = None, *, create: bool = False) -> Any | None:
    """``tvm_target``'s JSON database, or ``None`` when it has none and ``create`` is false."""
    folder = database_dir(tvm_target, root)
    if not create and not (folder / _RECORDS).is_file():
        return None
    try:
        db = _json_database(folder, create=create)
        # Records name their target; the target's own object is written with
        # them so a shared file is self-describing (see ``summarize_database``).
        if create and not (folder / "target.json").exists():
            (folder / "target.json").write_text(json.dumps({"target": str(tvm_target)}) + "\n")
        return db
    except Exception as e:
        raise BackendError(f"tuning database {folder} is unreadable ({_first_line(e)}); move it away or run `cogentc tunedb show`") from e


def prepared_module(program: Any, kind: str, tvm_target: Any) -> Any:
    """The module whose kernels a compile of ``program`` for ``tvm_target`` schedules (``pipeline.prepare``)."""
    from tvm import IRModule, relax

    from cogent_compiler.backends.pipeline import TRANSFORM_PARAMS, prepare
    from cogent_compiler.backends.tvm_backend import _import

    mod, _ = relax.frontend.detach_params(_import(program, kind))
    mod = prepare(mod, tvm_target)
    return IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != TRANSFORM_PARAMS}, attrs=mod.attrs)


def extract_tasks(mod: Any, tvm_target: Any) -> list[Any]:
    """The kernels of a prepared module (``prepared_module``) as MetaSchedule ``ExtractedTask``s, unscheduled ones only."""
    from tvm import IRModule
    from tvm.s_tir import meta_schedule as ms

    from cogent_compiler.backends.pipeline import TRANSFORM_PARAMS

    # main_transform_params runs at compile time on the host: not a kernel of the target
    mod = IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != TRANSFORM_PARAMS}, attrs=mod.attrs)
    tasks = ms.relax_integration.extract_tasks(mod, tvm_target)
    return [t for t in tasks if not t.dispatched[0]["main"].attrs.get("tirx.is_scheduled", False)]


def database_hits(mod: Any, tvm_target: Any, db: Any | None) -> tuple[int, int]:
    """How many of the module's distinct kernels have a record in ``db``, and how many there are."""
    tasks = extract_tasks(mod, tvm_target)
    if db is None:
        return 0, len(tasks)
    return sum(1 for t in tasks if _best_seconds(db, t.dispatched[0]) is not None), len(tasks)


@dataclass(frozen=True)
class RPCSpec:
    """Where measurements run when they run elsewhere: a TVM RPC tracker and the key its runners registered."""

    host: str
    port: int
    key: str
    #: how many measurements run at once (one per runner you have)
    workers: int = 1
    session_timeout_s: int = 60


def parse_rpc_tracker(text: str, key: str | None, workers: int = 1) -> RPCSpec:
    """``HOST:PORT`` (``--rpc-tracker``) and ``--rpc-key`` as an ``RPCSpec``; a clear error when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BackendError(f"--rpc-tracker {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    if not key:
        raise BackendError("--rpc-tracker needs --rpc-key: the key the runners registered with (rpc_server --key KEY)")
    return RPCSpec(host, int(port), key, workers)


@dataclass
class TuningResult:
    """What a tuning run did: for the compile report and the benchmark."""

    target: str
    database: str
    budget_s: float
    seconds: float = 0.0
    tasks: int = 0
    #: kernels that already had a record when the run started
    hits_before: int = 0
    #: records measured: rule-based seeds and MetaSchedule trials
    seeded: int = 0
    trials: int = 0
    failed: int = 0
    #: sum over kernels of calls x best measured time, before and after (ms); None where not all kernels were measured
    estimated_ms_before: float | None = None
    estimated_ms_after: float | None = None
    runner: str = "local"
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for k in ("estimated_ms_before", "estimated_ms_after", "seconds"):
            if out[k] is not None:
                out[k] = round(out[k], 3)
        return out


def _build(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's build without its per-worker ``tensor_intrin`` import (see the module doc)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _export_aarch64(rt_mod: Any) -> str:
    """Export a built kernel as a shared library for aarch64 (the RPC runner uploads it)."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="cogent-tune-"), "kernel.so")
    rt_mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    return path


def _builder(tvm_target: Any, workers: int) -> Any:
    from tvm.s_tir import meta_schedule as ms

    aarch64 = "aarch64" in str(tvm_target.attrs.get("mtriple", ""))
    return ms.builder.LocalBuilder(
        f_build=_build, f_export=_export_aarch64 if aarch64 else None, max_workers=workers, timeout_sec=120
    )


def _runner(rpc: RPCSpec | None, threads: int) -> Any:
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    if rpc is None:
        os.environ["TVM_NUM_THREADS"] = str(threads)  # the runner's workers inherit it
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)
    config = ms.runner.RPCConfig(
        tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key, session_timeout_sec=rpc.session_timeout_s
    )
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=rpc.workers)


def _check_tracker(rpc: RPCSpec) -> None:
    from tvm import rpc as tvm_rpc

    try:
        summary = tvm_rpc.connect_tracker(rpc.host, rpc.port).summary()
    except Exception as e:
        raise BackendError(f"RPC tracker {rpc.host}:{rpc.port} unreachable ({_first_line(e)}); start it with `python -m tvm.exec.rpc_tracker --port {rpc.port}`") from e
    registered = [s for s in summary.get("server_info", []) if str(s.get("key", "")).split(":")[-1] == rpc.key]
    if not registered and not summary.get("queue_info", {}).get(rpc.key, {}).get("free"):
        servers = sorted(summary.get("queue_info", {}))
        raise BackendError(
            f"RPC tracker {rpc.host}:{rpc.port} has no runner with key {rpc.key!r} (keys: {', '.join(servers) or 'none'}); "
            f"start one with `python -m tvm.exec.rpc_server --tracker {rpc.host}:{rpc.port} --key {rpc.key}`"
        )


def _best_seconds(db: Any, task_mod: Any) -> float | None:
    if not db.has_workload(task_mod):
        return None
    records = db.get_top_k(db.commit_workload(task_mod), 1)
    if not records or not records[0].run_secs:
        return None
    secs = [float(s) for s in records[0].run_secs]
    return sum(secs) / len(secs)


def _estimate_ms(db: Any, tasks: Sequence[Any]) -> float | None:
    total = 0.0
    for t in tasks:
        s = _best_seconds(db, t.dispatched[0])
        if s is None:
            return None
        total += t.weight * s * 1e3
    return total


def _seed_rule_schedules(tasks: Sequence[Any], tvm_target: Any, builder: Any, runner: Any, db: Any) -> tuple[int, int]:
    """Measure each kernel's rule-based schedule and commit it as a record; return (committed, failed).

    Kernels that already have records are left alone (a resumed run).
    """
    from tvm.s_tir import meta_schedule as ms

    from cogent_compiler.backends.pipeline import rule_schedule

    todo = []
    for t in tasks:
        task_mod = t.dispatched[0]
        if db.has_workload(task_mod) and db.get_top_k(db.commit_workload(task_mod), 1):
            continue
        with tvm_target:
            sch = rule_schedule(task_mod["main"], tvm_target)
        if sch is None:
            from tvm import s_tir

            sch = s_tir.Schedule(task_mod)  # TVM's default lowering, still a baseline worth recording
        todo.append((t.task_name, task_mod, sch))
    if not todo:
        return 0, 0
    args = [ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True) for _, _, sch in todo]
    built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target) for _, _, sch in todo])
    runs: list[Any] = [None] * len(todo)
    inputs = [
        (i, ms.runner.RunnerInput(b.artifact_path, "cpu" if tvm_target.kind.name == "llvm" else tvm_target.kind.name, a))
        for i, (b, a) in enumerate(zip(built, args))
        if b.error_msg is None
    ]
    for (i, _), future in zip(inputs, runner.run([r for _, r in inputs])):
        runs[i] = future.result()
    committed = failed = 0
    for (name, task_mod, sch), b, r, a in zip(todo, built, runs, args):
        if b.error_msg is not None or r is None or r.error_msg is not None or not r.run_secs:
            failed += 1
            log.warning("rule schedule of %s not measured: %s", name, " ".join(str(b.error_msg or (r and r.error_msg) or "no result").split())[:300])
            continue
        db.commit_tuning_record(
            ms.database.TuningRecord(sch.trace, db.commit_workload(task_mod), [float(s) for s in r.run_secs], tvm_target, a)
        )
        committed += 1
    return committed, failed


def tune_module(
    mod: Any | Sequence[Any],
    tvm_target: Any,
    *,
    budget_s: float,
    root: Path | None = None,
    rpc: RPCSpec | None = None,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
) -> TuningResult:
    """Tune the kernels of a prepared module (or several: their distinct kernels together) for ``budget_s`` seconds.

    Records go to the target's database under ``root``.
    ``threads``: the thread count measurements run with locally (the runtime's).
    ``progress`` receives one line per measured batch.  Returns what was done;
    the database holds the records (``open_database``).
    """
    say = progress or (lambda _msg: None)
    start = time.monotonic()
    deadline = start + budget_s
    folder = database_dir(tvm_target, root)
    result = TuningResult(str(tvm_target), str(folder), budget_s, runner="local" if rpc is None else f"rpc {rpc.host}:{rpc.port} key {rpc.key}")
    if rpc is None and not _runs_here(tvm_target):
        raise BackendError(
            f"cannot measure {tvm_target.kind.name} kernels for {tvm_target} on this machine; "
            "tune through an RPC tracker with --rpc-tracker HOST:PORT --rpc-key KEY, or drop --tune-budget"
        )
    if rpc is not None:
        _check_tracker(rpc)
    tasks = _distinct_tasks([t for m in ([mod] if not isinstance(mod, (list, tuple)) else mod) for t in extract_tasks(m, tvm_target)])
    indexed = [t.task_name for t in tasks if _takes_indices(t.dispatched[0]["main"])]
    if indexed:
        tasks = [t for t in tasks if t.task_name not in indexed]
        result.notes.append(f"{len(indexed)} kernels take integer indices ({', '.join(sorted(indexed))}): "
                            "random inputs would index out of bounds; they keep the rule-based schedule")
    result.tasks = len(tasks)
    if not tasks:
        result.notes.append("no kernels to tune")
        return result
    db = open_database(tvm_target, root, create=True)
    _add_names(folder, {_workload_hash(db.commit_workload(t.dispatched[0])): t.task_name for t in tasks})
    result.hits_before = sum(1 for t in tasks if _best_seconds(db, t.dispatched[0]) is not None)
    _quiet_meta_schedule()
    workers = max(1, min(os.cpu_count() or 1, 2 if rpc is None else rpc.workers))
    builder = _builder(tvm_target, workers)
    runner = _runner(rpc, threads)
    say(f"tuning {len(tasks)} kernels for {tvm_target.kind.name}: {result.hits_before} already in {folder}")
    result.seeded, result.failed = _seed_rule_schedules(tasks, tvm_target, builder, runner, db)
    result.estimated_ms_before = _estimate_ms(db, tasks)
    if result.seeded or result.failed:
        before = f"{result.estimated_ms_before:.2f} ms" if result.estimated_ms_before is not None else "n/a"
        say(f"measured {result.seeded} rule-based schedules, {result.failed} failed ({time.monotonic() - start:.0f} s): kernels sum to {before}")
    chosen = _worth_tuning(db, tasks)
    if len(chosen) < len(tasks):
        result.notes.append(f"searched {len(chosen)} of {len(tasks)} kernels (those holding {int(100 * _COVER)} % of the measured time)")
    if time.monotonic() >= deadline:
        result.notes.append("budget spent measuring the rule-based schedules; no search")
    elif chosen:
        _search(chosen, tvm_target, db, builder, runner, deadline, result, say, seed)
    result.estimated_ms_after = _estimate_ms(db, tasks)
    result.seconds = time.monotonic() - start
    return result


def _takes_indices(func: Any) -> bool:
    """Whether a kernel indexes a tensor by values it loads (``take``'s indices, a gather's).

    Such kernels cannot be measured as MetaSchedule measures: its runner feeds
    random inputs, and random indices read out of bounds and crash it.  (An
    integer mask that is only compared is fine.)
    """
    import tvm
    import tvm_ffi

    found = []

    def visit(load: Any) -> None:
        for index in load.indices:
            tvm_ffi.structural_walk(index, (tvm.ir.TensorLoad, found.append), order="post")

    tvm_ffi.structural_walk(func.body, (tvm.ir.TensorLoad, visit), order="post")
    return bool(found)


def _distinct_tasks(tasks: Sequence[Any]) -> list[Any]:
    """One task per distinct kernel (structural equality), weights summed: halves of one model share kernels."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    merged: dict[int, list[Any]] = {}
    for t in tasks:
        key = int(tvm_ffi.structural_hash(t.dispatched[0]))
        for entry in merged.setdefault(key, []):
            if tvm_ffi.structural_equal(entry[0].dispatched[0], t.dispatched[0]):
                entry[1] += t.weight
                break
        else:
            merged[key].append([t, t.weight])
    out = []
    for entries in merged.values():
        for t, weight in entries:
            out.append(t if weight == t.weight else ms.ExtractedTask(t.task_name, t.mod, t.target, t.dispatched, weight))
    return out


def tune_halves(
    halves: Sequence[tuple[str, Any, str, Any]],
    *,
    budget_s: float,
    root: Path | None = None,
    rpc: RPCSpec | None = None,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Tune the TVM halves of a plan: ``(role, program, kind, TVM target)`` each; return a report per role.

    Halves with the same target are tuned together (shared kernels once); the
    budget is split evenly between targets that can be measured (this
    machine's llvm, or any target through ``rpc``).  A half whose target
    cannot be measured is reported as not tuned, with the reason.
    """
    say = progress or (lambda _msg: None)
    groups: dict[str, list[tuple[str, Any, Any]]] = {}
    reports: dict[str, dict[str, Any]] = {}
    for role, program, kind, tvm_target in halves:
        if rpc is None and not _runs_here(tvm_target):
            reports[role] = {"tuned": False, "reason": f"{tvm_target.kind.name} code cannot run on this machine; tune through an RPC tracker (--rpc-tracker, --rpc-key)"}
            continue
        groups.setdefault(str(tvm_target), []).append((role, tvm_target, prepared_module(program, kind, tvm_target)))
    end = time.monotonic() + budget_s
    for i, members in enumerate(groups.values()):
        share = max(0.0, (end - time.monotonic()) / (len(groups) - i))
        tvm_target = members[0][1]
        roles = [role for role, _, _ in members]
        say(f"tuning {' and '.join(roles)} for {share:.0f} s")
        result = tune_module([m for _, _, m in members], tvm_target, budget_s=share, root=root, rpc=rpc, threads=threads, progress=say)
        for role in roles:
            reports[role] = {"tuned": True, "with": [r for r in roles if r != role], **result.to_json()}
    return reports


#: the search covers the slowest kernels that together take this share of the measured time
_COVER = 0.95


def _worth_tuning(db: Any, tasks: Sequence[Any]) -> list[Any]:
    """The tasks worth searching: by calls x best measured time, the fewest that cover ``_COVER`` of the total.

    Kernels never measured (their rule-based schedule failed) are always included.
    """
    timed = [(t, _best_seconds(db, t.dispatched[0])) for t in tasks]
    unknown = [t for t, s in timed if s is None]
    known = sorted(((t.weight * s, t) for t, s in timed if s is not None), key=lambda x: -x[0])
    total = sum(share for share, _ in known)
    chosen, covered = [], 0.0
    for share, t in known:
        if covered >= _COVER * total:
            break
        chosen.append(t)
        covered += share
    return unknown + chosen


def _runs_here(tvm_target: Any) -> bool:
    """Whether this machine can run ``tvm_target``'s code: llvm for this machine's architecture."""
    import platform

    if tvm_target.kind.name != "llvm":
        return False
    triple = str(tvm_target.attrs.get("mtriple", "") or "")
    return not triple or triple.split("-")[0] == platform.machine()


def _search(tasks: Sequence[Any], tvm_target: Any, db: Any, builder: Any, runner: Any, deadline: float, result: TuningResult, say: Callable[[str], None], seed: int) -> None:
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    if tvm_target.kind.name == "llvm" and "num-cores" not in tvm_target.attrs:
        # MetaSchedule's search needs the core count; records stay keyed by the compile target
        spec = {**dict(tvm_target.export()), "num-cores": max(1, os.cpu_count() or 1)}
        search_target = tvm.target.Target(spec)
        tasks = [ms.ExtractedTask(t.task_name, t.mod, search_target, t.dispatched, t.weight) for t in tasks]
    with tempfile.TemporaryDirectory(prefix="cogent-tune-") as work_dir:
        strategy = ms.search_strategy.EvolutionarySearch(population_size=256, genetic_num_iters=3)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            list(tasks), work_dir, strategy=strategy, num_threads=max(1, os.cpu_count() or 1), seed=seed
        )
        names = [t.task_name for t in tasks]
        budget = max(1.0, deadline - time.monotonic())

        @derived_object
        class _Budget(ms.measure_callback.PyMeasureCallback):
            """Progress after each batch; ends every task once the deadline has passed."""

            def apply(self, task_scheduler: Any, task_id: int, candidates: Any, builder_results: Any, runner_results: Any) -> None:
                ok = sum(1 for b, r in zip(builder_results, runner_results) if b.error_msg is None and r.error_msg is None)
                result.trials += ok
                result.failed += len(runner_results) - ok
                left = deadline - time.monotonic()
                say(f"  {names[task_id]}: {ok}/{len(runner_results)} measured; {result.trials} trials, {max(0.0, left):.0f} s of {budget:.0f} s left")
                if left <= 0:
                    for i, task in enumerate(task_scheduler.tasks_):
                        if not task.is_terminated:
                            task_scheduler.terminate_task(i)

        # Batches sized so a round over the tasks fits the budget several times
        # (about 1 s per trial here); round-robin, since the gradient scheduler's
        # first round ignores terminated tasks and overruns a small budget.
        per_iter = int(min(64, max(8, budget / max(1, len(tasks)) / 4)))
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=work_dir,
            max_trials_global=1_000_000,
            num_trials_per_iter=per_iter,
            builder=builder,
            runner=runner,
            database=db,
            cost_model=ms.cost_model.XGBModel(num_tuning_cores=1),
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), _Budget()],
            task_scheduler="round-robin",
        )


def _quiet_meta_schedule() -> None:
    """MetaSchedule logs every batch's table at INFO; keep those off the console (progress says enough)."""
    for name in ("tvm.s_tir.meta_schedule", "tvm.meta_schedule"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class DatabaseSummary:
    """One database: its target, workloads and records, the kernels' best times."""

    folder: str
    target: str
    workloads: int
    records: int
    #: (kernel name, records, best ms) per workload
    kernels: tuple[tuple[str, int, float | None], ...]


def summarize_database(folder: Path) -> DatabaseSummary:
    """Read a database folder (``database_dir``) without TVM's compiler; for ``cogentc tunedb show``."""
    workloads = _read_lines(folder / _WORKLOADS)
    records = _read_lines(folder / _RECORDS)
    target = ""
    if (folder / "target.json").is_file():
        target = json.loads((folder / "target.json").read_text()).get("target", "")
    count: dict[int, int] = {}
    best: dict[int, float] = {}
    for rec in records:
        index, body = rec[0], rec[1]
        count[index] = count.get(index, 0) + 1
        secs = body[1] if len(body) > 1 else None
        if secs:
            ms_ = 1e3 * sum(float(s) for s in secs) / len(secs)
            best[index] = min(best.get(index, math.inf), ms_)
        if not target and len(body) > 2:
            target = str(body[2])
    names = _read_names(folder)
    kernels = tuple((names.get(str(w[0]), f"workload {i}"), count.get(i, 0), best.get(i)) for i, w in enumerate(workloads))
    return DatabaseSummary(str(folder), target, len(workloads), len(records), kernels)


def _read_names(folder: Path) -> dict[str, str]:
    path = folder / _NAMES
    return json.loads(path.read_text()) if path.is_file() else {}


def _add_names(folder: Path, names: dict[str, str]) -> None:
    merged = {**names, **_read_names(folder)}
    (folder / _NAMES).write_text(json.dumps(merged, indent=0, sort_keys=True) + "\n")


def _read_lines(path: Path) -> list[Any]:
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BackendError(f"{path}:{n}: not a tuning database line ({e.msg}); the file is damaged, restore or delete it") from e
    return out


def export_database(folder: Path, out: Path) -> int:
    """Write a database folder as one JSON file (``EXPORT_FORMAT``); return the number of records."""
    if not (folder / _RECORDS).is_file():
        raise BackendError(f"{folder}: no tuning database here (expected {_RECORDS}); see `cogentc tunedb show`")
    target = json.loads((folder / "target.json").read_text())["target"] if (folder / "target.json").is_file() else ""
    doc = {
        "format": EXPORT_FORMAT,
        "target": target,
        "workloads": _read_lines(folder / _WORKLOADS),
        "records": _read_lines(folder / _RECORDS),
        "kernel_names": _read_names(folder),
    }
    Path(out).write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return len(doc["records"])


def _load_source(source: Path, tmp: Path) -> Path:
    """A database folder for ``source``: itself when a folder, else an exported file unpacked into ``tmp``."""
    source = Path(source)
    if source.is_dir():
        if not (source / _RECORDS).is_file():
            raise BackendError(f"{source}: not a tuning database folder (no {_RECORDS})")
        return source
    try:
        doc = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BackendError(f"{source}: not a tuning database file ({e}); expected the output of `cogentc tunedb export`") from e
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise BackendError(f"{source}: not a {EXPORT_FORMAT} file; expected the output of `cogentc tunedb export`")
    (tmp / _WORKLOADS).write_text("".join(json.dumps(w) + "\n" for w in doc["workloads"]))
    (tmp / _RECORDS).write_text("".join(json.dumps(r) + "\n" for r in doc["records"]))
    (tmp / "target.json").write_text(json.dumps({"target": doc.get("target", "")}) + "\n")
    (tmp / _NAMES).write_text(json.dumps(doc.get("kernel_names", {})) + "\n")
    return tmp


def merge_database(source: Path, root: Path | None = None) -> tuple[str, int, int]:
    """Merge a database (folder or exported file) into the local one of the same target.

    Returns (destination folder, records added, records already present).
    Records are compared by workload and schedule trace, so merging twice adds nothing.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    with tempfile.TemporaryDirectory(prefix="cogent-tunedb-") as tmp:
        folder = _load_source(Path(source), Path(tmp))
        src = _json_database(folder, create=False)
        records = list(src.get_all_tuning_records())
        if not records:
            raise BackendError(f"{source}: holds no tuning records; nothing to merge")
        target_text = json.loads((folder / "target.json").read_text())["target"] if (folder / "target.json").is_file() else ""
        target = tvm.target.Target(target_text) if target_text else records[0].target
        dst_folder = database_dir(target, root)
        dst = open_database(target, root, create=True)
        seen = {(_workload_hash(r.workload), _trace_text(r.trace)) for r in dst.get_all_tuning_records()}
        added = present = 0
        for r in records:
            key = (_workload_hash(r.workload), _trace_text(r.trace))
            if key in seen:
                present += 1
                continue
            wl = dst.commit_workload(r.workload.mod)
            dst.commit_tuning_record(ms.database.TuningRecord(r.trace, wl, r.run_secs, r.target, r.args_info))
            seen.add(key)
            added += 1
        _add_names(Path(dst_folder), _read_names(folder))
    return str(dst_folder), added, present


def _trace_text(trace: Any) -> str:
    return json.dumps(trace.as_json(), sort_keys=True, default=str)


def _workload_hash(workload: Any) -> str:
    """The structural hash a JSON database stores for a workload (its first field)."""
    return str(workload.as_json()[0])


def _first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def iter_databases(root: Path | None = None) -> Iterable[Path]:
    """Every database folder under ``root`` (default ``tunedb_root()``)."""
    base = Path(root or tunedb_root())
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if (p / _RECORDS).is_file())
