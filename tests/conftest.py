"""Shared fixtures: small real models, traced and ready."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# tiny_models (tests/frontend) doubles as an importable factory module for the CLI tests
sys.path.insert(0, str(TESTS / "frontend"))
sys.path.insert(0, str(TESTS / "testbed"))  # testbed_support: skip markers shared by the testbed tests


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
