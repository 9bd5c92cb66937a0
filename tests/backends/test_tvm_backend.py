"""Lowering with TVM 0.27 for llvm (run here), arm (cross-linked aarch64) and cuda (compiled with nvcc)."""

from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

from cogent_compiler.backends import resolve_target
from cogent_compiler.backends.tvm_backend import compile_program
from cogent_compiler.errors import BackendError
from cogent_compiler.passes import FoldBatchNorm
from cogent_compiler.runtime.executor import Half
from cogent_compiler.bundle import write_half

EM_AARCH64 = 183


def _bundle_half(folder, compiled, graph, target):
    """Finish ``folder`` as a device bundle with the real writer, so the runtime can load it."""
    outputs = [graph.tensors[o] for o in graph.outputs]
    write_half(
        folder, role="device", model=graph.name, target=target, library=compiled.library,
        params=compiled.params, kernels=compiled.kernels, inputs=graph.inputs, outputs=outputs,
        model_outputs=outputs, plan={},
    )


def test_llvm_artifact_matches_pytorch_after_batch_norm_folding(tiny_model, tiny_graph, tmp_path):
    model, x = tiny_model
    folded = FoldBatchNorm()(tiny_graph)
    assert not any(n.op == "batch_norm" for n in folded.nodes)
    target = resolve_target("llvm")
    compiled = compile_program(folded.source, "torch", target, tmp_path, name="tiny")
    assert compiled.num_params > 0
    _bundle_half(tmp_path, compiled, folded, target)
    (got,) = Half.load(tmp_path).run([x.numpy()])
    with torch.no_grad():
        expected = model(x).numpy()
    assert float(np.abs(got - expected).max()) <= 1e-4


def _elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", "not an ELF file"
    assert head[4] == 2, "not 64-bit"
    return struct.unpack("<H", head[18:20])[0]


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="needs the aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu); .ci/run installs it")
def test_arm_artifact_is_an_aarch64_library_with_the_kernels(tiny_graph, tmp_path):
    folded = FoldBatchNorm()(tiny_graph)
    target = resolve_target("arm")
    assert target.tvm["mattr"] == ["+neon"] and target.arch == "aarch64"
    compiled = compile_program(folded.source, "torch", target, tmp_path, name="tiny")
    lib = tmp_path / compiled.library
    assert _elf_machine(lib) == EM_AARCH64
    nm = shutil.which("aarch64-linux-gnu-nm") or shutil.which("nm")
    symbols = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "__tvm_ffi__library_bin" in symbols  # the serialised Relax VM executable
    assert "conv2d" in symbols and "matmul" in symbols  # the lowered kernels


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit) to compile CUDA kernels")
def test_cuda_kernels_are_precompiled_with_nvcc_and_served_to_the_runtime(tiny_graph, tmp_path):
    import hashlib

    import tvm
    import tvm_ffi

    from cogent_compiler.runtime.executor import serve_precompiled_kernels

    folded = FoldBatchNorm()(tiny_graph)
    target = resolve_target("cuda:sm_80")
    compiled = compile_program(folded.source, "torch", target, tmp_path, name="tiny")
    assert _elf_machine(tmp_path / compiled.library) == 62  # x86-64 host code that launches the kernels
    (kernel,) = compiled.kernels
    fatbin = (tmp_path / kernel).read_bytes()
    assert fatbin[:4] == bytes.fromhex("50ed55ba")  # fatbin magic
    # the CUDA source TVM will hand the runtime at load time is the one the fatbin was built from
    (source,) = [m.inspect_source() for m in _cuda_sources(folded, target)]
    assert kernel == f"kernels/{hashlib.sha256(source.encode()).hexdigest()}.fatbin"
    serve_precompiled_kernels(tmp_path, compiled.kernels)
    callback = tvm_ffi.get_global_func("tvm_callback_cuda_compile")
    assert bytes(callback(source)) == fatbin
    with pytest.raises(Exception, match="did not precompile"):
        callback("// some other kernel")
    if not tvm.cuda().exist:
        pytest.skip("compiled and served; running the kernels needs an NVIDIA GPU (none here)")
    _bundle_half(tmp_path, compiled, folded, target)
    x = np.random.default_rng(0).standard_normal(folded.inputs[0].shape, dtype=np.float32)
    (got,) = Half.load(tmp_path).run([x])
    with torch.no_grad():
        expected = folded.source.module()(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - expected).max()) <= 1e-4


def _cuda_sources(graph, target):
    """Lower again through the same stages and return the CUDA source modules (compilation is deterministic)."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from cogent_compiler.backends import pipeline

    mod, params = relax.frontend.detach_params(from_exported_program(graph.source, keep_params_as_input=True))
    ex, _ = pipeline.lower(mod, [p.numpy() for p in params["main"]], target.tvm_target())
    out, stack = [], [ex.mod]
    while stack:
        m = stack.pop()
        out += [m] if m.kind == "cuda" else []
        stack.extend(m.imports)
    return out


def test_unknown_target_is_one_clear_line():
    with pytest.raises(BackendError, match="target 'riscv' is unknown; use one of llvm"):
        resolve_target("riscv")
    with pytest.raises(BackendError, match="sm_80"):
        resolve_target("cuda:ampere")
