"""The graph IR and its printer (pure Python: no torch, no tvm)."""

from __future__ import annotations

from cogent_compiler.ir.graph import DTYPE_BYTES, Graph, Node, TensorInfo
from cogent_compiler.ir.printer import format_summary, format_table

__all__ = ["DTYPE_BYTES", "Graph", "Node", "TensorInfo", "format_summary", "format_table"]
