"""Real bundles for the runtime tests, compiled once per session with torch.export + TVM (llvm).

The model is a tiny CNN: head = conv + relu, tail = global average pool +
flatten + linear.  Three plans are written, each a ``device/`` + ``edge/`` pair:

- ``split``: head on the device, tail on the edge (sends the relu output);
- ``device_only``: the whole model on the device, an empty edge, nothing sent;
- ``edge_only``: an empty device that sends the input, the whole model on the edge.

Expected values come from torch eager.  This is test-only scaffolding; the
compiler writes real bundles the same way.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cogent_compiler.runtime.manifest import Manifest, ModuleSpec, TensorSpec, sha256_file
from edge_support import edge_argv, repo_env, start_edge_process

MODEL = "tinycnn"
X_SHAPE = (1, 3, 16, 16)


@dataclass(frozen=True)
class Bundles:
    """Where the compiled bundles are and what they must compute."""

    root: Path
    x: np.ndarray  # the model input used for the expected values
    boundary: np.ndarray  # head output for x (torch eager)
    logits: np.ndarray  # model output for x (torch eager)

    def device(self, plan: str = "split") -> Path:
        return self.root / plan / "device"

    def edge(self, plan: str = "split") -> Path:
        return self.root / plan / "edge"

    def expected(self, x: np.ndarray) -> np.ndarray:
        """Model output for another input, from torch eager."""
        import torch

        with torch.no_grad():
            return _full_model()(torch.from_numpy(x)).numpy()


_MODELS: dict[str, object] = {}


def _modules() -> tuple[object, object]:
    import torch
    from torch import nn

    if "head" not in _MODELS:

        class Head(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.relu(self.conv(x))

        class Tail(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.fc = nn.Linear(8, 10)

            def forward(self, h: torch.Tensor) -> torch.Tensor:
                return self.fc(torch.flatten(self.pool(h), 1))

        torch.manual_seed(0)
        _MODELS["head"] = Head().eval()
        _MODELS["tail"] = Tail().eval()
    return _MODELS["head"], _MODELS["tail"]


def _full_model() -> object:
    import torch

    head, tail = _modules()
    return torch.nn.Sequential(head, tail).eval()  # type: ignore[arg-type]


def _compile(module: object, example: np.ndarray, out_dir: Path, stem: str) -> ModuleSpec:
    """Export ``module``, compile it for llvm and write ``stem.so`` + ``stem.npz`` into ``out_dir``."""
    import torch
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    ep = torch.export.export(module, (torch.from_numpy(example),))  # type: ignore[arg-type]
    mod = from_exported_program(ep, keep_params_as_input=True)
    mod, params = tvm.relax.frontend.detach_params(mod)
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    ex.export_library(str(out_dir / f"{stem}.so"))
    np.savez(out_dir / f"{stem}.npz", **{f"p{i}": p.numpy() for i, p in enumerate(params.get("main", []))})
    return ModuleSpec(library=f"{stem}.so", params=f"{stem}.npz", entry="main")


def _write(
    folder: Path,
    role: str,
    module: ModuleSpec | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    send: Sequence[str] = (),
    model_outputs: Sequence[TensorSpec] = (),
) -> None:
    files = {}
    if module is not None:
        for name in (module.library, module.params):
            assert name is not None
            files[name] = sha256_file(folder / name)
    Manifest(
        role=role,
        model=MODEL,
        target={"name": "llvm", "device": "cpu"},
        module=module,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        send=tuple(send),
        model_outputs=tuple(model_outputs),
        files=files,
        plan={"test": True},
    ).write(folder)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """Compile the three plans of the tiny CNN (a few seconds, once per session)."""
    import torch

    root = tmp_path_factory.mktemp("bundles")
    head, tail = _modules()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    with torch.no_grad():
        boundary = head(torch.from_numpy(x)).numpy()  # type: ignore[operator]
        logits = tail(torch.from_numpy(boundary)).numpy()  # type: ignore[operator]

    x_spec = TensorSpec("x", X_SHAPE, "float32")
    h_spec = TensorSpec("relu", tuple(boundary.shape), "float32")
    y_spec = TensorSpec("logits", tuple(logits.shape), "float32")

    for plan in ("split", "device_only", "edge_only"):
        (root / plan / "device").mkdir(parents=True)
        (root / plan / "edge").mkdir(parents=True)

    dev, edge = root / "split" / "device", root / "split" / "edge"
    _write(dev, "device", _compile(head, x, dev, "head"), [x_spec], [h_spec], ["relu"], [y_spec])
    _write(edge, "edge", _compile(tail, boundary, edge, "tail"), [h_spec], [y_spec])

    full = _full_model()
    dev, edge = root / "device_only" / "device", root / "device_only" / "edge"
    _write(dev, "device", _compile(full, x, dev, "model"), [x_spec], [y_spec], [], [y_spec])
    _write(edge, "edge", None, [], [])

    dev, edge = root / "edge_only" / "device", root / "edge_only" / "edge"
    _write(dev, "device", None, [x_spec], [x_spec], ["x"], [y_spec])
    shutil.copy(root / "device_only" / "device" / "model.so", edge / "model.so")
    shutil.copy(root / "device_only" / "device" / "model.npz", edge / "model.npz")
    _write(edge, "edge", ModuleSpec("model.so", "model.npz"), [x_spec], [y_spec])
    return Bundles(root=root, x=x, boundary=boundary, logits=logits)


@dataclass
class EdgeProcess:
    proc: subprocess.Popen[str]
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def start_edge(bundle_dir: Path, *extra: str, timeout: float = 60.0) -> EdgeProcess:
    """Start ``python -m cogent_compiler.runtime.edge serve`` on 127.0.0.1, port 0; wait for its ready line."""
    proc, host, port = start_edge_process([*edge_argv(bundle_dir), *extra], timeout)
    return EdgeProcess(proc, host, port)


def stop_edge(edge: EdgeProcess, timeout: float = 20.0) -> tuple[int, str]:
    """SIGTERM the edge server; return its exit status and stderr."""
    if edge.proc.poll() is None:
        edge.proc.terminate()
    try:
        _, err = edge.proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        edge.proc.kill()
        _, err = edge.proc.communicate()
        raise AssertionError(f"edge server ignored SIGTERM for {timeout} s; stderr: {err}")
    return edge.proc.returncode, err


@pytest.fixture
def edge_factory() -> Iterator[Callable[..., EdgeProcess]]:
    """Start edge servers with ``edge_factory(bundle_dir, *extra_args)``; all are stopped after the test."""
    started: list[EdgeProcess] = []

    def start(bundle_dir: Path, *extra: str) -> EdgeProcess:
        edge = start_edge(bundle_dir, *extra)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        stop_edge(edge)


@pytest.fixture
def edge_server(bundles: Bundles, edge_factory: Callable[..., EdgeProcess]) -> EdgeProcess:
    """A running edge server for the split plan, stopped (SIGTERM) after the test."""
    return edge_factory(bundles.edge("split"))


@pytest.fixture
def run_env() -> dict[str, str]:
    """Environment for runtime subprocesses (the repo on PYTHONPATH)."""
    return repo_env()
