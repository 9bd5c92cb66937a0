"""Tracing to the IR: known totals of real models, the naming contract, op kinds and the printer."""

from __future__ import annotations

import json
import operator
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

from cogent_compiler.errors import FrontendError
from cogent_compiler.frontend import LoadedModel, from_module, load_model, trace
from cogent_compiler.ir import Graph, format_summary, format_table

#: torchvision's documented GFLOPS at 224x224 (they are multiply-accumulates).
KNOWN_GMACS = {
    "resnet18": 1.814,
    "mobilenet_v2": 0.301,
    "vgg16": 15.47,
    "alexnet": 0.714,
    "googlenet": 1.50,
}
#: How the printer's totals line shows each model's MACs.
SHOWN_MACS = {
    "resnet18": "1.81 GMAC",
    "mobilenet_v2": "301 MMAC",
    "vgg16": "15.5 GMAC",
    "alexnet": "714 MMAC",
    "googlenet": "1.50 GMAC",
}


def _build(name: str) -> torch.nn.Module:
    extra = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, **extra).eval()


def _used_state_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and the floating-point buffers (BN running stats) the forward pass reads.

    ``num_batches_tracked`` is an int64 buffer that inference never reads, so
    the exported program does not use it.
    """
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers() if b.is_floating_point())
    return params + buffers


@pytest.fixture(scope="module")
def resnet18_graph() -> Graph:
    return trace(from_module(_build("resnet18"), (torch.randn(1, 3, 224, 224),), name="resnet18"))


@pytest.fixture(scope="module", params=sorted(KNOWN_GMACS))
def torchvision_case(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, Graph]:
    name = request.param
    model = _build(name)
    graph = trace(from_module(model, (torch.randn(1, 3, 224, 224),), name=name))
    return name, model, graph


def test_known_totals(torchvision_case: tuple[str, torch.nn.Module, Graph]) -> None:
    name, model, g = torchvision_case
    assert g.total_macs / 1e9 == pytest.approx(KNOWN_GMACS[name], rel=0.02)
    assert g.total_param_bytes == _used_state_bytes(model)
    g.verify()
    assert [g.tensors[o].shape for o in g.outputs] == [(1, 1000)]
    assert g.inputs[0].shape == (1, 3, 224, 224) and g.inputs[0].dtype == "float32"
    assert g.input_bytes == 3 * 224 * 224 * 4


def test_names_follow_the_fx_graph(torchvision_case: tuple[str, torch.nn.Module, Graph]) -> None:
    _, _, g = torchvision_case
    ep = g.source
    assert isinstance(ep, torch.export.ExportedProgram)
    fx = ep.module().graph
    placeholders = [n.name for n in fx.nodes if n.op == "placeholder"]
    calls = {n.name: n for n in fx.nodes if n.op == "call_function"}
    assert [t.name for t in g.inputs] == placeholders
    assert [n.name for n in g.nodes] == list(calls)
    output_node = next(n for n in fx.nodes if n.op == "output")
    assert list(g.outputs) == [a.name for a in torch.fx.node.map_arg(output_node.args, lambda n: n)[0]]
    for node in g.nodes:
        fx_node = calls[node.name]
        if isinstance(fx_node.meta["val"], torch.Tensor):
            assert [t.name for t in node.outputs] == [node.name]
        else:
            assert all(t.name.startswith(f"{node.name}.") for t in node.outputs)
        if fx_node.target is operator.getitem:
            src, index = fx_node.args
            assert node.op == "getitem" and node.inputs == (f"{src.name}.{index}",) and node.macs == 0
        else:
            read = [a.name for a in fx_node.all_input_nodes if a.op != "get_attr"]
            assert set(node.inputs) == set(read)


def test_printer_table(torchvision_case: tuple[str, torch.nn.Module, Graph]) -> None:
    name, _, g = torchvision_case
    table = format_table(g)
    for node in g.nodes:
        assert node.name in table
    totals = table.splitlines()[-1]
    assert totals.startswith(f"total: {len(g.nodes)} nodes, ")
    assert f" {SHOWN_MACS[name]}, " in totals
    summary = format_summary(g)
    assert summary["macs"] == g.total_macs and summary["nodes"] == len(g.nodes)
    assert json.loads(json.dumps(summary)) == summary


def test_resnet18_printer_figures(resnet18_graph: Graph) -> None:
    g = resnet18_graph
    totals = format_table(g).splitlines()[-1]
    assert "1.81 GMAC" in totals and "params 44.6 MiB" in totals and "input 588 KiB" in totals
    limited = format_table(g, limit=5)
    assert f"... {len(g.nodes) - 5} more nodes" in limited
    assert g.nodes[4].name in limited and g.nodes[5].name not in limited.split()
    assert limited.splitlines()[-1] == totals


def test_conv_and_linear_attrs(tiny_graph: Graph) -> None:
    convs = [n for n in tiny_graph.nodes if n.op == "conv2d"]
    assert [c.attrs["groups"] for c in convs] == [1, 1, 2]
    stem = convs[0]
    assert stem.attrs == {
        "kernel": [3, 3],
        "stride": [1, 1],
        "padding": [1, 1],
        "dilation": [1, 1],
        "groups": 1,
        "in_channels": 3,
        "out_channels": 8,
        "module": "stem",  # the layer's module path: prune groups name their IR nodes by it
    }
    assert stem.macs == 16 * 16 * 8 * 3 * 9
    assert stem.param_bytes == 8 * 3 * 9 * 4  # no bias
    (fc,) = [n for n in tiny_graph.nodes if n.op == "linear"]
    assert fc.attrs == {"in_features": 8, "out_features": 10, "module": "fc"}
    assert fc.macs == 80 and fc.param_bytes == (80 + 10) * 4
    ops = {n.op for n in tiny_graph.nodes}
    assert {
        "conv2d",
        "batch_norm",
        "getitem",
        "relu",
        "add",
        "max_pool2d",
        "adaptive_avg_pool2d",
        "reshape",
        "linear",
    } <= ops
    bn = next(n for n in tiny_graph.nodes if n.op == "batch_norm")
    assert bn.param_bytes == 4 * 8 * 4  # weight, bias, running mean, running var
    json.dumps([dict(n.attrs) for n in tiny_graph.nodes])


class _MatmulNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)
        self.up = torch.nn.ConvTranspose2d(4, 2, 3, stride=2)

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.proj(x)  # (2, 5, 16): linear on a 3-D input
        scores = torch.matmul(q, x.transpose(1, 2))  # (2, 5, 5), K = 16
        return torch.bmm(scores, x), self.up(img)  # (2, 5, 16), K = 5


def test_matmul_linear_and_transposed_conv_macs() -> None:
    g = trace(from_module(_MatmulNet(), (torch.randn(2, 5, 16), torch.randn(1, 4, 8, 8))))
    by_op: dict[str, list[int]] = {}
    for n in g.nodes:
        by_op.setdefault(n.op, []).append(n.macs)
    assert sum(by_op["linear"]) == 2 * 5 * 16 * 16
    assert sorted(by_op["matmul"]) == sorted([2 * 5 * 5 * 16, 2 * 5 * 16 * 5])
    (up,) = [n for n in g.nodes if n.op.startswith("conv_transpose")]
    assert up.op == "conv_transpose2d"
    assert up.macs == 4 * 8 * 8 * 2 * 9
    assert up.attrs["in_channels"] == 4 and up.attrs["out_channels"] == 2 and up.attrs["stride"] == [2, 2]
    assert len(g.outputs) == 2 and [t.name for t in g.inputs] == ["x", "img"]


def test_attention_is_one_op_with_its_macs() -> None:
    from tiny_models import tiny_vit

    g = trace(from_module(tiny_vit(), (torch.randn(1, 3, 32, 32),)))
    ops = {n.op for n in g.nodes}
    assert {"layer_norm", "linear", "gelu", "scaled_dot_product_attention"} <= ops
    attention = [n for n in g.nodes if n.op == "scaled_dot_product_attention"]
    assert len(attention) == 2  # one per block
    # 4 heads of 16 features over 17 tokens (16 patches and the class token): q kᵀ and the weighted sum of v
    assert [n.macs for n in attention] == [4 * 17 * 17 * (16 + 16)] * 2
    assert attention[0].attrs == {"heads": 4, "query_len": 17, "key_len": 17, "head_dim": 16, "causal": False, "masked": False}
    # the token-wise linear layers count every token
    qkv = max((n for n in g.nodes if n.op == "linear"), key=lambda n: n.attrs["out_features"])
    assert qkv.macs == 17 * 64 * qkv.attrs["out_features"]


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------


def test_onnx_resnet18_matches_torch(tmp_path: Path, resnet18_graph: Graph) -> None:
    torch_graph = resnet18_graph
    path = tmp_path / "resnet18.onnx"
    torch.onnx.export(_build("resnet18"), (torch.randn(1, 3, 224, 224),), str(path), dynamo=True, verbose=False)
    g = trace(load_model(path))
    assert g.total_macs == torch_graph.total_macs
    assert g.tensors[g.outputs[0]].shape == (1, 1000)
    convs = [n for n in g.nodes if n.op == "conv2d"]
    assert len(convs) == 20 and convs[0].attrs["stride"] == [2, 2] and convs[0].attrs["kernel"] == [7, 7]
    table = format_table(g)
    assert all(n.name in table for n in g.nodes)
    assert isinstance(g.source, onnx.ModelProto)


def _handmade_onnx(batch: int | str) -> onnx.ModelProto:
    """Conv(3->4, 3x3, pad 1) -> BN -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->2), with a Constant."""
    rng = torch.Generator().manual_seed(0)

    def init(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array(torch.rand(shape, generator=rng).numpy(), name)

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["bn"]),  # no name: gets one
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc", transB=1),
        helper.make_node(
            "Constant", [], ["half"], name="half_const", value=numpy_helper.from_array(torch.tensor([0.5]).numpy())
        ),
        helper.make_node("Mul", ["g", "half"], ["y"], name="scale"),
    ]
    graph = helper.make_graph(
        nodes,
        "handmade",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
        [
            init("w", 4, 3, 3, 3),
            init("b", 4),
            init("s", 4),
            init("o", 4),
            init("m", 4),
            init("v", 4),
            init("fw", 2, 4),
            init("fb", 2),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_handmade(tmp_path: Path) -> None:
    path = tmp_path / "hand.onnx"
    onnx.save(_handmade_onnx(1), str(path))
    g = trace(load_model(path))
    assert [n.op for n in g.nodes] == [
        "conv2d",
        "batch_norm",
        "relu",
        "adaptive_avg_pool2d",
        "reshape",
        "linear",
        "mul",
    ]
    assert [n.name for n in g.nodes][:2] == ["conv", "BatchNormalization_1"]
    assert g.total_macs == 8 * 8 * 4 * 3 * 9 + 2 * 4
    # initializers and the Constant are parameters, counted once, on their first reader
    assert g.total_param_bytes == 4 * (108 + 4 + 4 * 4 + 8 + 2 + 1)
    assert g.node("scale").param_bytes == 4 and g.node("scale").inputs == ("g",)
    assert g.node("fc").attrs == {"in_features": 4, "out_features": 2}
    assert "half" not in g.tensors and [t.name for t in g.inputs] == ["x"]


def test_onnx_dynamic_batch_needs_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "dyn.onnx"
    onnx.save(_handmade_onnx("N"), str(path))
    with pytest.raises(FrontendError) as err:
        trace(load_model(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "'x'" in msg and "--input-shape" in msg
    g = trace(load_model(path, input_shape=(2, 3, 8, 8)))
    assert g.tensors["y"].shape == (2, 2)
    assert g.total_macs == 2 * (8 * 8 * 4 * 3 * 9 + 2 * 4)
    with pytest.raises(FrontendError, match="rank"):
        load_model(path, input_shape=(2, 3, 8))


def test_trace_rejects_wrong_kind() -> None:
    with pytest.raises(FrontendError):
        trace(LoadedModel("m", "tflite", object(), "m.tflite"))  # type: ignore[arg-type]
