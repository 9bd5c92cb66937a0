"""Tracing a torch ``ExportedProgram`` to the graph IR.

The IR is built from ``program.module()`` (the unlifted ``GraphModule``, where
parameters and buffers are ``get_attr`` nodes).  Names are the contract with
the passes that edit the program (split, fold batch norm):

* graph inputs are the ``placeholder`` node names;
* every ``call_function`` node becomes one IR node with the FX node's name;
  its output tensor has that same name -- unless the op returns a tuple or
  list, in which case element ``i`` is the tensor ``f"{node}.{i}"``, and the
  ``operator.getitem`` nodes that pick elements become ``getitem`` IR nodes
  (0 MACs) reading ``f"{src}.{i}"`` and producing their own name;
* ``get_attr`` nodes are not tensors of the graph: their bytes go to
  ``param_bytes`` of the first IR node that reads them (each parameter counted
  once);
* graph outputs are the names of the output node's arguments, flattened.

Nodes that produce nothing (``None``: assertions) are left out; nodes that
produce a Python scalar are left out with a warning (their consumers do not
list them as inputs).
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from cogent_compiler.errors import FrontendError
from cogent_compiler.ir.graph import DTYPE_BYTES, Graph, Node, TensorInfo

if TYPE_CHECKING:
    from cogent_compiler.frontend.loader import LoadedModel

__all__ = ["op_kind", "trace_torch"]

log = logging.getLogger(__name__)

#: ATen op names (no namespace, no overload) -> IR op kind, where they differ.
_KINDS: Mapping[str, str] = {
    "mm": "matmul",
    "bmm": "matmul",
    "matmul": "matmul",
    "addmm": "matmul",
    "baddbmm": "matmul",
    "_native_batch_norm_legit_no_training": "batch_norm",
    "_native_batch_norm_legit": "batch_norm",
    "native_batch_norm": "batch_norm",
    "batch_norm": "batch_norm",
    "_batch_norm_no_update": "batch_norm",
    "_batch_norm_with_update": "batch_norm",
    "max_pool2d_with_indices": "max_pool2d",
    "view": "reshape",
    "_unsafe_view": "reshape",
    "reshape": "reshape",
    "flatten": "reshape",
    "_to_copy": "cast",
    "to": "cast",
}

#: The operand whose last dimension is the contracted one, per matmul-family op.
_MATMUL_LHS: Mapping[str, str] = {
    "mm": "self",
    "bmm": "self",
    "matmul": "self",
    "addmm": "mat1",
    "baddbmm": "batch1",
}

_CONV_FAMILY = frozenset(
    {
        "conv1d",
        "conv2d",
        "conv3d",
        "convolution",
        "_convolution",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
    }
)


def trace_torch(model: LoadedModel) -> Graph:
    """Build the IR of a torch ``LoadedModel``.

    Precondition: ``model.kind == "torch"`` and ``model.program`` is an
    ``ExportedProgram`` with static shapes.  Result: a verified ``Graph`` whose
    tensor names are FX node names of ``model.program.module().graph`` (see
    the module docstring) and whose ``source`` is ``model.program``.  Raises
    ``FrontendError`` naming the node for dynamic shapes or unusable values.
    """
    if model.kind != "torch":
        raise FrontendError(f"{model.source}: trace_torch got a {model.kind!r} model")
    try:
        gm = model.program.module()
    except Exception as e:
        raise FrontendError(f"{model.source}: cannot unlift the exported program: {type(e).__name__}: {e}") from e
    return _Tracer(model, gm).run()


def op_kind(target: Any, args: Sequence[Any] = ()) -> str:
    """The IR op kind of an FX ``call_function`` target (``aten.conv2d.default`` -> ``"conv2d"``).

    ``args`` (FX node args) is only consulted for ``aten.convolution``, whose
    kind depends on its ``transposed`` flag and weight rank.
    """
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        base = target._schema.name.split("::", 1)[-1]
    else:
        base = getattr(target, "__name__", str(target))
    if base.endswith("_") and not base.endswith("__"):
        base = base[:-1]  # in-place variant (relu_, add_): same kind of op
    if base in ("convolution", "_convolution"):
        weight = _val(args[1]) if len(args) > 1 else None
        transposed = bool(args[6]) if len(args) > 6 else False
        dims = weight.dim() - 2 if isinstance(weight, torch.Tensor) else 2
        return f"conv_transpose{dims}d" if transposed else f"conv{dims}d"
    return _KINDS.get(base, base)


class _Tracer:
    """One pass over the unlifted GraphModule, in topological order."""

    def __init__(self, model: LoadedModel, gm: torch.fx.GraphModule) -> None:
        self.model = model
        self.gm = gm
        #: FX node -> the IR tensor names it stands for (one, or one per tuple element).
        self.provides: dict[torch.fx.Node, tuple[str, ...]] = {}
        #: get_attr FX node -> (attribute path, bytes).
        self.params: dict[torch.fx.Node, tuple[str, int]] = {}
        self.counted: set[str] = set()
        self.tuple_nodes: set[torch.fx.Node] = set()

    def run(self) -> Graph:
        inputs: list[TensorInfo] = []
        nodes: list[Node] = []
        outputs: list[str] = []
        for fx in self.gm.graph.nodes:
            if fx.op == "placeholder":
                val = fx.meta.get("val")
                if isinstance(val, torch.Tensor):
                    inputs.append(self._info(fx.name, val, fx))
                    self.provides[fx] = (fx.name,)
                else:
                    log.debug("placeholder %s is not a tensor (%s); not a graph input", fx.name, type(val).__name__)
            elif fx.op == "get_attr":
                self._param(fx)
            elif fx.op == "call_function":
                node = self._call(fx)
                if node is not None:
                    nodes.append(node)
            elif fx.op == "output":
                for arg in _flat_nodes(fx.args):
                    if arg not in self.provides:
                        raise FrontendError(
                            f"{self.model.source}: model output {arg.name!r} is not a computed tensor "
                            f"({arg.op}); a model that returns a parameter or constant cannot be split"
                        )
                    outputs.extend(self.provides[arg])
            else:
                # call_module _guards_fn (export's input guards) and the like compute nothing
                log.debug("skipping %s node %s", fx.op, fx.name)
        try:
            return Graph(self.model.name, tuple(inputs), tuple(nodes), tuple(outputs), source=self.model.program,
                         module=self.model.module)
        except Exception as e:
            raise FrontendError(f"{self.model.source}: the traced graph is malformed: {e}") from e

    # -- node kinds ----------------------------------------------------------
    def _param(self, fx: torch.fx.Node) -> None:
        try:
            value: Any = operator.attrgetter(str(fx.target))(self.gm)
        except AttributeError:
            value = fx.meta.get("val")
        if isinstance(value, torch.Tensor):
            self.params[fx] = (str(fx.target), value.numel() * value.element_size())
        # submodules (higher-order op bodies) and opaque objects carry no parameter bytes here

    def _call(self, fx: torch.fx.Node) -> Node | None:
        val = fx.meta.get("val")
        target = fx.target
        if target is operator.getitem:
            return self._getitem(fx, val)
        if val is None:
            log.debug("node %s (%s) produces nothing; left out", fx.name, _target_name(target))
            return None
        if isinstance(val, (list, tuple)):
            outs = tuple(self._info(f"{fx.name}.{i}", v, fx) for i, v in enumerate(val) if isinstance(v, torch.Tensor))
            self.tuple_nodes.add(fx)
        elif isinstance(val, torch.Tensor):
            outs = (self._info(fx.name, val, fx),)
        else:
            log.warning(
                "%s: node %s (%s) produces a %s, not a tensor; it is left out of the graph",
                self.model.source,
                fx.name,
                _target_name(target),
                type(val).__name__,
            )
            return None
        self.provides[fx] = tuple(t.name for t in outs)
        kind = op_kind(target, fx.args)
        macs, attrs = self._cost(fx, kind, outs)
        weight = _bind(fx).get("weight") if kind in ("conv2d", "linear") else None
        if weight in self.params:  # the layer's module path: what prune groups name (``passes.prune_groups``)
            attrs["module"] = self.params[weight][0].rpartition(".")[0]
        return Node(
            name=fx.name,
            op=kind,
            target=_target_name(target),
            inputs=self._inputs(fx),
            outputs=outs,
            macs=macs,
            param_bytes=self._param_bytes(fx),
            attrs=attrs,
        )

    def _getitem(self, fx: torch.fx.Node, val: Any) -> Node | None:
        src, index = fx.args[0], fx.args[1]
        if (
            not isinstance(val, torch.Tensor)
            or not isinstance(src, torch.fx.Node)
            or src not in self.tuple_nodes
            or not isinstance(index, int)
        ):
            log.debug("getitem %s does not pick a tensor from a traced tuple; left out", fx.name)
            return None
        if index < 0:
            index += len(src.meta["val"])
        picked = f"{src.name}.{index}"
        if picked not in self.provides.get(src, ()):
            raise FrontendError(
                f"{self.model.source}: node {fx.name!r} reads element {index} of {src.name!r}, which is not a tensor"
            )
        out = self._info(fx.name, val, fx)
        self.provides[fx] = (fx.name,)
        return Node(
            name=fx.name,
            op="getitem",
            target="operator.getitem",
            inputs=(picked,),
            outputs=(out,),
            attrs={"index": index},
        )

    # -- edges and costs -----------------------------------------------------
    def _inputs(self, fx: torch.fx.Node) -> tuple[str, ...]:
        names: list[str] = []
        for arg in _flat_nodes((fx.args, fx.kwargs)):
            names.extend(self.provides.get(arg, ()))
        return tuple(dict.fromkeys(names))

    def _param_bytes(self, fx: torch.fx.Node) -> int:
        total = 0
        for arg in _flat_nodes((fx.args, fx.kwargs)):
            if arg in self.params:
                key, nbytes = self.params[arg]
                if key not in self.counted:
                    self.counted.add(key)
                    total += nbytes
        return total

    def _cost(self, fx: torch.fx.Node, kind: str, outs: tuple[TensorInfo, ...]) -> tuple[int, dict[str, Any]]:
        target = fx.target
        base = target._schema.name.split("::", 1)[-1] if isinstance(target, torch._ops.OpOverload) else ""
        if base in _CONV_FAMILY:
            return self._conv_cost(fx, kind, outs)
        if kind in ("max_pool2d", "avg_pool2d"):
            # the window decides the cost: a 3x3 pool reads 2.25x what a 2x2 one does
            bound = _bind(fx)
            window = _expand(bound.get("kernel_size", 1), 2)
            stride = bound.get("stride") or window  # aten's default stride is the window
            return 0, {"kernel": window, "stride": _expand(stride, 2), "padding": _expand(bound.get("padding", 0), 2)}
        if kind == "linear":
            bound = _bind(fx)
            w = _val(bound.get("weight"))
            if not isinstance(w, torch.Tensor) or w.dim() != 2:
                return 0, {}
            in_f, out_f = _int(w.shape[1]), _int(w.shape[0])
            return outs[0].numel * in_f, {"in_features": in_f, "out_features": out_f}
        if kind == "matmul" and base in _MATMUL_LHS:
            lhs = _val(_bind(fx).get(_MATMUL_LHS[base]))
            if not isinstance(lhs, torch.Tensor) or lhs.dim() == 0:
                return 0, {}
            return outs[0].numel * _int(lhs.shape[-1]), {}
        if kind == "scaled_dot_product_attention":
            return self._attention_cost(fx)
        return 0, {}

    def _attention_cost(self, fx: torch.fx.Node) -> tuple[int, dict[str, Any]]:
        """softmax(q kᵀ) v: q is (..., L, E), k (..., S, E), v (..., S, Ev): L·S·E MACs for the scores and L·S·Ev for the sum."""
        bound = _bind(fx)
        q, k, v = (_val(bound.get(n)) for n in ("query", "key", "value"))
        if not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in (q, k, v)):
            return 0, {}
        batch = math.prod(_int(d) for d in q.shape[:-2])
        length, embed, source, value_embed = _int(q.shape[-2]), _int(q.shape[-1]), _int(k.shape[-2]), _int(v.shape[-1])
        heads = _int(q.shape[-3]) if q.dim() >= 3 else 1
        attrs = {"heads": heads, "query_len": length, "key_len": source, "head_dim": embed,
                 "causal": bool(bound.get("is_causal", False)), "masked": bound.get("attn_mask") is not None}
        return batch * length * source * (embed + value_embed), attrs

    def _conv_cost(self, fx: torch.fx.Node, kind: str, outs: tuple[TensorInfo, ...]) -> tuple[int, dict[str, Any]]:
        bound = _bind(fx)
        x, w = _val(bound.get("input")), _val(bound.get("weight"))
        if not isinstance(w, torch.Tensor) or not isinstance(x, torch.Tensor) or w.dim() < 3:
            return 0, {}
        spatial = w.dim() - 2
        kernel = [_int(d) for d in w.shape[2:]]
        groups = int(bound.get("groups", 1) or 1)
        transposed = kind.startswith("conv_transpose")
        attrs: dict[str, Any] = {
            "kernel": kernel,
            "stride": _expand(bound.get("stride", 1), spatial),
            "padding": _expand(bound.get("padding", 0), spatial),
            "dilation": _expand(bound.get("dilation", 1), spatial),
            "groups": groups,
        }
        if transposed:
            attrs["output_padding"] = _expand(bound.get("output_padding", 0), spatial)
            attrs["in_channels"] = _int(w.shape[0])
            attrs["out_channels"] = _int(w.shape[1]) * groups
            # every input element is scattered through a (Cout/groups) x kernel window
            macs = math.prod(_int(d) for d in x.shape) * _int(w.shape[1]) * math.prod(kernel)
        else:
            attrs["in_channels"] = _int(w.shape[1]) * groups
            attrs["out_channels"] = _int(w.shape[0])
            macs = outs[0].numel * _int(w.shape[1]) * math.prod(kernel)
        return macs, attrs

    def _info(self, name: str, val: torch.Tensor, fx: torch.fx.Node) -> TensorInfo:
        shape = []
        for d in val.shape:
            if not isinstance(d, int):
                raise FrontendError(
                    f"{self.model.source}: tensor {name!r} has a dynamic dimension ({d}); "
                    "export with static shapes (no dynamic_shapes) or pass --input-shape"
                )
            shape.append(d)
        dtype = str(val.dtype).removeprefix("torch.")
        if dtype not in DTYPE_BYTES:
            log.debug("tensor %s of node %s has dtype %s, counted as 4 bytes per element", name, fx.name, dtype)
        return TensorInfo(name, tuple(shape), dtype)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _flat_nodes(obj: Any) -> Iterator[torch.fx.Node]:
    """Every FX node inside nested args/kwargs, in order."""
    if isinstance(obj, torch.fx.Node):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flat_nodes(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flat_nodes(o)


def _bind(fx: torch.fx.Node) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled in (OpOverload targets only)."""
    target = fx.target
    if not isinstance(target, torch._ops.OpOverload):
        return {}
    out: dict[str, Any] = {}
    for i, arg in enumerate(target._schema.arguments):
        if i < len(fx.args) and not arg.kwarg_only:
            out[arg.name] = fx.args[i]
        elif arg.name in fx.kwargs:
            out[arg.name] = fx.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _val(arg: Any) -> Any:
    return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg


def _int(d: Any) -> int:
    if not isinstance(d, int):
        raise FrontendError(f"dynamic dimension {d} where a static one is needed; export with static shapes")
    return d


def _expand(value: Any, n: int) -> list[int] | str:
    """A conv hyper-parameter as a list of ``n`` ints (``padding`` may be the string ``"same"``/``"valid"``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        items = [int(v) for v in value]
        return items * n if len(items) == 1 else items
    return [int(value)] * n


def _target_name(target: Any) -> str:
    if target is operator.getitem:
        return "operator.getitem"
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)
    return f"{module.removeprefix('_')}.{name}" if module else name
