"""The runtime stays slim: no torch, no TVM compiler, no compiler packages of cogent_compiler."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import cogent_compiler.runtime as runtime_pkg

if TYPE_CHECKING:
    from conftest import Bundles, EdgeProcess

RUNTIME_DIR = Path(runtime_pkg.__file__).parent
ALLOWED_TOP = {
    "__future__",
    "argparse",
    "asyncio",
    "collections",
    "dataclasses",
    "hashlib",
    "importlib",
    "json",
    "logging",
    "os",
    "pathlib",
    "selectors",
    "signal",
    "socket",
    "statistics",
    "struct",
    "sys",
    "threading",
    "time",
    "types",
    "typing",
    "numpy",
    "tvm",
    "onnxruntime",  # where a half runs on ONNX Runtime (imported only then)
    "tvm_ffi",  # the TVM runtime's FFI layer (registers the CUDA kernel callback)
}


def test_runtime_sources_import_only_numpy_tvm_runtime_and_themselves() -> None:
    for path in sorted(RUNTIME_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("cogent_compiler"):
                    assert name == "cogent_compiler.errors" or name.startswith("cogent_compiler.runtime"), (path, name)
                else:
                    assert name.split(".")[0] in ALLOWED_TOP, (path, name)
                    assert not name.startswith("tvm.relax") and not name.startswith("tvm.driver"), (path, name)


CHECK = textwrap.dedent(
    """
    import sys, json
    import numpy as np
    from cogent_compiler.runtime.device import DeviceClient
    client = DeviceClient(sys.argv[1])
    client.connect("127.0.0.1", int(sys.argv[2]))
    out = client.infer([np.load(sys.argv[3])])["logits"]
    maps = open("/proc/self/maps").read()
    print(json.dumps({
        "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
        "compiler_mapped": "libtvm_compiler" in maps,
        "runtime_mapped": "libtvm_runtime" in maps,
        "cogent": sorted(m for m in sys.modules if m.startswith("cogent_compiler")),
        "logits": out.tolist(),
    }))
    """
)


def test_device_process_loads_neither_torch_nor_the_tvm_compiler(
    bundles: Bundles, edge_server: EdgeProcess, run_env: dict[str, str], tmp_path: Path
) -> None:
    import json

    import numpy as np

    np.save(tmp_path / "x.npy", bundles.x)
    r = subprocess.run(
        [sys.executable, "-c", CHECK, str(bundles.device()), str(edge_server.port), str(tmp_path / "x.npy")],
        check=False,
        capture_output=True,
        text=True,
        env=run_env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    np.testing.assert_allclose(np.array(report["logits"]), bundles.logits, rtol=1e-4, atol=1e-4)
    assert report["torch"] == []
    assert report["runtime_mapped"] and not report["compiler_mapped"]
    assert all(
        m == "cogent_compiler" or m == "cogent_compiler.errors" or m.startswith("cogent_compiler.runtime")
        for m in report["cogent"]
    ), report["cogent"]


def test_edge_process_maps_neither_torch_nor_the_tvm_compiler(edge_server: EdgeProcess) -> None:
    maps = Path(f"/proc/{edge_server.proc.pid}/maps").read_text()
    assert "libtvm_runtime" in maps
    assert "libtvm_compiler" not in maps
    assert "libtorch" not in maps


def test_importing_the_runtime_package_does_not_import_tvm(run_env: dict[str, str]) -> None:
    code = (
        "import sys, cogent_compiler.runtime, cogent_compiler.runtime.protocol, cogent_compiler.runtime.device, "
        "cogent_compiler.runtime.edge; print(sorted(m for m in ('tvm', 'tvm_ffi', 'torch') if m in sys.modules))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=run_env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
