"""Every benchmark model (``benchmarks/models.py``) compiles whole for ``cuda`` with nvcc.

``compile_program`` lowers the batch-norm-folded program with TVM's CUDA
pipeline and has nvcc build its kernels (``precompile_cuda``); this checks
the files it writes: ``model.so`` (a host library for this machine),
``params.npz`` holding one float32 array per parameter of the program, and
``kernels/*.fatbin`` with SASS (a CUDA ELF) and PTX for the target's
architecture.  Nothing is run: that needs a GPU, and
``tests/backends/test_tvm_backend.py`` runs a small model when one is present.

All five models run by default, none behind an environment variable: on the
2 shared cores this was written on the file takes about 95 s (per model,
export + trace + compile + nvcc: resnet18 13-19 s, mobilenet_v2 11-18 s,
vgg16 10-16 s, googlenet 32-34 s, resnet18_pruned50 10-12 s).  vgg16 writes a
553 MB ``params.npz`` into the test's temporary folder.
"""

from __future__ import annotations

import math
import platform
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks.models import BENCHMARK_MODELS, benchmark_graph

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit) on the PATH to compile CUDA kernels"),
]

ARCH = 80
EM_X86_64, EM_AARCH64, EM_CUDA = 62, 183, 190
FATBIN_MAGIC = 0xBA55ED50
FATBIN_PTX, FATBIN_ELF = 1, 2


@pytest.mark.parametrize("name", BENCHMARK_MODELS)
def test_benchmark_model_compiles_for_cuda(name, tmp_path):
    from torch.export.graph_signature import InputKind

    from cogent_compiler.backends import resolve_target
    from cogent_compiler.backends.tvm_backend import compile_program

    graph = benchmark_graph(name)
    program = graph.source
    compiled = compile_program(program, "torch", resolve_target(f"cuda:sm_{ARCH}"), tmp_path, name=name)

    host = {"x86_64": EM_X86_64, "aarch64": EM_AARCH64}[platform.machine()]
    assert compiled.library == "model.so" and _elf_machine((tmp_path / "model.so").read_bytes()) == host

    weights = [program.state_dict[s.target] for s in program.graph_signature.input_specs if s.kind != InputKind.USER_INPUT]
    assert compiled.params == "params.npz" and compiled.num_params == len(weights) > 0
    arrays = _npz_headers(tmp_path / "params.npz")
    assert len(arrays) == len(weights) and all(dtype == "float32" for _, dtype in arrays)
    # the pipeline's transform-params stage may reorder, reshape and transpose the
    # weights (params.npz holds them as the library's main takes them), never drop one
    assert sorted(math.prod(shape) for shape, _ in arrays) == sorted(w.numel() for w in weights)

    assert compiled.kernels, f"{name}: no CUDA kernels were compiled"
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "kernels").iterdir()) == sorted(compiled.kernels)
    for kernel in compiled.kernels:
        assert kernel.startswith("kernels/") and kernel.endswith(".fatbin")
        entries = _fatbin_entries((tmp_path / kernel).read_bytes())
        elves = [payload for kind, arch, payload in entries if kind == FATBIN_ELF and arch == ARCH]
        assert elves and all(_elf_machine(e) == EM_CUDA for e in elves), f"{kernel}: no sm_{ARCH} CUDA ELF in {entries}"
        assert any(kind == FATBIN_PTX and arch == ARCH and payload for kind, arch, payload in entries), f"{kernel}: no PTX"


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", data[:4]
    return struct.unpack_from("<H", data, 18)[0]


def _npz_headers(path: Path) -> list[tuple[tuple[int, ...], str]]:
    """``(shape, dtype)`` of ``p0, p1, ...`` from the .npy headers, without reading the arrays."""
    out = []
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert names == [f"p{i}.npy" for i in range(len(names))], names
        for n in names:
            with z.open(n) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            out.append((tuple(shape), str(dtype)))
    return out


def _fatbin_entries(data: bytes) -> list[tuple[int, int, bytes]]:
    """``(kind, sm version, payload)`` of each entry of a fatbin (1 = PTX, 2 = ELF).

    The container is not documented by NVIDIA; this is the layout nvcc has
    written since CUDA 4 (a 16-byte header: magic, version, header size, size
    of what follows; then entries, each a header: kind u16, version u16,
    header size u32, payload size u64, ..., sm version u32 at byte 28).  PTX
    payloads may be compressed; ELF payloads are plain here.
    """
    magic, _, header_size, body_size = struct.unpack_from("<IHHQ", data, 0)
    assert magic == FATBIN_MAGIC and header_size == 16, f"not a fatbin: {data[:16].hex()}"
    assert header_size + body_size == len(data), (header_size, body_size, len(data))
    entries, offset = [], header_size
    while offset < len(data):
        kind, _, entry_header, payload_size = struct.unpack_from("<HHIQ", data, offset)
        (arch,) = struct.unpack_from("<I", data, offset + 28)
        start = offset + entry_header
        assert kind in (FATBIN_PTX, FATBIN_ELF) and payload_size > 0 and start + payload_size <= len(data), (offset, kind)
        entries.append((kind, arch, data[start : start + payload_size]))
        offset = start + payload_size
    assert entries
    return entries
