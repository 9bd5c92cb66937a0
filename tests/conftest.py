"""Shared fixtures: small real models, traced and ready."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# tiny_models (tests/frontend) doubles as an importable factory module for the CLI tests
sys.path.insert(0, str(TESTS / "frontend"))
sys.path.insert(0, str(TESTS / "testbed"))  # testbed_support: skip markers shared by the testbed tests
if str(TESTS.parent) not in sys.path:  # benchmarks.models: the benchmark models, shared with the tests
    sys.path.append(str(TESTS.parent))


@pytest.fixture(autouse=True, scope="session")
def _isolated_tunedb(tmp_path_factory):
    """Compiles in tests never read or fill the user's tuning database (subprocesses inherit this)."""
    import os

    os.environ["COGENT_TUNEDB"] = str(tmp_path_factory.mktemp("tunedb"))


@pytest.fixture(scope="session")
def tiny_model():
    """(nn.Module, example input) of a conv-bn-relu + residual + pool + linear net."""
    import torch
    import tiny_models

    torch.manual_seed(0)
    return tiny_models.tiny_cnn(), torch.randn(1, 3, 16, 16)


@pytest.fixture(scope="session")
def tiny_graph(tiny_model):
    from cogent_compiler.frontend import from_module, trace

    model, x = tiny_model
    return trace(from_module(model, (x,), name="tiny_cnn"))


@pytest.fixture
def isolated_python(tmp_path):
    """``(interpreter, env_for)``: a Python that, with ``-S`` and ``env_for(runtime_dir)``,
    sees only numpy and that bundle ``runtime/`` folder — no torch, no TVM compiler."""
    import os

    import numpy as np

    only_numpy = tmp_path / "only-numpy"
    only_numpy.mkdir()
    np_dir = Path(np.__file__).parent
    for name in ("numpy", "numpy.libs"):
        if (np_dir.parent / name).exists():
            (only_numpy / name).symlink_to(np_dir.parent / name)

    def env_for(runtime_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PYTHONPATH"] = f"{runtime_dir}{os.pathsep}{only_numpy}"
        return env

    return getattr(sys, "_base_executable", sys.executable), env_for
