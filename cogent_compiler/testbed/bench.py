"""``cogentc bench``: measure a bundle end to end on the emulated deployment.

For the bundle's plan and, compiled the same way from the same model, the
device-only, edge-only (raw input sent) and best single-cut plans, the device
client runs ``requests`` inferences after a warm-up inside the testbed: the
device in its namespace, on its core, under the CPU quota; the edge in its
namespace on another core; the link shaped with ``tbf``.  PyTorch eager on the
device (what a user would otherwise run) is measured under the same quota.
Every plan's output is checked against eager's.
"""

from __future__ import annotations

import json
import logging
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

from cogent_compiler.errors import CogentError
from cogent_compiler.runtime.manifest import load_manifest
from cogent_compiler.runtime.protocol import DEFAULT_PORT
from cogent_compiler.testbed.emulation import LinkSpec, Testbed, TestbedError
from cogent_compiler.testbed.machine import machine_info

__all__ = ["BenchConfig", "Measurement", "bench_bundle", "prepare_variants", "measure_variant", "write_png"]

log = logging.getLogger(__name__)

BASELINES = ("device_only", "edge_only", "single_cut")
PLANS = ("device_eager", "chosen", *BASELINES)
Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class BenchConfig:
    bandwidth_bps: float = 20e6
    rtt_s: float = 0.0
    device_quota: float | None = 0.1
    #: how the device is slowed to ``device_quota``: ``quota`` (cgroup) or ``repeat`` (its compute run 1/quota times; slows short work too)
    device_sched: str = "quota"
    requests: int = 30
    containers: bool = False
    device_cpu: int = 0
    edge_cpu: int = 1


@dataclass(frozen=True)
class Measurement:
    runs_ms: tuple[float, ...]
    max_abs_error: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms)

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.runs_ms, 95))

    def to_json(self) -> dict[str, Any]:
        return {
            "median_ms": round(self.median_ms, 4),
            "p95_ms": round(self.p95_ms, 4),
            "requests": len(self.runs_ms),
            "runs_ms": [round(r, 4) for r in self.runs_ms],
            "max_abs_error": self.max_abs_error,
            **dict(self.extra),
        }


def _plan_doc(bundle: Path) -> dict[str, Any]:
    path = bundle / "plan.json"
    if not path.is_file():
        raise CogentError(f"{bundle}: no plan.json; pass the folder cogentc wrote with -o")
    return json.loads(path.read_text())


def _load_source(src: Mapping[str, Any]) -> Any:
    from cogent_compiler.frontend import load_model, parse_shape

    if not src.get("model"):
        raise CogentError("plan.json does not say which model the bundle was built from; rebuild the bundle with cogentc")
    if src.get("pythonpath") and src["pythonpath"] not in sys.path:
        sys.path.insert(0, src["pythonpath"])
    shape = parse_shape(src["input_shape"]) if src.get("input_shape") else None
    loaded = load_model(src["model"], input_shape=shape, trust_pickle=bool(src.get("trust_pickle")))
    if src.get("input_pixels"):
        from cogent_compiler.frontend.pixels import parse_pixels, with_pixel_input

        loaded = with_pixel_input(loaded, parse_pixels(src["input_pixels"]))
    return loaded


def prepare_variants(bundle: Path, work: Path, say: Progress, names: Sequence[str] = BASELINES, *, loaded: Any = None) -> dict[str, Path]:
    """The bundle itself as ``chosen``, plus the named baselines compiled from the same source and options.

    ``loaded`` is the bundle's source model when the caller has loaded it already.
    """
    from cogent_compiler.driver import CompileOptions, compile
    from cogent_compiler.frontend import trace

    build = _plan_doc(bundle).get("build", {})
    src = build.get("source", {})
    graph = trace(loaded if loaded is not None else _load_source(src))
    opts = dict(build.get("options", {}))
    opts["cut"] = tuple(opts.get("cut", ()))
    variants = {"chosen": bundle}
    planners = {"device_only": "device", "edge_only": "edge", "single_cut": "single-cut"}
    for name in names:
        planner = planners[name]
        out = work / name
        options = CompileOptions(**{**opts, "planner": planner, "cut": ()})
        say("bench", f"compiling the {name} baseline")
        compile(graph, out, options, progress=lambda *_: None, source=src)
        variants[name] = out
    return variants


def _python() -> str:
    return sys.executable


def _read_ready(proc: subprocess.Popen[str], timeout: float = 120) -> None:
    assert proc.stdout is not None
    t0 = time.time()
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise TestbedError(f"edge server did not start within {time.time() - t0:.0f}s: {(err.strip().splitlines() or [line])[-1]}")


def _run_device(cmd: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(env), timeout=3600)
    if r.returncode != 0:
        raise TestbedError(f"device run failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure_variant(tb: Testbed, bundle: Path, x: Path, y: Path, config: BenchConfig) -> Measurement:
    """Run one compiled plan in the testbed as processes or containers; return the timed requests."""
    import os

    env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    needs_edge = bool(load_manifest(bundle / "device").send)
    edge_addr = f"{tb.edge_ip}:{DEFAULT_PORT}"
    proxy = None
    if needs_edge and config.rtt_s > 0:
        # user-space added delay (this kernel has no netem): the device talks to a proxy in the edge namespace
        proxy = subprocess.Popen(
            tb.edge_cmd([_python(), "-m", "cogent_compiler.testbed.delay", "--listen", f"{tb.edge_ip}:{DEFAULT_PORT + 1}",
                         "--to", edge_addr, "--rtt-ms", str(config.rtt_s * 1e3)]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proxy.stdout is not None
        if "delay proxy" not in proxy.stdout.readline():
            raise TestbedError("the delay proxy did not start")
    try:
        return _measure(tb, bundle, x, y, config, needs_edge, edge_addr, env,
                        f"{tb.edge_ip}:{DEFAULT_PORT + 1}" if proxy else edge_addr)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)


def _measure(tb: Testbed, bundle: Path, x: Path, y: Path, config: BenchConfig, needs_edge: bool, edge_addr: str,
             env: Mapping[str, str], connect_addr: str) -> Measurement:
    if config.containers:
        return _measure_containers(tb, bundle, x, y, config, needs_edge, edge_addr, connect_addr)
    edge = None
    if needs_edge:
        edge = subprocess.Popen(
            tb.edge_cmd([_python(), "-m", "cogent_compiler.runtime.edge", "serve", str(bundle / "edge"), "--host", tb.edge_ip, "--port", str(DEFAULT_PORT)]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
    try:
        if edge is not None:
            _read_ready(edge)
        cmd = [_python(), "-m", "cogent_compiler.runtime.device", "run", str(bundle / "device"), "--input", str(x), "--output", str(y), "--repeat", str(config.requests), "--json"]
        if needs_edge:
            cmd += ["--edge", connect_addr]
        report = _run_device(tb.device_cmd(cmd), env)
    finally:
        if edge is not None:
            edge.terminate()
            edge.wait(timeout=30)
    return Measurement(tuple(report["runs_ms"]))


def _measure_containers(tb: Testbed, bundle: Path, x: Path, y: Path, config: BenchConfig, needs_edge: bool,
                        edge_addr: str, connect_addr: str) -> Measurement:
    from cogent_compiler.testbed import containers as ct

    base = ct.ensure_base_image()
    dev_tag = ct.build_image(bundle / "device", base_image=base)
    sizes = {"base_image_bytes": ct.image_size(base), "device_image_bytes": ct.image_size(dev_tag)}
    name = f"cgnt-edge-{id(tb) % 100000}"
    if needs_edge:
        edge_tag = ct.build_image(bundle / "edge", base_image=base)
        sizes["edge_image_bytes"] = ct.image_size(edge_tag)
        ct.podman(*ct.run_args(edge_tag, netns=tb.netns_path("edge"), cpus=None, cpuset=tb.edge_cpu, name=name, detach=True))
    try:
        if needs_edge:
            for _ in range(600):
                if "serving" in ct.podman("logs", name, check=False).stdout:
                    break
                time.sleep(0.2)
            else:
                raise TestbedError("edge container did not start serving within 120 s")
        data = Path(tempfile.mkdtemp(prefix="cogent-bench-"))
        (data / "input.npy").write_bytes(x.read_bytes())
        args = ct.run_args(dev_tag, netns=tb.netns_path("device"), cpus=tb.device_quota, cpuset=tb.device_cpu,
                           period_us=tb.period_us, volumes=[(str(data), "/data")])
        args += ["--input", "/data/input.npy", "--output", "/data/output.npy", "--repeat", str(config.requests), "--json"]
        if needs_edge:
            args += ["--edge", connect_addr]
        r = ct.podman(*args, timeout=3600)
        report = json.loads(r.stdout.strip().splitlines()[-1])
        y.write_bytes((data / "output.npy").read_bytes())
    finally:
        if needs_edge:
            ct.podman("rm", "-f", name, check=False)
    return Measurement(tuple(report["runs_ms"]), extra=sizes)


def _measure_eager(tb: Testbed, source: Mapping[str, Any], x: Path, y: Path, config: BenchConfig) -> Measurement:
    import os

    cmd = [_python(), "-m", "cogent_compiler.testbed.eager", str(source["model"]), "--input", str(x), "--output", str(y), "--repeat", str(config.requests), "--json"]
    if source.get("input_shape"):
        cmd += ["--input-shape", str(source["input_shape"])]
    if source.get("input_pixels"):
        cmd += ["--input-pixels", str(source["input_pixels"])]
    if source.get("trust_pickle"):
        cmd.append("--trust-pickle")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if source.get("pythonpath"):  # the folder a module:factory model was imported from
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source["pythonpath"], env.get("PYTHONPATH")) if p)
    report = _run_device(tb.device_cmd(cmd), env)
    return Measurement(tuple(report["runs_ms"]))


def _reference_output(loaded: Any, x: Path) -> np.ndarray:
    """PyTorch eager's output on ``x``, computed here (outside the quota) to check every plan."""
    import torch

    program = loaded.program
    with torch.inference_mode():
        y = program.module()(torch.from_numpy(np.load(x)))
    return (y[0] if isinstance(y, (tuple, list)) else y).numpy()


def bench_bundle(
    bundle: str | Path,
    config: BenchConfig,
    *,
    plans: Sequence[str] = PLANS,
    progress: Progress | None = None,
    work: Path | None = None,
) -> dict[str, Any]:
    """Measure the bundle (``chosen``) and the named baselines; return the JSON-ready result."""
    say: Progress = progress or (lambda s, m: log.info("%s: %s", s, m))
    unknown = set(plans) - set(PLANS)
    if unknown:
        raise CogentError(f"unknown plans {sorted(unknown)}; choose from {', '.join(PLANS)}")
    bundle = Path(bundle).resolve()
    doc = _plan_doc(bundle)
    work = Path(work) if work else bundle.with_name(bundle.name + ".bench")
    work.mkdir(parents=True, exist_ok=True)
    source = doc.get("build", {}).get("source", {})
    loaded = _load_source(source)
    variants = prepare_variants(bundle, work, say, [p for p in BASELINES if p in plans], loaded=loaded)
    if "chosen" not in plans:
        del variants["chosen"]
    inputs = load_manifest(bundle / "device").inputs
    if len(inputs) != 1:
        raise CogentError(f"{bundle}: bench supports single-input models for now; this one has {len(inputs)}")
    rng = np.random.default_rng(0)
    x = work / "input.npy"
    if inputs[0].dtype == "uint8":  # an image's pixels (--input-pixels)
        sample = rng.integers(0, 256, inputs[0].shape, dtype=np.uint8)
    else:
        sample = rng.standard_normal(inputs[0].shape).astype(inputs[0].dtype)
    np.save(x, sample, allow_pickle=False)
    expected = _reference_output(loaded, x)
    measured: dict[str, Measurement] = {}
    link = LinkSpec(config.bandwidth_bps, config.rtt_s)
    if config.containers and config.device_sched != "quota":
        raise TestbedError(f"--device-sched {config.device_sched}: containers are held to their quota by podman; use processes")
    with Testbed(link, device_quota=config.device_quota, device_cpu=config.device_cpu, edge_cpu=config.edge_cpu,
                 device_sched=config.device_sched) as tb:
        say("bench", f"testbed up: {config.bandwidth_bps / 1e6:g} Mbit/s, device quota {config.device_quota} ({config.device_sched}), "
            f"{'containers' if config.containers else 'processes'}")
        if "device_eager" in plans:
            y = work / "device_eager.npy"
            eager = _measure_eager(tb, source, x, y, config)
            measured["device_eager"] = Measurement(eager.runs_ms, float(np.abs(np.load(y) - expected).max()))
            say("bench", f"device_eager: median {eager.median_ms:.1f} ms")
        for name, folder in variants.items():
            y = work / f"{name}.npy"
            m = measure_variant(tb, folder, x, y, config)
            err = float(np.abs(np.load(y) - expected).max())
            measured[name] = Measurement(m.runs_ms, err, m.extra)
            say("bench", f"{name}: median {m.median_ms:.1f} ms, p95 {m.p95_ms:.1f} ms (max abs error vs eager {err:.2e})")
    results: dict[str, Any] = {}
    for name, m in measured.items():
        entry = m.to_json()
        if name != "device_eager":
            plan = json.loads((variants[name] / "plan.json").read_text())["chosen"]
            entry["cut"] = plan["cut"]
            entry["predicted_ms"] = plan["predicted"]["total_ms"]
        results[name] = entry
    chosen = measured["chosen"].median_ms if "chosen" in measured else None
    speedups = {f"vs_{k}": m.median_ms / chosen for k, m in measured.items() if chosen and k != "chosen"}
    return {
        "format": "cogent-bench/1",
        "machine": machine_info(),
        "model": doc["model"],
        "bundle": str(bundle),
        "mode": "containers" if config.containers else "processes",
        "conditions": {
            "bandwidth_mbps": config.bandwidth_bps / 1e6,
            "rtt_ms": config.rtt_s * 1e3,
            "device_quota": config.device_quota,
            "device_sched": config.device_sched,
            "device_cpu": config.device_cpu,
            "edge_cpu": config.edge_cpu,
            "requests": config.requests,
            "warmup": "1 request plus the runtime's load-time warm-up, not timed",
        },
        "plans": results,
        "speedup_vs_device_eager": speedups.get("vs_device_eager"),
        "speedups": speedups,
    }


def write_png(result: Mapping[str, Any], path: Path) -> None:
    """A bar chart of median latency per plan with p95 whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["plans"])
    med = [result["plans"][n]["median_ms"] for n in names]
    p95 = [result["plans"][n]["p95_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    colors = ["#d62728" if n == "chosen" else "#7f7f7f" if n == "device_eager" else "#1f77b4" for n in names]
    ax.bar(names, med, color=colors, yerr=[[0] * len(med), [max(0.0, p - m) for p, m in zip(p95, med)]], capsize=4)
    c = result["conditions"]
    ax.set_ylabel("end-to-end latency, ms (median, p95)")
    ax.set_title(f"{result['model']}: {c['bandwidth_mbps']:g} Mbit/s, device quota {c['device_quota']} — measured")
    for i, m in enumerate(med):
        ax.text(i, m, f"{m:.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
