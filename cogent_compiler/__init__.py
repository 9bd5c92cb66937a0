"""Cogent: a compiler for collaborative device-edge DNN inference.

The flat API is loaded lazily (PEP 562) so that ``import cogent_compiler`` stays
cheap and the slim runtime (``cogent_compiler.runtime``) never pulls in torch
or the TVM compiler.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "CogentError": "cogent_compiler.errors",
    "Graph": "cogent_compiler.ir",
    "Node": "cogent_compiler.ir",
    "TensorInfo": "cogent_compiler.ir",
    "load_model": "cogent_compiler.frontend",
    "trace": "cogent_compiler.frontend",
    "Pass": "cogent_compiler.passes",
    "PassContext": "cogent_compiler.passes",
    "PassManager": "cogent_compiler.passes",
    "Plan": "cogent_compiler.policy",
    "plan": "cogent_compiler.policy",
    "compile": "cogent_compiler.driver",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cogent_compiler' has no attribute {name!r}")
