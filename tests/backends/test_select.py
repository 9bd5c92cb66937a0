"""Backend choice: ONNX Runtime artifacts, the measured choice, forced backends, CPU schedules, an ORT bundle end to end.

Real TVM, real ONNX Runtime, real processes; nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cogent_compiler.backends import resolve_target
from cogent_compiler.backends.onnxruntime_backend import MODEL_NAME, compile_onnxruntime, onnxruntime_applies
from cogent_compiler.backends.select import CANDIDATES, BackendChoice, backend_candidates, choose_backend, decide_backend
from cogent_compiler.backends.tvm_backend import compile_program, cpu_default_schedules, tvm_target_for
from cogent_compiler.bundle import write_half
from cogent_compiler.errors import BackendError, RuntimeFailure
from cogent_compiler.frontend import load_model, trace
from cogent_compiler.passes import FoldBatchNorm, partition_at, split_program
from cogent_compiler.runtime.executor import Half, runtime_threads
from cogent_compiler.runtime.manifest import load_manifest

BIN = Path(sys.executable).parent
LLVM = resolve_target("llvm")


def _write(folder: Path, compiled, *, role: str, inputs, outputs, target=LLVM, model_outputs=()) -> None:
    write_half(
        folder, role=role, model="tiny", target=target, library=compiled.library, params=compiled.params,
        kernels=compiled.kernels, backend=compiled.backend, inputs=inputs, outputs=outputs,
        model_outputs=model_outputs, plan={},
    )


@pytest.fixture(scope="module")
def folded(tiny_graph):
    return FoldBatchNorm()(tiny_graph)


def _two_tensor_split(graph, cut):
    """Head and tail across a cut where two tensors of the same shape cross (order matters)."""
    split = split_program(partition_at(graph, cut))
    assert len(split.sent) == 2 and split.sent[0].shape == split.sent[1].shape
    return split


def _run_split(tmp_path: Path, split, compile_fn, x: np.ndarray) -> np.ndarray:
    head_c = compile_fn(split.head, split.kind, LLVM, tmp_path / "head", name="tiny head")
    tail_c = compile_fn(split.tail, split.kind, LLVM, tmp_path / "tail", name="tiny tail")
    _write(tmp_path / "head", head_c, role="device", inputs=split.model_inputs, outputs=split.head_outputs, model_outputs=split.model_outputs)
    _write(tmp_path / "tail", tail_c, role="edge", inputs=split.sent, outputs=split.tail_outputs)
    head, tail = Half.load(tmp_path / "head"), Half.load(tmp_path / "tail")
    sent = head.run([x])
    by_name = dict(zip(head.output_names, sent))
    (y,) = tail.run([by_name[s.name] for s in split.sent])
    return y


def test_onnxruntime_artifact_of_a_torch_half_matches_pytorch_through_the_runtime(tiny_model, folded, tmp_path):
    model, x = tiny_model
    split = _two_tensor_split(folded, ["relu", "relu_1"])
    y = _run_split(tmp_path, split, compile_onnxruntime, x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()
    assert float(np.abs(y - expected).max()) <= 1e-4

    manifest = json.loads((tmp_path / "tail" / "manifest.json").read_text())
    assert manifest["module"]["backend"] == "onnxruntime"
    assert manifest["module"]["library"] == MODEL_NAME and manifest["module"]["params"] is None
    assert set(manifest["files"]) == {MODEL_NAME}
    assert not list((tmp_path / "tail").glob("*.data")), "weights must stay inside model.onnx"
    runtime = tmp_path / "tail" / "runtime"
    assert (runtime / "onnxruntime" / "__init__.py").is_file()
    assert not (runtime / "tvm").exists() and not (runtime / "onnxruntime" / "transformers").exists()


def test_onnxruntime_artifact_of_an_onnx_half_matches_onnxruntime_through_the_runtime(tiny_model, folded, tmp_path):
    import onnx
    import onnxruntime as ort

    _, x = tiny_model
    path = tmp_path / "tiny.onnx"
    onnx.save_model(torch.onnx.export(folded.source, (), dynamo=True, verbose=False).model_proto, str(path))
    graph = trace(load_model(path))
    relus = [n.outputs[0].name for n in graph.nodes if n.op == "relu"][:2]
    split = _two_tensor_split(graph, relus)
    assert split.kind == "onnx"
    y = _run_split(tmp_path, split, compile_onnxruntime, x.numpy())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert float(np.abs(y - expected).max()) <= 1e-4


def test_auto_measures_both_on_llvm_and_keeps_the_faster(tiny_model, folded, tmp_path):
    model, x = tiny_model
    compiled, choice = choose_backend(folded.source, "torch", LLVM, tmp_path, name="tiny", repeats=5)
    assert set(choice.measured_ms) == set(CANDIDATES)
    fastest = min(CANDIDATES, key=lambda b: (choice.measured_ms[b], CANDIDATES.index(b)))
    assert choice.backend == compiled.backend == fastest
    assert choice.threads == runtime_threads()
    assert choice.max_abs_diff is not None and choice.max_abs_diff <= 1e-4
    assert "fastest on this machine" in choice.reason and f"{choice.measured_ms[fastest]:.2f} ms" in choice.reason
    # only the winner's files are left, and they run through the runtime
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ([MODEL_NAME] if fastest == "onnxruntime" else ["model.so", "params.npz"])
    outputs = [folded.tensors[o] for o in folded.outputs]
    _write(tmp_path, compiled, role="device", inputs=folded.inputs, outputs=outputs, model_outputs=outputs)
    (got,) = Half.load(tmp_path).run([x.numpy()])
    with torch.no_grad():
        assert float(np.abs(got - model(x).numpy()).max()) <= 1e-4
    assert json.loads(json.dumps(choice.to_json()))["measured_ms"].keys() == set(CANDIDATES)


@pytest.mark.parametrize("backend", CANDIDATES)
def test_a_forced_backend_is_honoured_without_measuring(folded, tmp_path, backend):
    compiled, choice = choose_backend(folded.source, "torch", LLVM, tmp_path, name="tiny", candidates=backend_candidates(backend))
    assert compiled.backend == choice.backend == backend
    assert choice.measured_ms == {} and choice.threads is None and f"--backend {backend}" in choice.reason
    assert (tmp_path / compiled.library).is_file() and not (tmp_path / ".candidates").exists()


def test_decision_prefers_speed_tvm_on_ties_and_onnxruntime_when_outputs_disagree():
    assert decide_backend({"tvm": 2.0, "onnxruntime": 3.0}, 2, 0.0, 1.0)[0] == "tvm"
    assert decide_backend({"tvm": 3.0, "onnxruntime": 2.0}, 2, 0.0, 1.0)[0] == "onnxruntime"
    best, reason = decide_backend({"tvm": 2.0, "onnxruntime": 2.0}, 1, 0.0, 1.0)
    assert best == "tvm" and reason == "fastest on this machine with 1 thread: tvm 2.00 ms vs onnxruntime 2.00 ms (median)"
    best, reason = decide_backend({"tvm": 1.0, "onnxruntime": 5.0}, 2, 0.5, 10.0)
    assert best == "onnxruntime" and reason.startswith("outputs differ by 0.5 (largest output magnitude 10)")


def test_unknown_backend_option_is_one_clear_line():
    assert backend_candidates("auto") == CANDIDATES
    with pytest.raises(BackendError, match="--backend 'tensorrt' is unknown; use one of auto, tvm, onnxruntime"):
        backend_candidates("tensorrt")


def test_arm_and_cuda_never_get_onnxruntime_here():
    arm, cuda = resolve_target("arm"), resolve_target("cuda:sm_80")
    assert "aarch64 cannot be bundled or measured" in (onnxruntime_applies(arm) or "")
    assert "CPU only" in (onnxruntime_applies(cuda) or "")
    assert onnxruntime_applies(LLVM) is None
    for target in (arm, cuda):
        with pytest.raises(BackendError, match="cannot use ONNX Runtime here"):
            compile_onnxruntime(None, "torch", target, Path("/nonexistent"), name="tiny")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="needs the aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu); .ci/run installs it")
def test_auto_on_arm_chooses_tvm_and_says_why(folded, tmp_path):
    compiled, choice = choose_backend(folded.source, "torch", resolve_target("arm"), tmp_path, name="tiny")
    assert compiled.backend == choice.backend == "tvm"
    assert choice.measured_ms == {} and "cannot be bundled or measured on this" in choice.reason


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit) to compile CUDA kernels")
def test_auto_on_cuda_chooses_tvm_and_says_why(folded, tmp_path):
    compiled, choice = choose_backend(folded.source, "torch", resolve_target("cuda:sm_80"), tmp_path, name="tiny")
    assert compiled.backend == choice.backend == "tvm" and compiled.kernels
    assert "CPU only" in choice.reason


def test_manifest_backend_defaults_to_tvm_and_rejects_unknown(folded, tmp_path):
    compiled = compile_onnxruntime(folded.source, "torch", LLVM, tmp_path, name="tiny")
    outputs = [folded.tensors[o] for o in folded.outputs]
    _write(tmp_path, compiled, role="device", inputs=folded.inputs, outputs=outputs, model_outputs=outputs)
    path = tmp_path / "manifest.json"
    raw = json.loads(path.read_text())
    del raw["module"]["backend"]
    path.write_text(json.dumps(raw))
    assert load_manifest(tmp_path).module.backend == "tvm"
    raw["module"]["backend"] = "tensorrt"
    path.write_text(json.dumps(raw))
    with pytest.raises(RuntimeFailure, match="backend 'tensorrt' is not one of tvm, onnxruntime"):
        load_manifest(tmp_path)


def test_runtime_threads_follow_tvms_rule():
    assert runtime_threads({"TVM_NUM_THREADS": "3", "OMP_NUM_THREADS": "5"}) == 3
    assert runtime_threads({"OMP_NUM_THREADS": "5"}) == 5
    assert runtime_threads({}) >= 1
    with pytest.raises(RuntimeFailure, match="TVM_NUM_THREADS='zero' is not a positive integer"):
        runtime_threads({"TVM_NUM_THREADS": "zero"})


class _Mixed(torch.nn.Module):
    """What the CPU rule must schedule or leave alone: strided grouped conv, pooling, layer norm, softmax, batch 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 6, 3, stride=2, groups=2)
        self.ln = torch.nn.LayerNorm(32)
        self.fc = torch.nn.Linear(32, 24)

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        b = torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2)
        return torch.softmax(self.fc(self.ln(t)), -1), b.sum(dim=(2, 3)), torch.sigmoid(b) * 2


def test_cpu_schedules_keep_results_and_parallelize_the_convolutions(tmp_path):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    model = _Mixed().eval()
    x, t = torch.randn(2, 4, 33, 31), torch.randn(2, 5, 32)
    ep = torch.export.export(model, (x, t)).run_decompositions({})
    compiled = compile_program(ep, "torch", LLVM, tmp_path, name="mixed")
    dev = tvm.cpu()
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(tmp_path / compiled.library)), dev)
    with np.load(tmp_path / compiled.params) as z:
        params = [tvm.runtime.tensor(z[f"p{i}"], dev) for i in range(len(z.files))]
    got = vm["main"](tvm.runtime.tensor(x.numpy(), dev), tvm.runtime.tensor(t.numpy(), dev), *params)
    with torch.no_grad():
        expected = model(x, t)
    assert len(got) == 3
    for g, e in zip(got, expected):
        assert float(np.abs(g.numpy() - e.numpy()).max()) <= 1e-4

    mod, _ = relax.frontend.detach_params(from_exported_program(ep, keep_params_as_input=True))
    scheduled = cpu_default_schedules(mod, tvm_target_for(LLVM))
    convs = [f for gv, f in scheduled.functions.items() if "conv2d" in gv.name_hint]
    assert convs and all(f.attrs["tirx.is_scheduled"] for f in convs)
    assert all("T.parallel" in f.script() and "T.vectorized" in f.script() for f in convs)


def test_llvm_is_compiled_for_this_cpu_and_arm_is_left_alone():
    from tvm.target import codegen

    assert str(tvm_target_for(LLVM).attrs["mcpu"]) == str(codegen.llvm_get_system_cpu())
    assert "mcpu" not in tvm_target_for(resolve_target("arm")).attrs


def _cogentc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "cogentc"), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_onnxruntime_bundle_runs_as_two_isolated_processes_and_matches_pytorch(tiny_model, tmp_path, isolated_python):
    """cogentc --backend onnxruntime; edge server and device client in interpreters that see only the bundle and numpy."""
    model, x = tiny_model
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "tiny.pt2")
    np.save(tmp_path / "x.npy", x.numpy())
    r = _cogentc("tiny.pt2", "--target", "llvm,llvm", "--cut", "relu,relu_1", "--backend", "onnxruntime", "-o", "out", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    out = tmp_path / "out"
    for half in ("device", "edge"):
        assert summary["backends"][half]["backend"] == "onnxruntime"
        assert json.loads((out / half / "manifest.json").read_text())["module"]["backend"] == "onnxruntime"
        assert (out / half / "runtime" / "onnxruntime").is_dir() and not (out / half / "runtime" / "tvm").exists()
        assert "COPY manifest.json model.onnx" in (out / half / "Dockerfile").read_text()

    python, env_for = isolated_python

    def env(half: str) -> dict[str, str]:
        return env_for(out / half / "runtime")

    for probe in ("import torch", "import tvm"):
        p = subprocess.run([python, "-S", "-c", probe], env=env("edge"), capture_output=True, text=True)
        assert p.returncode != 0, f"the isolated interpreter can run {probe!r}; the test would prove nothing"
    edge = subprocess.Popen(
        [python, "-S", "-m", "cogent_compiler.runtime.edge", "serve", str(out / "edge"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env("edge"),
    )
    try:
        line = edge.stdout.readline()  # type: ignore[union-attr]
        assert "serving" in line, f"edge did not start: {line!r} {edge.stderr.read() if edge.poll() is not None else ''}"  # type: ignore[union-attr]
        address = line.strip().rsplit(" ", 1)[-1]
        d = subprocess.run(
            [python, "-S", "-m", "cogent_compiler.runtime.device", "run", str(out / "device"),
             "--edge", address, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")],
            env=env("device"), capture_output=True, text=True, timeout=120,
        )
        assert d.returncode == 0, d.stderr
    finally:
        edge.terminate()
        edge.wait(timeout=20)
    with torch.no_grad():
        expected = model(x).numpy()
    assert float(np.abs(np.load(tmp_path / "y.npy") - expected).max()) <= 1e-4


def test_backend_choice_serialises_to_plain_json():
    choice = BackendChoice("tvm", "why", {"tvm": 1.23456, "onnxruntime": 2.0}, 2, 0.0)
    assert choice.to_json() == {"backend": "tvm", "reason": "why", "measured_ms": {"tvm": 1.235, "onnxruntime": 2.0}, "threads": 2, "max_abs_diff": 0.0}
