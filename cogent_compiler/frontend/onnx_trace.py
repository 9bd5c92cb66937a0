"""Tracing a shape-inferred ONNX ``ModelProto`` to the graph IR.

Tensor names are the ONNX value names.  Graph inputs are the model's real
inputs (not initializers).  Every ONNX node becomes one IR node (named by
``node.name``, or ``f"{op_type}_{i}"``, made unique), except ``Constant``
nodes: like initializers they hold parameters, not activations, so their bytes
go to ``param_bytes`` of the first node that reads them and they never appear
as tensors of the graph (a split must never send a constant over the link).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import onnx
from onnx import TensorProto, helper, numpy_helper

from cogent_compiler.errors import FrontendError
from cogent_compiler.ir.graph import Graph, Node, TensorInfo

if TYPE_CHECKING:
    from cogent_compiler.frontend.loader import LoadedModel

__all__ = ["ONNX_OP_KINDS", "trace_onnx"]

log = logging.getLogger(__name__)

#: ONNX op_type -> IR op kind, where it is not simply ``op_type.lower()``.
ONNX_OP_KINDS: Mapping[str, str] = {
    "Gemm": "linear",
    "MatMul": "matmul",
    "BatchNormalization": "batch_norm",
    "MaxPool": "max_pool2d",
    "AveragePool": "avg_pool2d",
    "GlobalAveragePool": "adaptive_avg_pool2d",
    "GlobalMaxPool": "adaptive_max_pool2d",
    "Flatten": "reshape",
    "Reshape": "reshape",
    "Concat": "cat",
    "LayerNormalization": "layer_norm",
}

_DTYPES: Mapping[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.INT64: "int64",
    TensorProto.INT32: "int32",
    TensorProto.INT16: "int16",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.BOOL: "bool",
}


def trace_onnx(model: LoadedModel) -> Graph:
    """Build the IR of an ONNX ``LoadedModel``.

    Precondition: ``model.kind == "onnx"`` and ``model.program`` went through
    ``onnx.shape_inference.infer_shapes``.  Result: a verified ``Graph`` with
    ONNX value names as tensor names and ``source`` = the ``ModelProto``.
    Raises ``FrontendError`` naming the tensor whose shape or type is unknown.
    """
    if model.kind != "onnx":
        raise FrontendError(f"{model.source}: trace_onnx got a {model.kind!r} model")
    proto: onnx.ModelProto = model.program
    g = proto.graph
    where = model.source

    types: dict[str, onnx.TypeProto] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        types[vi.name] = vi.type
    #: parameter-like values (initializers, Constant outputs): name -> (shape, bytes)
    params: dict[str, tuple[tuple[int, ...], int]] = {t.name: (tuple(t.dims), _tensor_bytes(t)) for t in g.initializer}
    counted: set[str] = set()

    def info(name: str, role: str) -> TensorInfo:
        tp = types.get(name)
        if tp is None or not tp.HasField("tensor_type"):
            raise FrontendError(
                f"{where}: ONNX tensor {name!r} ({role}) has no inferred type; shape inference could not reach it"
            )
        tt = tp.tensor_type
        if not tt.HasField("shape"):
            raise FrontendError(f"{where}: ONNX tensor {name!r} ({role}) has an unknown rank after shape inference")
        dims = []
        for i, d in enumerate(tt.shape.dim):
            if not d.HasField("dim_value"):
                label = d.dim_param or "?"
                raise FrontendError(
                    f"{where}: ONNX tensor {name!r} ({role}) has unknown dimension {i} ({label!r}) after shape "
                    "inference; pass --input-shape to pin the model's dynamic input dimensions"
                )
            dims.append(int(d.dim_value))
        return TensorInfo(name, tuple(dims), _dtype_name(tt.elem_type))

    def shape_of(name: str) -> tuple[int, ...] | None:
        if name in params:
            return params[name][0]
        tp = types.get(name)
        if tp is None or not tp.tensor_type.HasField("shape"):
            return None
        dims = tp.tensor_type.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            return None
        return tuple(int(d.dim_value) for d in dims)

    inputs = tuple(info(i.name, "graph input") for i in g.input if i.name not in params)
    defined = {t.name for t in inputs}
    used_names: set[str] = set()
    nodes: list[Node] = []
    for idx, n in enumerate(g.node):
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            value = _constant_value(n)
            params[n.output[0]] = (tuple(value.shape), int(value.nbytes)) if value is not None else ((), 0)
            continue
        name = _unique(n.name or f"{n.op_type}_{idx}", used_names)
        reads: list[str] = []
        param_bytes = 0
        for i in n.input:
            if not i:
                continue  # omitted optional input
            if i in params:
                if i not in counted:
                    counted.add(i)
                    param_bytes += params[i][1]
            elif i in defined:
                reads.append(i)
            else:
                raise FrontendError(f"{where}: ONNX node {name!r} reads {i!r}, which nothing produces before it")
        outs = tuple(info(o, f"output of node {name!r}") for o in n.output if o)
        defined.update(t.name for t in outs)
        kind = _op_kind(n, shape_of)
        macs, attrs = _cost(n, kind, outs, shape_of)
        nodes.append(
            Node(
                name=name,
                op=kind,
                target=f"{n.domain + '.' if n.domain else ''}{n.op_type}",
                inputs=tuple(dict.fromkeys(reads)),
                outputs=outs,
                macs=macs,
                param_bytes=param_bytes,
                attrs=attrs,
            )
        )
    outputs = tuple(o.name for o in g.output)
    for o in outputs:
        if o in params:
            raise FrontendError(
                f"{where}: model output {o!r} is a constant; a model that returns a constant cannot be split"
            )
    try:
        return Graph(model.name, inputs, tuple(nodes), outputs, source=proto)
    except Exception as e:
        raise FrontendError(f"{where}: the traced graph is malformed: {e}") from e


def _op_kind(n: onnx.NodeProto, shape_of: Any) -> str:
    if n.op_type in ("Conv", "ConvTranspose"):
        w = shape_of(n.input[1]) if len(n.input) > 1 else None
        dims = len(w) - 2 if w else 2
        return f"conv{dims}d" if n.op_type == "Conv" else f"conv_transpose{dims}d"
    return ONNX_OP_KINDS.get(n.op_type, n.op_type.lower())


def _cost(n: onnx.NodeProto, kind: str, outs: tuple[TensorInfo, ...], shape_of: Any) -> tuple[int, dict[str, Any]]:
    a = {at.name: helper.get_attribute_value(at) for at in n.attribute}
    if n.op_type in ("Conv", "ConvTranspose"):
        x, w = shape_of(n.input[0]), shape_of(n.input[1])
        if x is None or w is None or len(w) < 3:
            return 0, {}
        spatial = len(w) - 2
        kernel = [int(k) for k in a.get("kernel_shape", w[2:])]
        groups = int(a.get("group", 1))
        pads = [int(p) for p in a.get("pads", [0] * (2 * spatial))]
        attrs: dict[str, Any] = {
            "kernel": kernel,
            "stride": [int(s) for s in a.get("strides", [1] * spatial)],
            "padding": pads[:spatial],
            "dilation": [int(d) for d in a.get("dilations", [1] * spatial)],
            "groups": groups,
        }
        if pads[spatial:] != pads[:spatial]:
            attrs["padding_end"] = pads[spatial:]
        auto_pad = a.get("auto_pad", b"NOTSET")
        if auto_pad not in (b"NOTSET", "NOTSET"):
            attrs["auto_pad"] = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if n.op_type == "ConvTranspose":
            attrs["in_channels"] = w[0]
            attrs["out_channels"] = w[1] * groups
            attrs["output_padding"] = [int(p) for p in a.get("output_padding", [0] * spatial)]
            return math.prod(x) * w[1] * math.prod(kernel), attrs
        attrs["in_channels"] = w[1] * groups
        attrs["out_channels"] = w[0]
        return outs[0].numel * w[1] * math.prod(kernel), attrs
    if n.op_type == "Gemm":
        lhs, rhs = shape_of(n.input[0]), shape_of(n.input[1])
        if lhs is None or rhs is None or len(lhs) != 2 or len(rhs) != 2:
            return 0, {}
        k = lhs[0] if a.get("transA", 0) else lhs[1]
        n_out = rhs[0] if a.get("transB", 0) else rhs[1]
        return outs[0].numel * k, {"in_features": k, "out_features": n_out}
    if n.op_type in ("MaxPool", "AveragePool") and "kernel_shape" in a:
        window = [int(k) for k in a["kernel_shape"]]
        pads = [int(p) for p in a.get("pads", [0] * 2 * len(window))]
        return 0, {"kernel": window, "stride": [int(s) for s in a.get("strides", [1] * len(window))], "padding": pads[: len(window)]}
    if n.op_type == "MatMul":
        lhs = shape_of(n.input[0])
        if not lhs:
            return 0, {}
        return outs[0].numel * lhs[-1], {}
    return 0, {}


def _constant_value(n: onnx.NodeProto) -> Any:
    """The value of a ``Constant`` node as a numpy array (``None`` if it is not a dense tensor)."""
    for at in n.attribute:
        if at.name == "value":
            return numpy_helper.to_array(at.t)
        if at.name in ("value_float", "value_int", "value_floats", "value_ints"):
            import numpy as np

            return np.asarray(helper.get_attribute_value(at))
    return None


def _tensor_bytes(t: onnx.TensorProto) -> int:
    count = math.prod(t.dims)
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 4  # an element type numpy cannot hold (string, 4-bit): counted like float32
    return count * itemsize


def _dtype_name(elem_type: int) -> str:
    if elem_type in _DTYPES:
        return _DTYPES[elem_type]
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return TensorProto.DataType.Name(elem_type).lower()


def _unique(name: str, used: set[str]) -> str:
    out, k = name, 1
    while out in used:
        out = f"{name}_{k}"
        k += 1
    used.add(out)
    return out
