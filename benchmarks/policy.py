"""The learned policy against search baselines at an equal budget of evaluated plans.

    python benchmarks/policy.py            # 3 digits CNNs x 4 conditions (uses the partition benchmark's profiles)
    python benchmarks/policy.py --smoke    # 1 model, 2 conditions, short training, flags-only compute (CI)
    python benchmarks/policy.py --rl-episodes 67 --jobs 2   # training length per prune group; models in 2 processes

For each model (``benchmarks/digits_models.py``: VGG-, ResNet- and
MobileNet-style CNNs trained inside the benchmark on scikit-learn's digits at
1x32x32, fixed seeds) a plan space is built as ``cogentc --planner rl``
builds it: the folded IR, its prune groups, the candidate cuts, device
compute from the profile measured on this CPU under a 10 % quota and edge
compute from the one at full speed (``benchmarks/partition.py`` names the
commands that make them), and an accuracy oracle (held-out digits, a short
fine-tune per plan, cached; the accuracy budget is 1 point of top-1).

``rl``: one TD3 policy per model, trained over ranges of bandwidth, RTT,
edge load and device speed, then asked for each case's conditions (its
answer: the faster of the actor's rollout and the plans it measured in
training, those included that a climb from the fastest of them measured at the end --
``rl.polish``, ``--polish-attempts`` -- priced for the case -- ``LearnedPolicy.answer``; ``rl_rollout``
is the actor's rollout alone, to show what the learning is worth, its
shape repaired into the budget, or with ``--stretch-attempts`` also stretched, as training fits every plan --
``PruneCutEnv``); a plan
the oracle finds over budget is repaired as the compiler repairs it (every
ratio scaled by a common factor found by bisection) and the repair's evaluations are counted.  Its
``evaluations`` are the distinct plans the oracle measured in training plus
repairs, and every baseline gets that many for *each* case (the policy
spends its budget once for all conditions): ``uniform`` (one ratio for all
groups, a grid), ``random`` and ``optuna`` (TPE on ratios and the cut),
each pairing its ratios with the fastest cut (``policy.search``).  Every
latency is *predicted* (latency model + ``prune_ir``); accuracies are the
oracle's.  Each method's final plan is then checked as a compile checks it
(``--validate-steps`` of fine-tuning, the whole held-out split) and repaired
the same way (the policy's raw answer, as the compile gets it): ``validated``
per method and ``rl_vs_best_baseline_validated`` per case -- the best of many
noisy oracle answers favours lucky plans, and this check removes that edge.  Also per case: ``partition_only_ms`` (the best cut of the
unpruned model) and ``device_only_ms``.

Writes ``benchmarks/results/policy.json``: ``machine``, ``command``,
``setup``, ``cases`` (``model``, ``conditions``, ``methods`` = {name:
{latency_ms, accuracy, evaluations, wall_s, ...}}, ``rl_vs_best_baseline``)
and ``summary``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.digits_models import MODELS  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "policy.json"
#: (bandwidth Mbit/s, RTT ms, edge load, device scale)
CONDITIONS = ((2.0, 10.0, 1.0, 1.0), (10.0, 10.0, 1.0, 1.0), (50.0, 5.0, 2.0, 1.0), (5.0, 20.0, 1.0, 2.0))


def _repair(space: Any, ratios: dict[str, float], c: Any, attempts: int = 4, stretch: bool = False) -> tuple[dict[str, float], int]:
    """Scale the ratios down until the plan is within the budget (``stretch``: up to its edge, as training does), by the
    compile's bisection; (ratios, evaluations spent)."""
    before = space.accuracy.evaluations
    fixed = space.repair(ratios, c, attempts, stretch=stretch)
    return fixed, space.accuracy.evaluations - before


def run_model(name: str, args: argparse.Namespace, compute: tuple[Any, Any], say: Any) -> list[dict[str, Any]]:
    import torch

    from cogent_compiler.accuracy import finetune, load_data
    from cogent_compiler.frontend import from_module, trace
    from cogent_compiler.passes import FoldBatchNorm, prune_groups_of
    from cogent_compiler.policy.rl import default_config, train_policy
    from cogent_compiler.policy.search import SEARCHERS, SearchResult
    from cogent_compiler.policy.space import AccuracyOracle, ConditionRanges, Conditions, PlanSpace

    data = load_data("digits", (1, 1, 32, 32), 10, seed=args.seed)
    torch.manual_seed(args.seed)
    model = MODELS[name]()
    t0 = time.time()
    finetune(model, data, steps=args.train_steps, lr=2e-3, seed=args.seed)
    graph = FoldBatchNorm()(trace(from_module(model.eval(), (torch.from_numpy(data.x_val[:1]),), name=name)))
    oracle = AccuracyOracle(graph, data, finetune_steps=args.oracle_steps, val_samples=args.val_samples)
    space = PlanSpace(graph, prune_groups_of(graph), compute[0], compute[1], oracle)
    # every method's final plan is checked again as a compile checks it -- a longer fine-tune, the whole held-out split -- and
    # repaired the same way: picking the best of many noisy oracle answers favours plans that were lucky, not good
    strict = PlanSpace(graph, space.analysis, compute[0], compute[1],
                       AccuracyOracle(graph, data, finetune_steps=args.validate_steps, val_samples=len(data.y_val)))

    def validated(ratios: dict[str, float], c: Any) -> dict[str, Any]:
        before = strict.accuracy.evaluations
        fixed, _ = _repair(strict, ratios, c)
        cut, lat = space.best_cut(fixed, c)
        return {"latency_ms": round(lat.total_ms, 3), "accuracy": strict.feasible(fixed, c)[1], "cut": list(cut),
                "ratios": {k: round(v, 3) for k, v in sorted(fixed.items())}, "checks": strict.accuracy.evaluations - before}
    say(f"{name}: trained in {time.time() - t0:.0f}s, top-1 {oracle.baseline:.4f}, {len(space.groups)} prune groups, {len(space.cuts)} cuts")
    ranges = ConditionRanges(bandwidth_mbps=(1.0, 100.0), rtt_ms=(1.0, 20.0), edge_load=(1.0, 4.0), device_scale=(0.5, 2.0),
                             max_drop=(args.max_drop, args.max_drop))
    t0 = time.time()
    # an episode is one step per prune group: --rl-episodes gives a model with more groups more steps, the same episodes
    steps = args.rl_episodes * len(space.groups) if args.rl_episodes else args.rl_steps
    with tempfile.TemporaryDirectory(prefix="cogent-policy-") as tmp:
        cfg = dataclasses.replace(default_config(steps, seed=args.seed), uniform_warmup=args.uniform_warmup,
                                  noise_correlation=args.noise_correlation, stretch_attempts=args.stretch_attempts,
                                  polish_attempts=args.polish_attempts)
        policy = train_policy(space, cfg, Path(tmp) / "policy.zip", ranges=ranges,
                              callback=lambda step, r: say(f"{name}: step {step}/{steps}, mean reward {r:.3f}") or True)
    train_s, train_evals = time.time() - t0, oracle.evaluations
    say(f"{name}: policy trained in {train_s:.0f}s with {train_evals} plans measured")
    cases = []
    for bw, rtt, load, scale in CONDITIONS[: args.conditions]:
        c = Conditions(bw, rtt, load, scale, args.max_drop)
        t0 = time.time()
        answer, _, info = policy.answer(space, c)
        answer_ms = info["answer_ms"]
        ratios, repair_evals = _repair(space, answer, c)
        cut, lat = space.best_cut(ratios, c)
        _, acc = space.feasible(ratios, c)
        rl = SearchResult("rl", ratios, cut, lat.total_ms, acc, train_evals + repair_evals, time.time() - t0)
        methods = {"rl": {**rl.to_json(), "train_s": round(train_s, 1), "steps": steps, "answer_ms": round(answer_ms, 3),
                          "repair_evaluations": repair_evals, "source": info["source"], "measured_plans": len(policy.plans)}}
        methods["rl"]["validated"] = validated(answer, c)  # the compile checks the answer itself, not the oracle's repair of it
        # the actor alone, without the plans it measured in training: what the learning itself is worth; its shape fitted to the
        # budget as training fitted every plan (repaired down; with --stretch-attempts also stretched up to the edge)
        actor = dict(info["rollout"]["ratios"])
        actor_fixed, actor_evals = _repair(space, actor, c, stretch=args.stretch_attempts > 0)
        actor_cut, actor_lat = space.best_cut(actor_fixed, c)
        methods["rl_rollout"] = {**SearchResult("rl_rollout", actor_fixed, actor_cut, actor_lat.total_ms, space.feasible(actor_fixed, c)[1],
                                                train_evals + actor_evals, 0.0).to_json(), "validated": validated(actor_fixed, c)}
        budget = max(rl.evaluations, train_evals + actor_evals)
        for m, search in SEARCHERS.items():
            found = search(space, c, budget, args.seed)
            methods[m] = {**found.to_json(), "validated": validated(found.ratios, c)}
        best_baseline = min(methods[m]["latency_ms"] for m in SEARCHERS)
        best_validated = min(methods[m]["validated"]["latency_ms"] for m in SEARCHERS)
        _, unpruned = space.best_cut({}, c)
        device_only = space.price({}, tuple(graph.outputs), c).total_ms
        case = {"model": name, "conditions": c.to_json(), "methods": methods, "budget": budget,
                "rl_vs_best_baseline": round(methods["rl"]["latency_ms"] / best_baseline, 4),
                "rl_vs_best_baseline_validated": round(methods["rl"]["validated"]["latency_ms"] / best_validated, 4),
                "rl_rollout_vs_best_baseline_validated": round(methods["rl_rollout"]["validated"]["latency_ms"] / best_validated, 4),
                "partition_only_ms": round(unpruned.total_ms, 3), "device_only_ms": round(device_only, 3),
                "top1_unpruned": oracle.baseline, "top1_unpruned_validated": strict.accuracy.baseline}
        cases.append(case)
        say(f"{name} {c.to_json()}: " + ", ".join(f"{m} {v['latency_ms']:.2f} ms (validated {v['validated']['latency_ms']:.2f})"
                                                  for m, v in methods.items())
            + f" (partition only {unpruned.total_ms:.2f}, device only {device_only:.2f}; budget {budget})")
    return cases


def main(argv: list[str] | None = None) -> int:
    from cogent_compiler.policy.rl import AgentConfig

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--conditions", type=int, default=len(CONDITIONS), help=f"how many of the {len(CONDITIONS)} conditions (default all)")
    p.add_argument("--train-steps", type=int, default=1000, help="training steps of each CNN (default 1000)")
    p.add_argument("--rl-steps", type=int, default=1500, help="TD3 steps per model (default 1500)")
    p.add_argument("--rl-episodes", type=int, default=0, metavar="N",
                   help="TD3 episodes per model instead: N x its prune groups steps (default 0: --rl-steps)")
    p.add_argument("--jobs", type=int, default=1, help="models measured at once, each in its own process (default 1)")
    p.add_argument("--oracle-steps", type=int, default=10, help="fine-tuning steps per plan the accuracy oracle measures (default 10)")
    p.add_argument("--val-samples", type=int, default=300, help="held-out digits the oracle evaluates on (default 300)")
    p.add_argument("--validate-steps", type=int, default=100,
                   help="fine-tuning steps of the check every method's final plan gets, on the whole held-out split (default 100)")
    p.add_argument("--max-drop", type=float, default=0.01, help="accuracy budget, a fraction of top-1 (default 0.01)")
    p.add_argument("--device-profile", default=str(Path.home() / ".cache/cogent/bench-profiles/llvm-t1-quota0.1.json"))
    p.add_argument("--edge-profile", default=str(Path.home() / ".cache/cogent/bench-profiles/llvm-t1-full.json"))
    p.add_argument("--flags-compute", action="store_true", help="device 2 GMAC/s, edge 100 GMAC/s estimates instead of profiles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uniform-warmup", type=float, default=AgentConfig.uniform_warmup,
                   help=f"share of TD3's warm-up episodes that prune every group by one ratio (default {AgentConfig.uniform_warmup}; 0: "
                        "stable-baselines3's per-step random actions)")
    p.add_argument("--noise-correlation", type=float, default=AgentConfig.noise_correlation,
                   help="correlation of TD3's exploration noise from one group to the next "
                        f"(default {AgentConfig.noise_correlation}; 0: independent; rl.EpisodeNoise)")
    p.add_argument("--stretch-attempts", type=int, default=AgentConfig.stretch_attempts,
                   help="measurements training spends stretching each plan within the budget towards its edge "
                        f"(default {AgentConfig.stretch_attempts}: none; PruneCutEnv)")
    p.add_argument("--polish-attempts", type=int, default=AgentConfig.polish_attempts,
                   help="measurements after training that climb from the fastest measured plan within the budget "
                        f"(default {AgentConfig.polish_attempts}; 0: none; rl.polish)")
    p.add_argument("--smoke", action="store_true", help="vgg_digits, 2 conditions, 200 training and 60 TD3 steps, 30-step checks, flags-only compute")
    p.add_argument("-o", "--output", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.conditions, args.train_steps, args.rl_steps, args.val_samples, args.flags_compute = "vgg_digits", 2, 200, 60, 100, True
        args.validate_steps = 30
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models {','.join(unknown)}: unknown; choose from {', '.join(MODELS)}")
    if args.jobs < 1 or args.rl_episodes < 0:
        raise SystemExit("--jobs must be at least 1 and --rl-episodes at least 0")
    from benchmarks.common import write_result
    from cogent_compiler.cost import ComputeModel

    if args.flags_compute:
        compute: tuple[Any, Any] = (ComputeModel("device", 2.0), ComputeModel("edge", 100.0))
        profiles = {"device": "flags: 2 GMAC/s", "edge": "flags: 100 GMAC/s"}
    else:
        from benchmarks.partition import load_profile_model, profile_info

        dev, edge = load_profile_model("device", Path(args.device_profile)), load_profile_model("edge", Path(args.edge_profile))
        compute, profiles = (dev, edge), {"device": profile_info(dev), "edge": profile_info(edge)}
    t0 = time.time()
    say = functools.partial(_say, t0)
    done: dict[str, list[dict[str, Any]]] = {}

    def keep(name: str, found: list[dict[str, Any]]) -> None:
        # written after every model (``partial`` until the last): a long run stopped early keeps what it measured
        done[name] = found
        cases = [c for m in models if m in done for c in done[m]]
        write_result(args.output, _result(args, argv, profiles, cases, t0, partial=len(done) < len(models)))

    if args.jobs == 1:
        for name in models:
            keep(name, run_model(name, args, compute, say))
        return 0
    # the methods' latencies are predicted and their evaluations counted, so models sharing the CPUs change only wall_s
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_one_job_threads, initargs=(args.jobs,)) as pool:
        running = {pool.submit(run_model, name, args, compute, say): name for name in models}
        for future in concurrent.futures.as_completed(running):
            keep(running[future], future.result())
    return 0


def _say(t0: float, msg: str) -> None:
    print(f"[{time.time() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _one_job_threads(jobs: int) -> None:
    """A worker's share of the CPUs, so that ``jobs`` processes do not oversubscribe them."""
    import os

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def _result(args: argparse.Namespace, argv: list[str] | None, profiles: dict[str, Any], cases: list[dict[str, Any]], t0: float,
            partial: bool) -> dict[str, Any]:
    from benchmarks.common import machine

    ratios = [c["rl_vs_best_baseline"] for c in cases]
    checked = [c["rl_vs_best_baseline_validated"] for c in cases]
    return {
        "benchmark": "policy",
        "partial": partial,
        "machine": machine(),
        "command": "python benchmarks/policy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "note": "latencies are PREDICTED by the latency model on the pruned IR; accuracies are the oracle's (held-out digits after "
                f"{args.oracle_steps} fine-tuning steps per plan)",
        "setup": {"profiles": profiles, "max_drop": args.max_drop, "rl_episodes": args.rl_episodes,
                  "rl_steps": None if args.rl_episodes else args.rl_steps,  # with rl_episodes: each case's methods.rl.steps
                  "jobs": args.jobs, "train_steps": args.train_steps,
                  "agent": "default_config(rl_steps, or rl_episodes x prune groups): TD3, warm-up min(300, max(50, rl_steps // 6)) steps, "
                           "a share of its episodes one ratio for every group, 4 gradient steps per step", "uniform_warmup": args.uniform_warmup,
                  "noise_correlation": args.noise_correlation,
                  "stretch_attempts": args.stretch_attempts, "polish_attempts": args.polish_attempts,
                  "oracle_finetune_steps": args.oracle_steps, "val_samples": args.val_samples, "seed": args.seed,
                  "validate_finetune_steps": args.validate_steps,
                  "budget": "every baseline gets, per case, as many evaluated plans as the policy measured in training (plus its repairs)"},
        "cases": cases,
        "summary": {"cases": len(cases), "rl_within_5pct_of_best_baseline": sum(r <= 1.05 for r in ratios),
                    "rl_beats_best_baseline": sum(r < 1.0 for r in ratios), "worst_rl_vs_best_baseline": max(ratios) if ratios else None,
                    "validated": {"rl_within_5pct_of_best_baseline": sum(r <= 1.05 for r in checked),
                                  "rl_beats_best_baseline": sum(r < 1.0 for r in checked),
                                  "worst_rl_vs_best_baseline": max(checked) if checked else None},
                    "rl_rollout_validated": {"within_5pct_of_best_baseline": sum(c["rl_rollout_vs_best_baseline_validated"] <= 1.05 for c in cases),
                                             "worst_vs_best_baseline": max((c["rl_rollout_vs_best_baseline_validated"] for c in cases),
                                                                           default=None)}},
        "wall_s": round(time.time() - t0, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
