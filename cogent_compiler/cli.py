"""``cogentc``: the command line.

    cogentc MODEL --target arm,cuda -o out/      compile into a device+edge bundle
    cogentc inspect MODEL                        print the IR with costs
    cogentc plan MODEL --bandwidth 20mbit        print the candidate cuts and the choice (--report DIR: as HTML and PNG too)
    cogentc tunedb show|export|merge             the tuning databases (``--tune-budget`` fills them)
    cogentc profile --target llvm -o dev.json    measure this machine into a profile (``--device-profile``)
    cogentc profile --peer HOST:PORT -o link.json  measure the link to an edge (``--link-profile``)
    cogentc profile --target arm --rpc HOST:PORT:KEY -o arm.json  measure a board through a TVM RPC tracker
    cogentc tune MODEL --storage URL --study NAME  one Optuna worker tuning the learned policy's agent

Progress goes to stderr, results to stdout (``--json`` for machines).  A
failure prints one line naming the problem and exits non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from cogent_compiler.errors import CogentError

__all__ = ["main"]

COMMANDS = ("compile", "inspect", "plan", "bench", "tunedb", "profile", "tune")
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


def _add_output_args(p: argparse.ArgumentParser, json_help: str = "print machine-readable JSON on stdout") -> None:
    """The flags every command has: --json, -q, -v, --debug."""
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="log details on stderr")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on failure")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .pt2 (torch.export.save), package.module:factory, TorchScript .pt, .onnx, or a pickled nn.Module with --trust-pickle")
    p.add_argument("--input-shape", metavar="N,C,H,W", help="input shape for factories, TorchScript and pickles, e.g. 1,3,224,224")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading a pickled nn.Module: this RUNS CODE from the file; use only for files you trust")
    p.add_argument("--input-pixels", metavar="NORM", help="the model's image input arrives as uint8 pixels: prepend (pixels/255 - mean)/std to the "
                   "model so that the uint8 image, not float32, crosses the link; NORM is imagenet, unit or MEAN/STD (per channel, e.g. 0.5,0.5,0.5/0.2,0.2,0.2)")
    _add_output_args(p)


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="llvm,llvm", metavar="DEVICE,EDGE", help="device target then edge target: llvm, arm, cuda[:sm_XX] (default llvm,llvm)")
    # No argparse defaults: a flag the user gives overrides --link-profile, an absent one does not.
    p.add_argument("--bandwidth", help="link bandwidth both ways, e.g. 20mbit, 500kbit (default: from --link-profile, else 20mbit)")
    p.add_argument("--rtt", help="link round-trip time, e.g. 10ms (default: from --link-profile, else 10ms)")
    p.add_argument("--link-profile", metavar="FILE", help="plan with the link measured by `cogentc profile --peer` (bandwidth each way, RTT, "
                   "per-message overhead, edge load); --bandwidth, --rtt and --edge-load override its figures")
    p.add_argument("--edge-load", type=float, metavar="F", help="edge slowdown factor multiplying edge compute: 1.0 idle, 2.0 twice as slow "
                   "(default: from --link-profile, else 1.0)")
    p.add_argument("--device-gmacs", type=float, metavar="G", help="device throughput in GMAC/s for the estimate (default per target: arm 2, llvm 10)")
    p.add_argument("--edge-gmacs", type=float, metavar="G", help="edge throughput in GMAC/s for the estimate (default per target: llvm 10, cuda 500)")
    p.add_argument("--device-profile", metavar="FILE", help="predict device compute from this measured profile (`cogentc profile`) instead of --device-gmacs")
    p.add_argument("--edge-profile", metavar="FILE", help="predict edge compute from this measured profile (`cogentc profile`) instead of --edge-gmacs")
    p.add_argument("--planner", default="rl", choices=("rl", "optuna", "single-cut", "mincut", "device", "edge"),
                   help="rl (default): a learned TD3 policy chooses prune ratios and the cut together (with --data; without data, "
                        "or with --prune fixing the ratios, the cut alone is chosen exactly, as single-cut); optuna: TPE over ratios "
                        "and cut for these conditions; single-cut: best single tensor; mincut: min-cut over the whole DAG (DADS); "
                        "device, edge: the baselines")
    p.add_argument("--policy", metavar="FILE", help="--planner rl: answer with this trained policy (policy.zip) instead of training one")
    p.add_argument("--rl-steps", type=int, default=3000, metavar="N", help="--planner rl: TD3 training steps when a policy is trained (default 3000)")
    p.add_argument("--search-budget", type=int, default=60, metavar="N",
                   help="--planner optuna: plans to evaluate, each fine-tuned briefly and measured for accuracy (default 60)")
    p.add_argument("--max-prune-ratio", type=float, default=0.9, metavar="F",
                   help="--planner rl|optuna: the largest fraction of a group's channels a plan may remove (default 0.9; "
                        "--max-accuracy-drop decides how far a plan goes)")
    p.add_argument("--search-finetune-steps", type=int, default=20, metavar="N",
                   help="--planner rl|optuna: fine-tuning steps each candidate gets before its accuracy is measured (default 20; more "
                        "judges aggressive pruning as the final fine-tune will, at that much more time per plan)")
    p.add_argument("--no-stretch", dest="stretch", action="store_false",
                   help="--planner rl|optuna: ship the chosen ratios as they are when they fit; by default the final accuracy check "
                        "(the full fine-tune) stretches them towards --max-prune-ratio while they still fit, in its 4 attempts")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01, metavar="F", help="largest top-1 loss accepted, a fraction (default 0.01: "
                   "one point); a plan that loses more is repaired with smaller ratios or rejected")
    p.add_argument("--data", metavar="SPEC", help="evaluation and fine-tuning data: digits (scikit-learn's, offline), imagefolder:DIR, npz:FILE "
                   "(arrays x, y); without it nothing is pruned")
    p.add_argument("--cut", metavar="TENSOR[,TENSOR...]", help="force this cut (tensor names from `cogentc inspect`) instead of planning")
    p.add_argument("--transfer-dtype", default="auto", choices=("auto", "float32", "float16"),
                   help="how float32 tensors cross the link: float16 where it is faster, casts included (auto, the default), "
                        "always float16, or always float32 (bit-exact halves)")


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "inspect":
        p = argparse.ArgumentParser(prog="cogentc inspect", description="Print a model's graph IR: every op with shapes, MACs, parameter and output bytes, and totals.")
        _add_model_args(p)
        p.add_argument("--limit", type=int, help="print at most this many rows")
        p.add_argument("--groups", action="store_true", help="list the prune groups instead: coupled layers that lose the same channels "
                       "(needs the model as an nn.Module: package.module:factory or a trusted pickle)")
        return p
    if command == "bench":
        p = argparse.ArgumentParser(
            prog="cogentc bench",
            description="Measure a bundle end to end on an emulated deployment (network namespaces, tbf-shaped link, "
            "CPU-quota device; needs root) beside device-only, edge-only, best single cut and PyTorch eager.",
        )
        p.add_argument("bundle", help="the folder cogentc wrote with -o")
        p.add_argument("--bandwidth", default="20mbit", help="link rate each way (default 20mbit)")
        p.add_argument("--rtt", default="0ms", help="added round-trip time (netem is not in every kernel: a user-space proxy adds it; default 0ms)")
        p.add_argument("--device-quota", type=float, default=0.1, help="device CPU quota as a fraction of one core (default 0.1)")
        p.add_argument("--device-sched", choices=("quota", "repeat"), default="quota",
                       help="how the device is slowed to --device-quota: quota (a cgroup quota; 1 ms of work per 10 ms runs at full "
                            "speed, so short work is not slowed) or repeat (each inference's compute runs 1/quota times; processes only)")
        p.add_argument("--requests", type=int, default=30, help="timed requests per plan after warm-up (default 30)")
        p.add_argument("--containers", action="store_true", help="run the bundle's real containers with podman instead of processes")
        p.add_argument("-o", "--output", help="result JSON (default BUNDLE.bench/bench.json, with bench.png beside it)")
        _add_output_args(p, "print the result JSON on stdout")
        return p
    if command == "tunedb":
        p = argparse.ArgumentParser(
            prog="cogentc tunedb",
            description="Tuning databases: one per target, filled by `cogentc MODEL --tune-budget 20m`, applied by every later compile for that target.",
        )
        p.add_argument("action", choices=("show", "export", "merge"), help="show: list databases and kernels; export: write one as a file; merge: add a file's or folder's records")
        p.add_argument("source", nargs="?", help="merge: an exported file or a database folder; export: the database (a folder name from `show`, or a target such as llvm)")
        p.add_argument("-o", "--output", help="export: the file to write")
        p.add_argument("--tunedb", metavar="DIR", help="database root (default $COGENT_TUNEDB or ~/.cache/cogent/tunedb)")
        p.add_argument("--limit", type=int, default=10, help="show: kernels listed per database (default 10, slowest first)")
        _add_output_args(p)
        return p
    if command == "profile":
        p = argparse.ArgumentParser(
            prog="cogentc profile",
            description="Measure reference layers (conv2d, linear, pooling, element-wise) compiled as a bundle compiles them, "
            "on this machine (or, with --rpc, on a board reached through a TVM RPC tracker), and write a profile for --device-profile/--edge-profile. Resumable: run again with the same -o to go on. "
            "With --peer HOST:PORT, measure instead the link to a running cogent-edge with the runtime's own protocol "
            "(bandwidth each way, RTT, per-message overhead, the edge's load) and write a link profile for --link-profile.",
        )
        p.add_argument("--peer", metavar="HOST:PORT", help="measure the link to the cogent-edge serving at HOST:PORT instead of compute (no --target needed)")
        p.add_argument("--sizes", metavar="BYTES,...", help="--peer: probe payload sizes each way, e.g. 16k,64k,256k,1m (default 16k,64k,256k,1m)")
        p.add_argument("--repeats", type=int, default=5, metavar="N", help="--peer: probes per size and direction (default 5)")
        p.add_argument("--target", default="llvm", help="the target to measure: llvm (this CPU, or a remote one with --rpc); arm and cuda need --rpc")
        p.add_argument("-o", "--output", required=True, metavar="FILE", help="the profile JSON to write (an existing one of the same target, quota and threads is resumed)")
        p.add_argument("--cpu-quota", type=float, metavar="Q", help="time under a CPU quota, a fraction of one core such as 0.1, to emulate a weak device (needs root)")
        p.add_argument("--budget", default="10m", metavar="TIME", help="stop adding samples after this long, e.g. 30s, 10m (default 10m)")
        p.add_argument("--threads", type=int, metavar="N", help="TVM runtime threads (default: TVM_NUM_THREADS, else half the cores)")
        p.add_argument("--rpc", metavar="HOST:PORT:KEY", help="compile here but time on a board through a TVM RPC tracker at HOST:PORT, on a runner "
                       "registered with key KEY (python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY on the board); needed for arm and cuda")
        p.add_argument("--only", metavar="OPS", help="measure only these op kinds, e.g. conv2d,linear")
        p.add_argument("--recalibrate", action="store_true", help="time again only the profile's reference networks (a minute or two) and refit "
                       "how its layers add up to a whole network: run it before planning when the profile is old or the machine's speed may "
                       "have changed (other load, a VM's neighbours, heat); the layers stay as measured")
        _add_output_args(p, "print a summary as JSON on stdout")
        return p
    if command == "tune":
        p = argparse.ArgumentParser(
            prog="cogentc tune",
            description="Tune the learned policy's agent (TD3) with Optuna: each trial trains a policy for MODEL and scores it over "
            "sampled conditions; bad trials are pruned early. Runs one worker; start more, here or on other machines, with the same "
            "--storage (a PostgreSQL URL) and --study to tune one study together. optuna-dashboard STORAGE shows it.",
        )
        _add_model_args(p)
        _add_plan_args(p)
        p.add_argument("--storage", default="sqlite:///cogent-tune.db", metavar="URL",
                       help="Optuna storage: sqlite:///FILE (default sqlite:///cogent-tune.db) or any SQLAlchemy URL, e.g. postgresql://user@host/db")
        p.add_argument("--study", default="cogent", metavar="NAME", help="study name (created if new, joined if it exists; default cogent)")
        p.add_argument("--trials", type=int, default=10, metavar="N", help="trials this worker runs (default 10)")
        p.add_argument("-o", "--output", metavar="FILE", help="write the best policy of this worker's trials here (policy.zip)")
        return p
    if command == "plan":
        p = argparse.ArgumentParser(prog="cogentc plan", description="Score every single-tensor cut with the latency model and print them beside device-only and edge-only.")
        _add_model_args(p)
        _add_plan_args(p)
        p.add_argument("--report", metavar="DIR", help="also write DIR/report.html and DIR/plan.png: the predicted latency per plan as a "
                       "stacked bar chart and a table, with the conditions (a compile writes them into its bundle)")
        return p
    p = argparse.ArgumentParser(
        prog="cogentc",
        description="Compile a model into a device half and an edge half that run together over a network.",
        epilog="other commands: cogentc inspect MODEL, cogentc plan MODEL, cogentc profile, cogentc bench BUNDLE, cogentc tunedb, "
               "cogentc tune MODEL (each has --help)",
    )
    _add_model_args(p)
    _add_plan_args(p)
    p.add_argument("-o", "--output", default="out", metavar="DIR", help="bundle folder to write (default out/)")
    p.add_argument("--base-image", default="python:3.11-slim", help="default base image in the Dockerfiles (a build ARG; default python:3.11-slim)")
    p.add_argument("--no-fold-batch-norm", action="store_true", help="keep batch norm as separate ops")
    p.add_argument(
        "--backend", default="auto", choices=("auto", "tvm", "onnxruntime"),
        help="runtime for each half: auto measures TVM and ONNX Runtime on this machine where both apply "
        "(llvm) and keeps the faster; arm and cuda halves use TVM (default auto)",
    )
    p.add_argument("--tune-budget", metavar="TIME", help="tune the halves' kernels with MetaSchedule for this long, e.g. 20m (default: no tuning; "
                   "records from earlier runs are still applied). Resumable: records are kept as they are measured")
    p.add_argument("--tunedb", metavar="DIR", help="tuning database root (default $COGENT_TUNEDB or ~/.cache/cogent/tunedb)")
    p.add_argument("--no-tunedb", action="store_true", help="ignore tuning databases (rule-based schedules only)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure tuning candidates on the runners of this TVM RPC tracker (needed to tune arm or cuda from here)")
    p.add_argument("--rpc-key", metavar="KEY", help="the key the tracker's runners registered with (rpc_server --key)")
    p.add_argument("--rpc-workers", type=int, default=1, metavar="N", help="measurements in flight at once: the number of runners (default 1)")
    g = p.add_argument_group("pruning (needs the model as an nn.Module: package.module:factory or a trusted pickle)")
    g.add_argument("--prune", type=float, default=0.0, metavar="R", help="remove this fraction of channels from every prune group, e.g. 0.3 "
                   "(see `cogentc inspect MODEL --groups`; default 0: no pruning)")
    g.add_argument("--prune-ratios", metavar="GROUP=R,...", help="per-group fractions, overriding --prune for the groups named")
    g.add_argument("--finetune-steps", type=int, metavar="N", help="fine-tune the pruned model for N optimizer steps (default 300)")
    g.add_argument("--finetune-time", metavar="TIME", help="fine-tune for this long instead, e.g. 2m")
    g.add_argument("--prune-unvalidated", action="store_true", help="prune without --data, accuracy UNCHECKED")
    return p


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, stage: str, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {stage}: {msg}", file=sys.stderr, flush=True)


def _load(args: argparse.Namespace, say: _Progress) -> Any:
    from cogent_compiler.frontend import load_model, parse_shape, trace

    shape = parse_shape(args.input_shape) if args.input_shape else None
    model = load_model(args.model, input_shape=shape, trust_pickle=args.trust_pickle)
    say("load", f"{model.source} ({model.kind})")
    if args.input_pixels:
        from cogent_compiler.frontend.pixels import parse_pixels, with_pixel_input

        model = with_pixel_input(model, parse_pixels(args.input_pixels))
        say("load", f"input takes uint8 pixels, normalised by the model ({args.input_pixels})")
    graph = trace(model)
    say("trace", f"{len(graph.nodes)} ops, {graph.total_macs / 1e9:.3f} GMAC")
    return graph


def _options(args: argparse.Namespace) -> Any:
    from cogent_compiler.cost import parse_bandwidth, parse_duration
    from cogent_compiler.driver import CompileOptions, link_settings

    parts = [t for t in args.target.split(",") if t.strip()]
    if len(parts) != 2:
        raise CogentError(f"--target {args.target!r}: give two targets, device then edge, e.g. --target arm,cuda")
    from cogent_compiler.backends import resolve_target

    for t in parts:
        resolve_target(t)
    from cogent_compiler.cost import load_profile

    # a wrong or foreign profile fails here, before the model is loaded
    for flag, path, t in (("--device-profile", args.device_profile, parts[0]), ("--edge-profile", args.edge_profile, parts[1])):
        if path:
            load_profile(path, expect_target=resolve_target(t).label)
    extra = {}
    if hasattr(args, "base_image"):  # the compile command's own flags
        extra = {"base_image": args.base_image, "fold_batch_norm": not args.no_fold_batch_norm, "backend": args.backend,
                 "tune_budget_s": parse_duration(args.tune_budget) if args.tune_budget else 0.0,
                 "tunedb": args.tunedb, "use_tunedb": not args.no_tunedb,
                 "rpc_tracker": args.rpc_tracker, "rpc_key": args.rpc_key, "rpc_workers": args.rpc_workers,
                 "prune": args.prune, "prune_ratios": _parse_ratios(args.prune_ratios),
                 "finetune_steps": args.finetune_steps,
                 "finetune_time_s": parse_duration(args.finetune_time) if args.finetune_time else None,
                 "prune_unvalidated": args.prune_unvalidated}
        if args.rpc_tracker:
            from cogent_compiler.backends.tuning import parse_rpc_tracker

            parse_rpc_tracker(args.rpc_tracker, args.rpc_key, args.rpc_workers)  # fail before loading the model
    return CompileOptions(
        device_target=parts[0].strip(),
        edge_target=parts[1].strip(),
        **link_settings(args.link_profile, bandwidth_bps=parse_bandwidth(args.bandwidth) if args.bandwidth is not None else None,
                        rtt_s=parse_duration(args.rtt) if args.rtt is not None else None, edge_load=args.edge_load),
        device_gmacs=args.device_gmacs,
        edge_gmacs=args.edge_gmacs,
        device_profile=args.device_profile,
        edge_profile=args.edge_profile,
        planner=args.planner,
        transfer_dtype=args.transfer_dtype,
        policy=args.policy,
        rl_timesteps=args.rl_steps,
        search_budget=args.search_budget,
        max_prune_ratio=args.max_prune_ratio,
        search_finetune_steps=args.search_finetune_steps,
        stretch=args.stretch,
        data=args.data,
        max_accuracy_drop=args.max_accuracy_drop,
        cut=tuple(t.strip() for t in args.cut.split(",") if t.strip()) if args.cut else (),
        **extra,
    )


def _parse_ratios(text: str | None) -> dict[str, float]:
    """``GROUP=R,GROUP=R`` -> {group: ratio}."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.rpartition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise CogentError(f"--prune-ratios {item!r}: expected GROUP=RATIO such as layer1.0.conv1=0.5") from None
    return out


def _cmd_tune(args: argparse.Namespace, say: _Progress) -> int:
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.driver import plan_space
    from cogent_compiler.policy.rl import AgentConfig
    from cogent_compiler.policy.space import ConditionRanges
    from cogent_compiler.policy.tune import tune_agent

    if args.trials < 1:
        raise CogentError(f"--trials {args.trials}: give at least one trial")
    options = _options(args)
    graph = _load(args, say)
    space = plan_space(graph, options, None, resolve_target(options.device_target), resolve_target(options.edge_target), say)
    budget = (options.max_accuracy_drop, options.max_accuracy_drop)
    study = tune_agent(space, storage=args.storage, study=args.study, trials=args.trials, base=AgentConfig(timesteps=options.rl_timesteps),
                       ranges=ConditionRanges(max_drop=budget), out=args.output, say=lambda msg: say("tune", msg))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    summary = {"study": args.study, "storage": args.storage, "trials": len(study.trials), "complete": len(done),
               "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
               "best": {"score": study.best_value, "params": study.best_params, "trial": study.best_trial.number} if done else None,
               "policy": args.output}
    if args.json:
        print(json.dumps(summary, indent=2))
    elif done:
        print(f"study {args.study}: {len(study.trials)} trials ({summary['pruned']} pruned); best score {study.best_value:.4f} "
              f"(1.0 = device-only) with {study.best_params}")
    else:
        print(f"study {args.study}: {len(study.trials)} trials, none complete yet")
    return 0


def _cmd_inspect(args: argparse.Namespace, say: _Progress) -> int:
    from cogent_compiler.ir import format_summary, format_table

    graph = _load(args, say)
    if args.groups:
        from cogent_compiler.passes.prune_groups import prune_groups_of

        analysis = prune_groups_of(graph)
        if args.json:
            print(json.dumps(analysis.to_json(), indent=2))
            return 0
        print(f"{'group':<40} {'channels':>8}  {'criterion':<20} members")
        for g in analysis.groups[: args.limit or None]:
            print(f"{g.name:<40} {g.channels:>8}  {g.criterion:<20} {', '.join(g.members)}")
        print(f"{len(analysis.groups)} prune groups; output layer kept whole: {analysis.output_layer}")
        for name, why in analysis.left_out.items():
            print(f"left out: {name} ({why})")
        return 0
    if args.json:
        print(json.dumps(format_summary(graph), indent=2))
    else:
        print(format_table(graph, limit=args.limit))
    return 0


def _cmd_plan(args: argparse.Namespace, say: _Progress) -> int:
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.driver import JOINT_PLANNERS, choose_plan, describe_link, joint_stage, latency_model_for, plan_conditions
    from cogent_compiler.passes import FoldBatchNorm
    from cogent_compiler.report import format_plan_table, write_report

    options = _options(args)
    loaded = _load(args, say)
    graph = FoldBatchNorm()(loaded)
    device_t, edge_t = resolve_target(options.device_target), resolve_target(options.edge_target)
    model = latency_model_for(device_t, edge_t, options)
    answer = None
    if options.planner in JOINT_PLANNERS and not options.cut:
        joint = joint_stage(loaded, options, None, device_t, edge_t, say)
        if joint is None:
            options = dataclasses.replace(options, planner="single-cut")
        else:
            ratios, cut, answer = joint
            priced = answer.pop("priced_graph")  # the pruned model's IR, priced without pruning it (passes.prune_ir)
            options = dataclasses.replace(options, cut=cut)
    report = choose_plan(priced if answer is not None else graph, model, options.planner, options.cut)
    if answer is not None:
        from cogent_compiler.driver import unpruned_baselines

        report = dataclasses.replace(report, chosen=dataclasses.replace(report.chosen, prune_ratios=ratios),
                                     baselines=unpruned_baselines(graph, model))
    if args.report:
        path = write_report(report, args.report, model_name=graph.name, conditions=plan_conditions(device_t, edge_t, options))
        say("report", f"wrote {path} and {path.with_name('plan.png')}")
    if args.json:
        doc = report.to_json()
        if answer is not None:
            doc["policy"] = answer
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(format_plan_table(report))
    sp = ", ".join(f"{k} {v:.2f}x" for k, v in report.speedups().items())
    print(f"predicted speedup of the chosen plan: {sp} (latency model: device {_source(model.device.source)}, edge {_source(model.edge.source)})")
    print(f"link: {describe_link(model)}")
    if answer is not None:
        pruned = sum(1 for r in ratios.values() if r > 0)
        how = (f"learned policy {answer['policy']}: answered in {answer['answer_ms']:.1f} ms" if options.planner == "rl"
               else f"optuna: best of {answer['search']['evaluations']} plans measured in {answer['search']['wall_s']:.0f}s")
        print(f"{how}; {pruned} prune groups pruned "
              f"(predicted MACs {priced.total_macs / 1e6:.1f} M of {graph.total_macs / 1e6:.1f} M; compiling prunes, fine-tunes and checks accuracy"
              + (", stretching the ratios while they fit)" if options.stretch else ")"))
    return 0


def _source(source: str) -> str:
    return source if source.startswith("profile") else f"{source} throughput"


def _cmd_profile(args: argparse.Namespace, say: _Progress) -> int:
    from cogent_compiler.cost import parse_duration
    from cogent_compiler.cost.profiler import measure_profile, reference_layers

    if args.peer:
        return _profile_link(args, say)
    rpc = _parse_rpc(args.rpc) if args.rpc else None
    budget = parse_duration(args.budget, default_unit="s")
    if args.recalibrate and args.only:
        raise CogentError("--recalibrate times the reference networks again and --only picks layers to measure; give one of them")
    layers = reference_layers(t.strip() for t in args.only.split(",") if t.strip()) if args.only else None
    profile = measure_profile(args.target, args.output, budget_s=budget, cpu_quota=args.cpu_quota, threads=args.threads,
                              layers=layers, progress=lambda msg: say("profile", msg), rpc=rpc, recalibrate=args.recalibrate)
    summary = {"profile": args.output, "target": profile.target, "samples": len(profile.samples), "cpu_quota": profile.cpu_quota,
               "threads": profile.threads, "fits": {k: {"samples": v["samples"], "median_rel_err": v.get("median_rel_err")} for k, v in profile.fits.items()}}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.output}: {len(profile.samples)} samples on {profile.target}; fits (samples, median in-sample error):")
        for k, v in profile.fits.items():
            err = f"{100 * v['median_rel_err']:5.1f} %" if "median_rel_err" in v else f"{v.get('median_abs_err_ms', 0):.3f} ms"
            print(f"  {k:<28} {v['samples']:>4}  {err}")
    return 0


def _parse_rpc(text: str) -> Any:
    """``--rpc HOST:PORT:KEY`` as a ``tuning.RPCSpec``; a one-line error otherwise."""
    from cogent_compiler.backends.tuning import parse_rpc_tracker

    host, port, key = (text.split(":") + ["", "", ""])[:3] if text.count(":") == 2 else ("", "", "")
    if not host or not port.isdigit() or not key:
        raise CogentError(f"--rpc {text!r}: expected HOST:PORT:KEY, e.g. 192.168.1.5:9190:rk3588 (the RPC tracker's address and "
                          "the key the board's rpc_server registered with --key)")
    return parse_rpc_tracker(f"{host}:{port}", key)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}


def _parse_sizes(text: str) -> list[int]:
    """``"16k,64k,1m"`` -> byte counts (k and m are binary: 1024 and 1024²)."""
    import re

    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"([0-9]+)\s*([a-zA-Z]*)", part)
        if not m or m.group(2).lower() not in _SIZE_UNITS or int(m.group(1)) == 0:
            raise CogentError(f"--sizes {text!r}: {part!r} is not a positive size; write sizes such as 16k,64k,256k,1m")
        sizes.append(int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if not sizes:
        raise CogentError(f"--sizes {text!r}: give at least one size, e.g. 64k,1m")
    return sizes


def _profile_link(args: argparse.Namespace, say: _Progress) -> int:
    """``cogentc profile --peer HOST:PORT -o FILE``: measure the link to a running edge, write a link profile."""
    from cogent_compiler.cost.link import DEFAULT_SIZES, measure_link, save_link_profile
    from cogent_compiler.runtime.device import parse_address

    for flag, value in (("--rpc", args.rpc), ("--only", args.only), ("--cpu-quota", args.cpu_quota), ("--threads", args.threads)):
        if value is not None:
            raise CogentError(f"cogentc profile --peer measures a link; {flag} belongs to compute profiling (drop it, or drop --peer)")
    try:
        host, port = parse_address(args.peer)
    except ValueError as e:
        raise CogentError(f"--peer {e}") from e
    sizes = _parse_sizes(args.sizes) if args.sizes else list(DEFAULT_SIZES)
    profile = measure_link(host, port, sizes=sizes, repeats=args.repeats, progress=lambda msg: say("link", msg))
    save_link_profile(profile, args.output)
    if args.json:
        doc = profile.to_json()
        doc.pop("samples")
        print(json.dumps({"link_profile": args.output, **doc}, indent=2))
    else:
        print(f"{args.output}: {profile.peer}: {profile.summary()}")
    return 0


def _factory_root(spec: str) -> str | None:
    """The sys.path folder a ``module:factory`` spec was imported from, so later runs can import it again."""
    module_name, sep, _ = spec.partition(":")
    mod = sys.modules.get(module_name) if sep else None
    file = getattr(mod, "__file__", None)
    if not file:
        return None
    from pathlib import Path

    path = Path(file).resolve()
    depth = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[depth])


def _cmd_compile(args: argparse.Namespace, say: _Progress) -> int:
    from pathlib import Path

    from cogent_compiler.driver import check_output_folder, compile

    options = _options(args)
    check_output_folder(Path(args.output))  # before any work: refuse to overwrite what is not ours
    graph = _load(args, say)
    model = Path(args.model).resolve() if Path(args.model).exists() else args.model
    source = {"model": str(model), "input_shape": args.input_shape, "trust_pickle": args.trust_pickle,
              "pythonpath": _factory_root(args.model), "input_pixels": args.input_pixels}
    result = compile(graph, args.output, options, progress=say, source=source)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        c = result.report.chosen
        sp = ", ".join(f"{k} {v:.2f}x" for k, v in result.report.speedups().items())
        print(f"{result.out_dir}: cut at {', '.join(c.cut)}; predicted {c.predicted.total_ms:.1f} ms; speedup vs {sp}")
    return 0


def _cmd_bench(args: argparse.Namespace, say: _Progress) -> int:
    from pathlib import Path

    from cogent_compiler.cost import parse_bandwidth, parse_duration
    from cogent_compiler.testbed.bench import BenchConfig, bench_bundle, write_png

    if args.requests < 1:
        raise CogentError(f"--requests {args.requests}: give at least 1 (30 or more for a p95)")
    config = BenchConfig(bandwidth_bps=parse_bandwidth(args.bandwidth), rtt_s=parse_duration(args.rtt), device_quota=args.device_quota,
                         device_sched=args.device_sched,
                         requests=args.requests, containers=args.containers)
    bundle = Path(args.bundle)
    result = bench_bundle(bundle, config, progress=say)
    out = Path(args.output) if args.output else bundle.resolve().with_name(bundle.resolve().name + ".bench") / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_png(result, out.with_suffix(".png"))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'plan':<14} {'median ms':>10} {'p95 ms':>10} {'predicted ms':>13}")
        for name, p in result["plans"].items():
            pred = f"{p['predicted_ms']:.1f}" if "predicted_ms" in p else "-"
            print(f"{name:<14} {p['median_ms']:>10.1f} {p['p95_ms']:>10.1f} {pred:>13}")
        print(f"speedup of the chosen plan vs device-only PyTorch eager: {result['speedup_vs_device_eager']:.2f}x; wrote {out} and {out.with_suffix('.png')}")
    return 0


def _cmd_tunedb(args: argparse.Namespace, say: _Progress) -> int:
    from pathlib import Path

    from cogent_compiler.backends import tuning

    root = Path(args.tunedb) if args.tunedb else tuning.tunedb_root()
    if args.action == "merge":
        if not args.source:
            raise CogentError("cogentc tunedb merge: give the file or folder to merge, e.g. cogentc tunedb merge other-machine.tunedb.json")
        folder, added, present = tuning.merge_database(Path(args.source), root)
        say("merge", f"{args.source}: {added} records added, {present} already present")
        print(json.dumps({"database": folder, "added": added, "present": present}) if args.json else f"{folder}: +{added} records ({present} already present)")
        return 0
    folders = list(tuning.iter_databases(root))
    if args.action == "export":
        if not args.output:
            raise CogentError("cogentc tunedb export: give the file to write with -o, e.g. -o llvm.tunedb.json")
        matches = [f for f in folders if args.source and (f.name == args.source or f.name.startswith(f"{args.source}-"))] if args.source else folders
        if len(matches) != 1:
            names = ", ".join(f.name for f in folders) or "none"
            raise CogentError(f"cogentc tunedb export: {'no' if not matches else 'more than one'} database matches {args.source!r} under {root} (have: {names}); name one folder")
        n = tuning.export_database(matches[0], Path(args.output))
        print(json.dumps({"database": str(matches[0]), "records": n, "file": args.output}) if args.json else f"wrote {args.output}: {n} records of {matches[0].name}")
        return 0
    summaries = [tuning.summarize_database(f) for f in folders]
    if args.json:
        print(json.dumps([{**s.__dict__, "kernels": [{"name": k, "records": n, "best_ms": b} for k, n, b in s.kernels]} for s in summaries], indent=2))
        return 0
    if not summaries:
        print(f"no tuning databases under {root}; `cogentc MODEL --tune-budget 20m` creates one")
        return 0
    for s in summaries:
        print(f"{Path(s.folder).name}: {s.workloads} kernels, {s.records} records  ({s.target})")
        ranked = sorted(s.kernels, key=lambda k: -(k[2] or 0.0))
        for name, n, best in ranked[: max(0, args.limit)]:
            print(f"  {name:<48} {n:>5} records  best {best:.4f} ms" if best is not None else f"  {name:<48} {n:>5} records  (none measured)")
        if len(ranked) > args.limit:
            print(f"  ... {len(ranked) - args.limit} more (--limit)")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, _Progress], int]] = {
    "profile": _cmd_profile,
    "tunedb": _cmd_tunedb,
    "bench": _cmd_bench,
    "compile": _cmd_compile,
    "inspect": _cmd_inspect,
    "plan": _cmd_plan,
    "tune": _cmd_tune,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "compile"
    if argv and argv[0] in COMMANDS:
        argv = argv[1:]
    args = _parser(command).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    say = _Progress(args.quiet or args.json)
    try:
        return _COMMANDS[command](args, say)
    except CogentError as e:
        if args.debug:
            raise
        print(f"cogentc: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("cogentc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in cogentc or an unwrapped library error: still one line
        if args.debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"cogentc: internal error: {type(e).__name__}: {first} (re-run with --debug for the traceback, and report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
