"""Human-readable views of a graph: a per-node table and a totals summary.

``format_table`` is what ``cogentc --print-graph`` shows; ``format_summary`` is
the same totals as plain JSON-compatible data for ``--json``.  Byte figures use
binary prefixes (1 KiB = 1024 B); MAC figures use decimal ones (1 GMAC = 1e9).
"""

from __future__ import annotations

from typing import Any

from cogent_compiler.ir.graph import Graph, Node, TensorInfo

__all__ = ["format_bytes", "format_macs", "format_summary", "format_table"]

#: Widest the input-shapes cell may get before it is cut short (a ``cat`` of
#: many tensors would otherwise push every other column off the screen).
_MAX_INPUTS_CELL = 48

_HEADER = ("#", "name", "op", "inputs", "outputs", "dtype", "MACs", "params", "out bytes")
#: Columns holding numbers are right-aligned.
_RIGHT = frozenset({0, 6, 7, 8})


def format_macs(macs: int) -> str:
    """``1_814_000_000`` -> ``"1.81 GMAC"``; three significant digits, decimal prefixes."""
    if macs == 0:
        return "0"
    for scale, unit in ((1e12, "TMAC"), (1e9, "GMAC"), (1e6, "MMAC"), (1e3, "KMAC")):
        if macs >= scale:
            return f"{_three_digits(macs / scale)} {unit}"
    return f"{macs} MAC"


def format_bytes(nbytes: int) -> str:
    """``46_758_048`` -> ``"44.6 MiB"``; three significant digits, binary prefixes."""
    if nbytes < 1024:
        return f"{nbytes} B"
    value = float(nbytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "TiB":
            return f"{_three_digits(value)} {unit}"
    raise AssertionError("unreachable")


def _three_digits(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _shape(t: TensorInfo | None) -> str:
    if t is None:
        return "?"
    return "x".join(str(d) for d in t.shape) if t.shape else "scalar"


def _row(index: int, node: Node, graph: Graph) -> tuple[str, ...]:
    tensors = graph.tensors
    ins = ", ".join(_shape(tensors.get(i)) for i in node.inputs)
    if len(ins) > _MAX_INPUTS_CELL:
        ins = ins[: _MAX_INPUTS_CELL - 3] + "..."
    outs = ", ".join(_shape(t) for t in node.outputs)
    dtypes = ",".join(dict.fromkeys(t.dtype for t in node.outputs)) or "-"
    return (
        str(index),
        node.name,
        node.op,
        ins or "-",
        outs or "-",
        dtypes,
        format_macs(node.macs),
        format_bytes(node.param_bytes) if node.param_bytes else "0",
        format_bytes(node.output_bytes),
    )


def _totals_line(graph: Graph) -> str:
    return (
        f"total: {len(graph.nodes)} nodes, {format_macs(graph.total_macs)}, "
        f"params {format_bytes(graph.total_param_bytes)}, "
        f"input {format_bytes(graph.input_bytes)}, output {format_bytes(graph.output_bytes)}"
    )


def format_table(graph: Graph, *, limit: int | None = None) -> str:
    """Render ``graph`` as a plain-text table, one row per node, then a totals line.

    Columns: index, node name, op kind, input shapes, output shape(s), dtype,
    MACs, parameter bytes, output bytes.  ``limit`` (if given, >= 0) shows only
    the first ``limit`` nodes and says how many were left out; the totals
    always cover the whole graph.  The result has no trailing newline.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    shown = graph.nodes if limit is None else graph.nodes[:limit]
    rows = [_HEADER, *(_row(i, n, graph) for i, n in enumerate(shown))]
    widths = [max(len(r[c]) for r in rows) for c in range(len(_HEADER))]

    def fmt(r: tuple[str, ...]) -> str:
        cells = (r[c].rjust(widths[c]) if c in _RIGHT else r[c].ljust(widths[c]) for c in range(len(r)))
        return "  ".join(cells).rstrip()

    lines = [f"graph {graph.name}: inputs " + ", ".join(f"{t.name} {_shape(t)} {t.dtype}" for t in graph.inputs)]
    lines.append(fmt(rows[0]))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(r) for r in rows[1:])
    hidden = len(graph.nodes) - len(shown)
    if hidden:
        lines.append(f"... {hidden} more node{'s' if hidden != 1 else ''}")
    lines.append(_totals_line(graph))
    return "\n".join(lines)


def format_summary(graph: Graph) -> dict[str, Any]:
    """The totals of ``graph`` as JSON-compatible data (exact integers, plus GMAC and MiB for people)."""
    return {
        "name": graph.name,
        "nodes": len(graph.nodes),
        "macs": graph.total_macs,
        "gmacs": round(graph.total_macs / 1e9, 6),
        "param_bytes": graph.total_param_bytes,
        "param_mib": round(graph.total_param_bytes / 2**20, 6),
        "input_bytes": graph.input_bytes,
        "output_bytes": graph.output_bytes,
        "inputs": [t.to_json() for t in graph.inputs],
        "outputs": [graph.tensors[o].to_json() for o in graph.outputs],
    }
