"""Frontends: load a model (torch or ONNX) and trace it to the graph IR.

``load_model`` / ``from_module`` give a ``LoadedModel``; ``trace`` turns it into
a ``Graph``.  torch and onnx are imported only when a model of that kind is
loaded or traced; tvm never.
"""

from __future__ import annotations

from cogent_compiler.errors import FrontendError
from cogent_compiler.frontend.loader import (
    ACCEPTED_FORMATS,
    LoadedModel,
    from_module,
    load_model,
    parse_shape,
)
from cogent_compiler.ir.graph import Graph

__all__ = ["ACCEPTED_FORMATS", "LoadedModel", "from_module", "load_model", "parse_shape", "trace"]


def trace(model: LoadedModel) -> Graph:
    """Trace a loaded model to a verified ``Graph`` (dispatching on ``model.kind``).

    See ``frontend.torch_trace`` and ``frontend.onnx_trace`` for the naming
    contract between the IR and ``model.program``.
    """
    if model.kind == "torch":
        from cogent_compiler.frontend.torch_trace import trace_torch

        return trace_torch(model)
    if model.kind == "onnx":
        from cogent_compiler.frontend.onnx_trace import trace_onnx

        return trace_onnx(model)
    raise FrontendError(f"{model.source}: unknown model kind {model.kind!r}; expected 'torch' or 'onnx'")
