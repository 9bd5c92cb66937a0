"""The whole compile: trace, fold, plan, split, lower both halves, write the bundle.

``compile`` is what ``cogentc MODEL -o out/`` runs; each stage is also usable
on its own through the package's API.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogent_compiler.backends.targets import TargetSpec, resolve_target
from cogent_compiler.cost.latency import DEFAULT_GMACS, ComputeCost, ComputeModel, LatencyModel, Link
from cogent_compiler.cost.predictor import ProfileComputeModel
from cogent_compiler.errors import BundleError, CogentError, PlanError
from cogent_compiler.ir import Graph
from cogent_compiler.passes import FoldBatchNorm, PassManager, partition_at, split_program
from cogent_compiler.policy import Plan, PlanReport, baseline_plans, plan_min_cut, plan_single_cut
from cogent_compiler.runtime.manifest import Manifest

__all__ = ["CompileOptions", "CompileResult", "check_output_folder", "choose_plan", "compile", "describe_link", "latency_model_for", "link_settings",
           "joint_stage", "nothing_to_choose", "plan_conditions", "plan_space", "prune_stage", "rl_stage", "unpruned_baselines",
           "JOINT_PLANNERS", "PLANNERS"]

log = logging.getLogger(__name__)

PLANNERS = ("rl", "optuna", "single-cut", "mincut", "device", "edge")
#: planners that choose prune ratios and the cut together (the rest choose the cut of a given model)
JOINT_PLANNERS = ("rl", "optuna")
Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class CompileOptions:
    """Everything ``compile`` needs besides the model.  Bandwidth in bit/s, RTT in s.

    The link and edge-load fields are usually filled by ``link_settings``
    from a link profile (``cogentc profile --peer``) and the user's flags.
    """

    device_target: str = "llvm"
    edge_target: str = "llvm"
    #: uplink (device to edge) bandwidth; also the downlink unless ``bandwidth_down_bps`` is given
    bandwidth_bps: float = 20e6
    rtt_s: float = 0.010
    bandwidth_down_bps: float | None = None
    #: the runtime's fixed cost per request/response beyond the round trip
    per_message_s: float = 0.0
    #: slowdown factor of edge compute: 1.0 an idle edge, 2.0 one twice as slow (shared, busy)
    edge_load: float = 1.0
    #: how float32 tensors cross the link: ``auto`` (float16 where it is faster), ``float16`` or ``float32`` (exact)
    transfer_dtype: str = "auto"
    #: the link profile the link figures came from (``None``: flags or defaults), and a label saying so
    link_profile: str | None = None
    link_source: str = "flags"
    device_gmacs: float | None = None
    edge_gmacs: float | None = None
    #: measured profiles (``cogentc profile``) that replace the GMAC/s estimates, per side
    device_profile: str | None = None
    edge_profile: str | None = None
    #: ``rl`` (the learned policy: prune ratios and cut together), ``optuna`` (TPE on both), or a cut-only planner
    planner: str = "rl"
    cut: tuple[str, ...] = ()
    base_image: str = "python:3.11-slim"
    fold_batch_norm: bool = True
    #: ``auto`` (measure TVM and ONNX Runtime where both apply, keep the faster), ``tvm`` or ``onnxruntime``
    backend: str = "auto"
    #: seconds of MetaSchedule tuning before lowering (0: none; existing records are still applied)
    tune_budget_s: float = 0.0
    #: tuning database root (``None``: ``$COGENT_TUNEDB`` or the cache)
    tunedb: str | None = None
    #: apply tuning records at all (``--no-tunedb`` turns it off)
    use_tunedb: bool = True
    #: ``HOST:PORT`` of a TVM RPC tracker that measures tuning candidates, its runners' key and how many at once
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    rpc_workers: int = 1
    #: structured pruning: one ratio for every prune group, then per-group ratios by group name
    prune: float = 0.0
    prune_ratios: Mapping[str, float] = field(default_factory=dict)
    #: evaluation and fine-tuning data (``digits``, ``imagefolder:DIR``, ``npz:FILE``); without it nothing is pruned ...
    data: str | None = None
    #: ... unless the user opts in to pruning without checking accuracy
    prune_unvalidated: bool = False
    #: the largest top-1 loss (a fraction: 0.01 is one point) a pruned model may have
    max_accuracy_drop: float = 0.01
    #: fine-tuning budget after pruning (neither: 300 steps)
    finetune_steps: int | None = None
    finetune_time_s: float | None = None
    #: ``--planner rl``: a trained policy file to answer with (``None``: train one, cached by model and conditions)
    policy: str | None = None
    #: steps of TD3 training when a policy is trained
    rl_timesteps: int = 3000
    #: ``--planner optuna``: plans evaluated (each one measured for accuracy)
    search_budget: int = 60
    #: ``--planner rl|optuna``: the largest fraction of a group's channels a plan may remove
    max_prune_ratio: float = 0.9
    #: ``--planner rl|optuna``: fine-tuning steps each candidate plan gets before its accuracy is measured
    search_finetune_steps: int = 20
    #: ``--planner rl|optuna``: stretch the chosen ratios towards ``max_prune_ratio`` while the final accuracy check (the
    #: full fine-tune) still passes; the search's short fine-tunes judge heavy pruning harsher than the check does
    stretch: bool = True


@dataclass(frozen=True)
class CompileResult:
    out_dir: Path
    graph: Graph
    report: PlanReport
    device: Manifest
    edge: Manifest
    timings: dict[str, float] = field(default_factory=dict)
    #: per role (``device``, ``edge``): the ``BackendChoice`` as JSON, for halves that have a module
    backends: dict[str, Any] = field(default_factory=dict)
    #: what pruning did to accuracy (``AccuracyReport.to_json``), ``None`` when nothing was to be pruned
    accuracy: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out_dir),
            "model": self.graph.name,
            "plan": self.report.to_json()["chosen"],
            "baselines": {k: v.to_json() for k, v in self.report.baselines.items()},
            "speedup_predicted": self.report.speedups(),
            "device_bundle": str(self.out_dir / "device"),
            "edge_bundle": str(self.out_dir / "edge"),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "backends": self.backends,
            "accuracy": self.accuracy,
        }


_DEFAULT_LINK = CompileOptions()


def link_settings(
    link_profile: str | None = None,
    *,
    bandwidth_bps: float | None = None,
    rtt_s: float | None = None,
    edge_load: float | None = None,
) -> dict[str, Any]:
    """The ``CompileOptions`` link fields: a link profile's figures, each replaced by an explicit value given.

    ``bandwidth_bps`` given sets both directions.  Without a profile, what is
    not given takes the defaults (20 Mbit/s, 10 ms, no per-message overhead,
    edge load 1.0).  Raises ``LinkFormatError`` for a profile that cannot be
    read and ``CogentError`` for a non-positive edge load.
    """
    from cogent_compiler.cost.link import load_link_profile

    if edge_load is not None and not edge_load > 0:
        raise CogentError(f"edge load {edge_load} is not a slowdown factor; give a positive number such as 1.0 (idle edge) or 2.0 (twice as slow)")
    fields: dict[str, Any] = {
        "bandwidth_bps": _DEFAULT_LINK.bandwidth_bps, "bandwidth_down_bps": None, "rtt_s": _DEFAULT_LINK.rtt_s,
        "per_message_s": 0.0, "edge_load": 1.0, "link_profile": None, "link_source": "flags",
    }
    given = [name for name, value in (("bandwidth", bandwidth_bps), ("RTT", rtt_s), ("edge load", edge_load)) if value is not None]
    if not given:
        fields["link_source"] = "defaults"
    if link_profile:
        lp = load_link_profile(link_profile)
        fields.update(bandwidth_bps=lp.bandwidth_up_bps, bandwidth_down_bps=lp.bandwidth_down_bps, rtt_s=lp.rtt_s,
                      per_message_s=lp.per_message_s, edge_load=lp.edge_load_factor, link_profile=str(link_profile),
                      link_source=f"link profile {link_profile} ({lp.peer}, {lp.date})" + (f"; {', '.join(given)} from flags" if given else ""))
    if bandwidth_bps is not None:
        fields.update(bandwidth_bps=bandwidth_bps, bandwidth_down_bps=None)
    if rtt_s is not None:
        fields["rtt_s"] = rtt_s
    if edge_load is not None:
        fields["edge_load"] = edge_load
    return fields


def latency_model_for(device: TargetSpec, edge: TargetSpec, options: CompileOptions) -> LatencyModel:
    """The latency model: per side a measured profile if given, else the user's throughput or a labelled default.

    Raises ``ProfileError`` for a profile that cannot be read or was measured for another target.
    """
    def compute(role: str, t: TargetSpec, given: float | None, profile: str | None) -> ComputeCost:
        if profile:
            return ProfileComputeModel.from_file(f"{role}:{t.label}", profile, expect_target=t.label)
        if given is not None:
            return ComputeModel(f"{role}:{t.label}", given, source="flag")
        return ComputeModel(f"{role}:{t.label}", DEFAULT_GMACS[t.kind], source="default estimate")

    return LatencyModel(
        device=compute("device", device, options.device_gmacs, options.device_profile),
        edge=compute("edge", edge, options.edge_gmacs, options.edge_profile),
        link=Link(options.bandwidth_bps, options.rtt_s, options.per_message_s, options.bandwidth_down_bps, source=options.link_source),
        edge_load=options.edge_load,
        transfer_dtype=options.transfer_dtype,
    )


def describe_link(model: LatencyModel) -> str:
    """One line: the link and edge load a latency model plans with, and where they come from."""
    link = model.link
    return (f"up {link.bandwidth_bps / 1e6:g} Mbit/s, down {link.down_bps / 1e6:g} Mbit/s, RTT {link.rtt_s * 1e3:g} ms, "
            f"per message {link.per_message_s * 1e3:g} ms, edge load {model.edge_load:g}x ({link.source})")


def plan_conditions(device: TargetSpec, edge: TargetSpec, options: CompileOptions) -> dict[str, str]:
    """What the plan report shows beside the latency model's figures: the targets and how the plan was chosen."""
    planner = f"forced cut --cut {','.join(options.cut)}" if options.cut and options.planner not in JOINT_PLANNERS else options.planner
    if options.planner == "rl":
        planner = f"rl: learned policy ({options.policy or 'trained for this model'})"
    elif options.planner == "optuna":
        planner = f"optuna: TPE over prune ratios and the cut ({options.search_budget} plans evaluated)"
    return {"device target": device.label, "edge target": edge.label, "planner": planner}


def unpruned_baselines(graph: Graph, model: LatencyModel) -> dict[str, Plan]:
    """Device-only, edge-only and the best single cut of the unpruned ``graph``: what a pruned plan is compared with."""
    base = baseline_plans(graph, model)
    base["single_cut"] = dataclasses.replace(plan_single_cut(graph, model).chosen, name="single_cut")
    return base


def choose_plan(graph: Graph, model: LatencyModel, planner: str, cut: tuple[str, ...] = ()) -> PlanReport:
    """Run ``planner``; a non-empty ``cut`` overrides it with that cut (scored the same way)."""
    if not cut and planner == "single-cut":
        return plan_single_cut(graph, model)
    if not cut and planner == "mincut":
        return plan_min_cut(graph, model)
    if not cut and planner in JOINT_PLANNERS:
        raise PlanError(f"the {planner} planner answers with prune ratios and a cut (driver.joint_stage); pass its cut here")
    if not cut and planner not in ("device", "edge"):
        raise PlanError(f"planner {planner!r} is unknown; use one of {', '.join(PLANNERS)}")
    base = baseline_plans(graph, model)
    chosen = Plan.score(planner if planner in JOINT_PLANNERS else "manual", graph, tuple(cut), model) if cut else base[f"{planner}_only"]
    return PlanReport(graph.name, chosen, base, (), model.to_json())


def _tune(options: CompileOptions, split: Any, device_t: TargetSpec, edge_t: TargetSpec, say: Progress,
          timings: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tune the halves when asked, then open each half's tuning database; (tuning report, database) per role."""
    from cogent_compiler.backends import tuning
    from cogent_compiler.backends.tvm_backend import tvm_target_for
    from cogent_compiler.runtime.executor import runtime_threads

    if not options.use_tunedb:
        return {}, {}
    root = Path(options.tunedb) if options.tunedb else None
    halves = [(role, program, split.kind, tvm_target_for(t))
              for role, program, t in (("device", split.head, device_t), ("edge", split.tail, edge_t)) if program is not None]
    reports: dict[str, Any] = {}
    if options.tune_budget_s > 0:
        t = time.perf_counter()
        rpc = tuning.parse_rpc_tracker(options.rpc_tracker, options.rpc_key, options.rpc_workers) if options.rpc_tracker else None
        reports = tuning.tune_halves(halves, budget_s=options.tune_budget_s, root=root, rpc=rpc, threads=runtime_threads(),
                                     progress=lambda msg: say("tune", msg))
        for role, r in reports.items():
            if not r["tuned"]:
                say("tune", f"{role}: not tuned: {r['reason']}")
        timings["tune"] = time.perf_counter() - t
    databases = {role: tuning.open_database(tvm_target, root) for role, _, _, tvm_target in halves}
    return reports, {role: db for role, db in databases.items() if db is not None}


def prune_stage(graph: Graph, options: CompileOptions, data: Any, say: Progress, *,
                stretch_to: float | None = None) -> tuple[Graph, dict[str, Any] | None]:
    """Prune ``graph`` as ``options`` ask, held to the accuracy budget on ``data`` (or ``options.data``).

    ``data`` (Python API) is a ``Dataset``, a DataLoader or an evaluation
    function; ``None`` uses ``options.data``.  No data: nothing is pruned and
    the user is told why, unless ``prune_unvalidated`` says to prune anyway.
    ``stretch_to``: stretch ratios that fit towards it (``prune_within_budget``).
    Returns the graph that ships and the accuracy report as JSON (``None``
    when no pruning was asked for).
    """
    from cogent_compiler.accuracy.budget import AccuracyReport, prune_within_budget, uniform_ratios
    from cogent_compiler.passes.prune_channels import PruneChannels
    from cogent_compiler.passes.prune_groups import prune_groups_of

    if options.prune <= 0 and not any(v > 0 for v in options.prune_ratios.values()):
        return graph, None
    if not 0 <= options.prune < 1:
        raise PlanError(f"--prune {options.prune}: give the fraction of channels to remove in [0, 1), e.g. 0.3")
    if options.max_accuracy_drop < 0:
        raise PlanError(f"--max-accuracy-drop {options.max_accuracy_drop}: give a non-negative fraction of top-1, e.g. 0.01")
    ratios = uniform_ratios(prune_groups_of(graph), options.prune, options.prune_ratios)
    say("prune", f"{len(ratios)} groups to prune")
    if data is None and options.data is None:
        if not options.prune_unvalidated:
            say("prune", "skipped: no --data to measure accuracy on, so pruning cannot be held to --max-accuracy-drop; "
                "give --data (digits, imagefolder:DIR, npz:FILE) or --prune-unvalidated to prune without checking")
            return graph, AccuracyReport("skipped: no data", {}, None, options.max_accuracy_drop, macs_before=graph.total_macs,
                                         macs_after=graph.total_macs).to_json()
        pruned = PruneChannels(ratios)(graph)
        say("prune", f"UNVALIDATED (--prune-unvalidated): {pruned.total_macs / max(graph.total_macs, 1):.0%} of the MACs left, "
            "accuracy not measured")
        return pruned, AccuracyReport("unvalidated", ratios, None, None, macs_before=graph.total_macs, macs_after=pruned.total_macs).to_json()
    shipped, report = prune_within_budget(graph, ratios, _resolve_data(graph, options, data), options.max_accuracy_drop,
                                          finetune_steps=options.finetune_steps, finetune_time_s=options.finetune_time_s,
                                          stretch_to=stretch_to, say=lambda msg: say("prune", msg))
    return shipped, report.to_json()


def _resolve_data(graph: Graph, options: CompileOptions, data: Any) -> Any:
    """``data`` as the accuracy code takes it: a ``Dataset`` (``options.data`` loaded, or a DataLoader split) or the user's evaluation function."""
    shape, dtype = graph.inputs[0].shape, graph.inputs[0].dtype
    if data is None:
        from cogent_compiler.accuracy.data import load_data

        return load_data(options.data, shape, _num_classes(graph), input_dtype=dtype)  # type: ignore[arg-type]
    if not callable(data) and not _is_dataset(data):
        from cogent_compiler.accuracy.data import from_loader

        return from_loader(data, shape, _num_classes(graph), input_dtype=dtype)
    return data


def _is_dataset(data: Any) -> bool:
    from cogent_compiler.accuracy.data import Dataset

    return isinstance(data, Dataset)


def _num_classes(graph: Graph) -> int:
    """The model's class count: the last dimension of its first output."""
    if len(graph.inputs) != 1:
        raise PlanError(f"{graph.name}: pruning with data needs a model with one input, this one has {len(graph.inputs)}")
    shape = graph.tensors[graph.outputs[0]].shape
    if len(shape) != 2:
        raise PlanError(f"{graph.name}: pruning with data needs a classifier (output N x classes); the output is {list(shape)}")
    return int(shape[-1])


def plan_space(graph: Graph, options: CompileOptions, data: Any, device_t: TargetSpec, edge_t: TargetSpec, say: Progress) -> Any:
    """The learned policy's ``PlanSpace`` for ``graph`` under ``options``: its prune groups, cuts, compute models and accuracy oracle.

    Without data (``data`` and ``options.data`` both ``None``) the space has
    no accuracy oracle and the policy may only choose the cut.
    """
    from cogent_compiler.passes.prune_groups import PruneAnalysis, prune_groups_of
    from cogent_compiler.policy.space import AccuracyOracle, PlanSpace

    if not 0.0 < options.max_prune_ratio < 1.0:
        raise PlanError(f"--max-prune-ratio {options.max_prune_ratio}: give a fraction of a group's channels between 0 and 1, e.g. 0.8")
    if options.search_finetune_steps < 0:
        raise PlanError(f"--search-finetune-steps {options.search_finetune_steps}: give a number of steps, 0 or more (default 20)")
    lat = latency_model_for(device_t, edge_t, options)
    folded = PassManager([FoldBatchNorm()]).run(graph).graph if options.fold_batch_norm else graph
    analysis = prune_groups_of(folded) if folded.module is not None else PruneAnalysis(())
    oracle = None
    if data is not None or options.data is not None:
        dataset = _resolve_data(graph, options, data)
        if not _is_dataset(dataset):
            raise PlanError("the learned policy measures accuracy on a Dataset (--data or the Python API's load_data / from_loader); "
                            "an evaluation function cannot fine-tune the candidates")
        oracle = AccuracyOracle(folded, dataset, finetune_steps=options.search_finetune_steps)
    else:
        say("rl", "no data: the policy chooses the cut only (no data, no pruning)")
    return PlanSpace(folded, analysis, lat.device, lat.edge, oracle, max_ratio=options.max_prune_ratio, transfer_dtype=options.transfer_dtype)


def nothing_to_choose(graph: Graph, options: CompileOptions, data: Any) -> str | None:
    """Why ``--planner rl|optuna`` has no prune ratios to choose here (``None``: it has), leaving only the cut."""
    if options.prune > 0 or any(v > 0 for v in options.prune_ratios.values()):
        return "the prune ratios are fixed (--prune / --prune-ratios)"
    if data is None and options.data is None:
        return "no --data to measure accuracy on, so nothing is pruned"
    if data is not None and callable(data) and not _is_dataset(data):
        return "an evaluation function cannot fine-tune the candidates (pass a Dataset: load_data or from_loader)"
    if graph.module is None:
        return "the model has no eager module to prune (a .pt2, TorchScript or ONNX file; give it as package.module:factory)"
    return None


def joint_stage(graph: Graph, options: CompileOptions, data: Any, device_t: TargetSpec, edge_t: TargetSpec,
                say: Progress) -> tuple[dict[str, float], tuple[str, ...], dict[str, Any]] | None:
    """``--planner rl|optuna``: prune ratios and a cut chosen together for the options' conditions.

    ``None`` when there is nothing to choose but the cut (``nothing_to_choose``,
    or a model without prune groups): the best cut is then found exactly by
    the single-cut planner, which no learned or sampled guess can beat.
    Otherwise (ratios, cut, info) from ``rl_stage`` or ``optuna_stage``.
    """
    why = nothing_to_choose(graph, options, data)
    if why is None:
        space = plan_space(graph, options, data, device_t, edge_t, say)
        why = None if space.groups else "the model has no prune groups"
    if why is not None:
        say("plan", f"{options.planner}: {why}; the cut alone is chosen, exactly (single-cut planner)")
        return None
    from cogent_compiler.policy.space import Conditions

    c = Conditions(options.bandwidth_bps / 1e6, options.rtt_s * 1e3, options.edge_load, 1.0, options.max_accuracy_drop)
    return (rl_stage if options.planner == "rl" else optuna_stage)(space, graph, options, c, say)


def optuna_stage(space: Any, graph: Graph, options: CompileOptions, c: Any,
                 say: Progress) -> tuple[dict[str, float], tuple[str, ...], dict[str, Any]]:
    """``--planner optuna``: TPE over the prune ratios for these conditions, each paired with its fastest cut; ``options.search_budget`` plans measured."""
    from cogent_compiler.policy.search import optuna_search

    say("optuna", f"searching {options.search_budget} plans (prune ratios of {len(space.groups)} groups and the cut), each measured for accuracy")
    r = optuna_search(space, c, options.search_budget, seed=0, exact_cut=True)
    say("optuna", f"best of {r.evaluations} plans in {r.wall_s:.0f}s: {sum(1 for v in r.ratios.values() if v > 0)} groups pruned, "
        f"cut at {', '.join(r.cut)} (predicted {r.latency_ms:.1f} ms)")
    return r.ratios, r.cut, {"search": r.to_json(), "conditions": c.to_json(), "predicted_ms": r.latency_ms,
                             "priced_graph": space.pruned(r.ratios)}


def rl_stage(space: Any, graph: Graph, options: CompileOptions, c: Any,
             say: Progress) -> tuple[dict[str, float], tuple[str, ...], dict[str, Any]]:
    """``--planner rl``: the learned policy's prune ratios and cut for conditions ``c``.

    Loads ``options.policy`` or trains a TD3 policy in the model's plan space
    (cached under ``~/.cache/cogent/policies`` by model, compute models, data
    and agent settings, so a second compile answers at once; training resumes
    if interrupted).  Returns (ratios, cut, info).
    """
    import hashlib
    import os

    from cogent_compiler.policy.rl import POLICY_FORMAT, LearnedPolicy, default_config, train_policy
    from cogent_compiler.policy.space import ConditionRanges

    if options.policy:
        policy = LearnedPolicy.load(options.policy)
    else:
        cfg = default_config(options.rl_timesteps)
        ranges = ConditionRanges(max_drop=(options.max_accuracy_drop, options.max_accuracy_drop))  # trained for the user's budget
        ident = json.dumps([graph.name, space.groups, space.cuts, space.device.to_json(), space.edge.to_json(), options.data,
                            dataclasses.asdict(cfg), dataclasses.asdict(ranges), options.transfer_dtype, POLICY_FORMAT, space.max_ratio,
                            space.accuracy.finetune_steps if space.accuracy else None], sort_keys=True, default=str)
        root = Path(os.environ.get("COGENT_POLICIES", Path.home() / ".cache" / "cogent" / "policies"))
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{graph.name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.zip"
        if path.exists():
            policy = LearnedPolicy.load(path)
            say("rl", f"policy from the cache: {path}")
        else:
            say("rl", f"training a TD3 policy: {cfg.timesteps} steps over bandwidth, RTT, edge load and device speed ({len(space.groups)} "
                f"prune groups, {len(space.cuts)} cuts); --planner single-cut skips this")
            policy = train_policy(space, cfg, path, ranges=ranges, progress_bar=False,
                                  callback=lambda step, r: say("rl", f"step {step}/{cfg.timesteps}: mean reward {r:.3f}") or True)
            say("rl", f"trained in {policy.info['train_s']:.0f}s ({policy.info['accuracy_evaluations']} plans measured for accuracy); "
                f"saved {path}")
    ratios, cut, info = policy.answer(space, c)
    origin = {"rollout": "the actor's rollout", "measured plan": "a plan measured in training",
              "unpruned": "no pruning (its rollout prunes more than a plan measured over the budget, and no measured plan fits)"}[info["source"]]
    say("rl", f"answered in {info['answer_ms']:.1f} ms with {origin}: {sum(1 for r in ratios.values() if r > 0)} groups pruned, cut at "
        f"{', '.join(cut)} (predicted {info['latency_ms']:.1f} ms; the rollout alone {info['rollout']['latency_ms']:.1f} ms)")
    return ratios, cut, {"answer_ms": info["answer_ms"], "source": info["source"], "policy": options.policy or str(path), "conditions": c.to_json(),
                         "predicted_ms": info["latency_ms"], "policy_info": policy.info, "priced_graph": space.pruned(ratios)}


def check_output_folder(out: Path) -> None:
    """Refuse to overwrite a folder that is neither empty nor a previous bundle."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out}: exists and is not a folder; choose another -o")
    if out.is_dir() and any(out.iterdir()) and not (out / "plan.json").is_file():
        raise BundleError(f"{out}: folder is not empty and holds no earlier bundle; choose an empty or new -o folder")


def compile(
    graph: Graph,
    out_dir: str | Path,
    options: CompileOptions | None = None,
    progress: Progress | None = None,
    *,
    source: Mapping[str, Any] | None = None,
    data: Any = None,
) -> CompileResult:
    """Compile a traced model into a bundle at ``out_dir``.

    ``data`` (a ``Dataset``, a torch DataLoader or an evaluation function
    ``module -> top-1``) replaces ``options.data`` for pruning (``prune_stage``).

    ``source`` says how the model was loaded (``{"model": spec, "input_shape":
    [...], "trust_pickle": bool}``); it is recorded in ``plan.json`` with the
    options so that ``cogentc bench`` can rebuild the baselines the same way.

    ``out_dir`` is replaced only once everything compiled: the bundle is built
    in a sibling temporary folder first, so a failure never leaves a half-written
    bundle or destroys the previous one.
    """
    from cogent_compiler.backends.select import backend_candidates, choose_backend
    from cogent_compiler.bundle import write_compose, write_half
    from cogent_compiler.report import write_report

    options = options or CompileOptions()
    candidates = backend_candidates(options.backend)
    say: Progress = progress or (lambda stage, msg: log.info("%s: %s", stage, msg))
    timings: dict[str, float] = {}
    device_t = resolve_target(options.device_target)
    edge_t = resolve_target(options.edge_target)
    out = Path(out_dir)
    check_output_folder(out)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)

    rl_info = None
    if options.planner in JOINT_PLANNERS and not options.cut:
        t = time.perf_counter()
        answer = joint_stage(graph, options, data, device_t, edge_t, say)
        if answer is None:
            options = dataclasses.replace(options, planner="single-cut")
        else:
            ratios, joint_cut, rl_info = answer
            rl_info.pop("priced_graph")
            options = dataclasses.replace(options, prune=0.0, prune_ratios=ratios, cut=joint_cut)
        timings[options.planner] = time.perf_counter() - t

    t = time.perf_counter()
    unpruned = graph
    stretch_to = options.max_prune_ratio if rl_info is not None and options.stretch else None
    graph, accuracy = prune_stage(graph, options, data, say, stretch_to=stretch_to)
    timings["prune"] = time.perf_counter() - t

    t = time.perf_counter()
    if options.fold_batch_norm:
        before = sum(1 for n in graph.nodes if n.op == "batch_norm")
        graph = PassManager([FoldBatchNorm()]).run(graph).graph
        after = sum(1 for n in graph.nodes if n.op == "batch_norm")
        say("fold", f"folded {before - after} batch norms into convolutions")
    timings["fold"] = time.perf_counter() - t

    t = time.perf_counter()
    lat = latency_model_for(device_t, edge_t, options)
    if rl_info is not None and accuracy and accuracy["status"] != "accepted":
        # the check shipped other ratios than the planner chose its cut for: the fastest cut of the model that ships
        options = dataclasses.replace(options, cut=tuple(plan_single_cut(graph, lat).chosen.cut))
        say("plan", f"the accuracy check {accuracy['status']} the ratios; the cut is chosen again for the model that ships")
    report = choose_plan(graph, lat, options.planner, options.cut)
    if graph.total_macs != unpruned.total_macs:
        # the chosen plan carries the ratios the shipped model was pruned by; the baselines are the *unpruned* model's
        folded = PassManager([FoldBatchNorm()]).run(unpruned).graph if options.fold_batch_norm else unpruned
        report = dataclasses.replace(report, chosen=dataclasses.replace(report.chosen, prune_ratios=accuracy["ratios"] if accuracy else {}),
                                     baselines=unpruned_baselines(folded, lat))
    c = report.chosen
    say("plan", f"{c.name if options.cut else options.planner}: cut at {', '.join(c.cut)} — predicted {c.predicted.total_ms:.1f} ms "
        f"(device {c.predicted.device_ms:.1f} + transfer {c.predicted.transfer_ms:.1f} + edge {c.predicted.edge_ms:.1f}; "
        f"device compute from {lat.device.source}, edge from {lat.edge.source})")
    say("plan", f"link: {describe_link(lat)}")
    if c.encodings:
        say("plan", f"sent as float16 (--transfer-dtype {options.transfer_dtype}): {', '.join(sorted(c.encodings))}")
    timings["plan"] = time.perf_counter() - t

    t = time.perf_counter()
    part = partition_at(graph, c.cut)
    split = split_program(part)
    say("split", f"head {len(part.head_nodes)} ops, tail {len(part.tail_nodes)} ops, {len(part.sent)} tensor(s) cross")
    timings["split"] = time.perf_counter() - t

    plan_json = report.to_json()["chosen"]
    tuned, databases = _tune(options, split, device_t, edge_t, say, timings)
    try:
        halves = {}
        backends: dict[str, Any] = {}
        for role, program, target in (("device", split.head, device_t), ("edge", split.tail, edge_t)):
            t = time.perf_counter()
            folder = staging / role
            folder.mkdir(parents=True, exist_ok=True)
            if program is None:
                halves[role] = None
                say(f"lower {role}", "nothing to run here")
            else:
                halves[role], choice = choose_backend(program, split.kind, target, folder, name=f"{graph.name} {role}",
                                                      candidates=candidates, database=databases.get(role))
                backends[role] = {**choice.to_json(), "stages": list(halves[role].stages), "tuning": tuned.get(role)}
                if halves[role].tuned_kernels is not None:
                    hits, kernels = halves[role].tuned_kernels
                    backends[role]["tunedb"] = {"kernels": kernels, "with_record": hits}
                    say(f"lower {role}", f"tuning database: {hits}/{kernels} kernels have a record")
                say(f"lower {role}", f"{target.label}: {choice.backend} ({choice.reason}) in {time.perf_counter() - t:.1f}s")
            timings[f"lower_{role}"] = time.perf_counter() - t

        t = time.perf_counter()
        head, tail = halves["device"], halves["edge"]
        device_m = write_half(
            staging / "device", role="device", model=graph.name, target=device_t,
            library=head.library if head else None, params=head.params if head else None,
            kernels=head.kernels if head else (), backend=head.backend if head else "tvm",
            inputs=split.model_inputs, outputs=split.head_outputs if head else split.model_inputs,
            send=[s.name for s in split.sent], model_outputs=split.model_outputs,
            plan=plan_json, base_image=options.base_image, encodings=c.encodings,
        )
        edge_m = write_half(
            staging / "edge", role="edge", model=graph.name, target=edge_t,
            library=tail.library if tail else None, params=tail.params if tail else None,
            kernels=tail.kernels if tail else (), backend=tail.backend if tail else "tvm",
            inputs=split.sent, outputs=split.tail_outputs, plan=plan_json, base_image=options.base_image,
            encodings=c.encodings if tail else None,
        )
        write_compose(staging, model=graph.name, edge_device=edge_t.device, base_image=options.base_image)
        plan_doc = {**report.to_json(), "accuracy": accuracy, "policy": rl_info,
                    "build": {"source": dict(source or {}), "options": dataclasses.asdict(options), "backends": backends}}
        (staging / "plan.json").write_text(json.dumps(plan_doc, indent=2) + "\n")
        write_report(report, staging, model_name=graph.name, conditions=plan_conditions(device_t, edge_t, options), accuracy=accuracy)
        timings["bundle"] = time.perf_counter() - t
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say("bundle", f"wrote {out}/device, {out}/edge, compose.yaml, plan.json, report.html, plan.png")
    return CompileResult(out, graph, report, device_m, edge_m, timings, backends, accuracy)
