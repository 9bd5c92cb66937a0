"""Loading every accepted model format, and refusing everything else with a one-line error."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from cogent_compiler.errors import FrontendError
from cogent_compiler.frontend import (
    LoadedModel,
    from_module,
    load_model,
    parse_shape,
    trace,
)

HERE = Path(__file__).resolve().parent
SHAPE = (1, 3, 16, 16)
#: stem 3->8 3x3 + conv_a 8->8 3x3 + conv_b 8->8 3x3 groups=2 at 16x16, plus fc 8->10.
TINY_MACS = 16 * 16 * 8 * (3 * 9) + 16 * 16 * 8 * (8 * 9) + 16 * 16 * 8 * (4 * 9) + 8 * 10


@pytest.fixture(autouse=True)
def _tiny_models_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture
def tiny() -> torch.nn.Module:
    import tiny_models

    return tiny_models.tiny_cnn()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def reference_macs(tiny: torch.nn.Module, x: torch.Tensor) -> int:
    g = trace(from_module(tiny, (x,)))
    assert g.total_macs == TINY_MACS
    return g.total_macs


def _assert_one_line(err: pytest.ExceptionInfo[FrontendError], *fragments: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------
# accepted formats
# ---------------------------------------------------------------------------


def test_pt2(tmp_path: Path, tiny: torch.nn.Module, x: torch.Tensor, reference_macs: int) -> None:
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(tiny, (x,)), str(path))
    lm = load_model(str(path))
    assert (lm.name, lm.kind, lm.source) == ("tiny", "torch", str(path))
    assert isinstance(lm.program, torch.export.ExportedProgram)
    assert trace(lm).total_macs == reference_macs
    # the shape, when given, must agree with the exported one
    assert load_model(path, input_shape=SHAPE).name == "tiny"
    with pytest.raises(FrontendError) as err:
        load_model(path, input_shape=(1, 3, 32, 32))
    _assert_one_line(err, str(path), "[1, 3, 32, 32]")


def test_pt2_dynamic_shapes_are_pinned_by_input_shape(tmp_path: Path, tiny: torch.nn.Module, x: torch.Tensor) -> None:
    path = tmp_path / "dyn.pt2"
    side = torch.export.Dim("side", min=8, max=64)
    torch.export.save(torch.export.export(tiny, (x,), dynamic_shapes=({2: side, 3: side},)), str(path))
    with pytest.raises(FrontendError) as err:
        trace(load_model(path))
    _assert_one_line(err, str(path), "dynamic dimension", "--input-shape")
    g = trace(load_model(path, input_shape=(1, 3, 32, 32)))
    assert g.inputs[0].shape == (1, 3, 32, 32)
    assert g.total_macs == 4 * (TINY_MACS - 80) + 80  # convs scale with the area, the head does not


def test_pt2_with_native_code_needs_trust(tmp_path: Path, tiny: torch.nn.Module, x: torch.Tensor) -> None:
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(tiny, (x,)), str(clean))
    path = tmp_path / "aoti.pt2"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            dst.writestr(item.filename.replace("clean/", "aoti/", 1), src.read(item))
        dst.writestr("aoti/data/aotinductor/model/model.so", b"\x7fELF not really")
    with pytest.raises(FrontendError) as err:
        load_model(path)
    _assert_one_line(err, str(path), "AOTInductor", "--trust-pickle")


def test_factory(reference_macs: int) -> None:
    lm = load_model("tiny_models:tiny_cnn", input_shape=SHAPE)
    assert (lm.name, lm.kind, lm.source) == ("tiny_cnn", "torch", "tiny_models:tiny_cnn")
    g = trace(lm)
    assert g.total_macs == reference_macs
    assert g.inputs[0].shape == SHAPE


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path: Path, tiny: torch.nn.Module, x: torch.Tensor, reference_macs: int, how: str) -> None:
    ts = torch.jit.script(tiny) if how == "script" else torch.jit.trace(tiny, (x,))
    path = tmp_path / f"tiny_{how}.pt"
    torch.jit.save(ts, str(path))
    lm = load_model(path, input_shape=SHAPE)
    assert (lm.name, lm.kind) == (f"tiny_{how}", "torch")
    assert trace(lm).total_macs == reference_macs


def test_onnx_from_torch_exporter(tmp_path: Path, tiny: torch.nn.Module, x: torch.Tensor, reference_macs: int) -> None:
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny, (x,), str(path), dynamo=True, verbose=False)
    lm = load_model(path)
    assert (lm.name, lm.kind) == ("tiny", "onnx")
    g = trace(lm)
    assert g.total_macs == reference_macs
    assert g.source is lm.program


def test_pickled_module_with_trust(tmp_path: Path, tiny: torch.nn.Module, reference_macs: int) -> None:
    path = tmp_path / "whole.pt"
    torch.save(tiny, str(path))
    lm = load_model(path, input_shape=SHAPE, trust_pickle=True)
    assert (lm.name, lm.kind) == ("whole", "torch")
    assert trace(lm).total_macs == reference_macs


def test_from_module_name_and_errors(tiny: torch.nn.Module, x: torch.Tensor) -> None:
    assert from_module(tiny, (x,)).name == "TinyCNN"
    assert from_module(tiny, (x,), name="t").name == "t"
    with pytest.raises(FrontendError, match="tuple"):
        from_module(tiny, x)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# pickles are refused unless trusted, without running them
# ---------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates (opens for writing) the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_refused_without_trust_and_not_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    if writer == "torch.save":
        torch.save(_Payload(marker), str(path))
        assert zipfile.is_zipfile(path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    with pytest.raises(FrontendError) as err:
        load_model(path, input_shape=SHAPE)
    _assert_one_line(err, str(path), "pickled", "--trust-pickle", ".pt2")
    assert not marker.exists(), "the pickle was executed"


def test_trusted_payload_runs_then_is_rejected(tmp_path: Path) -> None:
    # the same payload with trust_pickle=True does run, which shows the test above is meaningful
    marker = tmp_path / "ran"
    path = tmp_path / "payload.pt"
    torch.save(_Payload(marker), str(path))
    with pytest.raises(FrontendError) as err:
        load_model(path, input_shape=SHAPE, trust_pickle=True)
    _assert_one_line(err, str(path), "not an nn.Module")
    assert marker.exists()


def test_state_dict_with_trust(tmp_path: Path, tiny: torch.nn.Module) -> None:
    path = tmp_path / "weights.pth"
    torch.save(tiny.state_dict(), str(path))
    with pytest.raises(FrontendError) as err:
        load_model(path, input_shape=SHAPE, trust_pickle=True)
    _assert_one_line(err, str(path), "state_dict", "factory")


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt2"
    with pytest.raises(FrontendError) as err:
        load_model(path)
    _assert_one_line(err, str(path), "no such file", ".onnx")


@pytest.mark.parametrize(
    ("name", "content", "expect"),
    [
        ("model.txt", b"hello", "unknown model file suffix"),
        ("model", b"hello", "unknown model file suffix"),
        ("garbage.pt", b"\x00\x01garbage bytes", "not a model file"),
        ("empty.pt2", b"", "empty"),
        ("garbage.onnx", b"\xff\xfe\xfd not protobuf at all", "ONNX"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: bytes, expect: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FrontendError) as err:
        load_model(path, input_shape=SHAPE)
    _assert_one_line(err, str(path), expect)


def test_zip_that_is_no_torch_format(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("other/readme.txt", "hi")
    with pytest.raises(FrontendError) as err:
        load_model(path, input_shape=SHAPE)
    _assert_one_line(err, str(path), "zip")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(FrontendError) as err:
        load_model(tmp_path)
    _assert_one_line(err, str(tmp_path), "directory")


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("no_such_package_xyz:make", "cannot import"),
        ("tiny_models:missing", "no attribute"),
        ("tiny_models:NOT_CALLABLE", "not a callable"),
        ("tiny_models:not_a_module", "expected a torch.nn.Module"),
        ("tiny_models:broken_factory", "weights missing"),
    ],
)
def test_bad_factories(spec: str, expect: str) -> None:
    with pytest.raises(FrontendError) as err:
        load_model(spec, input_shape=SHAPE)
    _assert_one_line(err, spec, expect)


def test_missing_input_shape(tmp_path: Path, tiny: torch.nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(FrontendError) as err:
        load_model("tiny_models:tiny_cnn")
    _assert_one_line(err, "tiny_models:tiny_cnn", "--input-shape")
    ts = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.trace(tiny, (x,)), str(ts))
    with pytest.raises(FrontendError) as err:
        load_model(ts)
    _assert_one_line(err, str(ts), "--input-shape")
    pk = tmp_path / "pk.pt"
    torch.save(tiny, str(pk))
    with pytest.raises(FrontendError) as err:
        load_model(pk, trust_pickle=True)
    _assert_one_line(err, str(pk), "--input-shape")


def test_unexportable_factory_is_wrapped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "dyn_models.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x * 2 if x.sum().item() > 0 else x\n"
        "def make():\n"
        "    return M()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FrontendError) as err:
        load_model("dyn_models:make", input_shape=(2, 2))
    _assert_one_line(err, "dyn_models:make", "torch.export")


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("1,3,224,224", (1, 3, 224, 224)),
        (" 1, 3 ,8,8 ", (1, 3, 8, 8)),
        ("1x3x8x8", (1, 3, 8, 8)),
        ("(2,5)", (2, 5)),
        ("7", (7,)),
    ],
)
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1,,3", "a,b", "1,-3", "1,0,3", "1.5,2"])
def test_parse_shape_rejects(text: str) -> None:
    with pytest.raises(FrontendError) as err:
        parse_shape(text)
    _assert_one_line(err, repr(text))


def test_loaded_model_is_frozen(tiny: torch.nn.Module, x: torch.Tensor) -> None:
    lm = from_module(tiny, (x,))
    assert isinstance(lm, LoadedModel)
    with pytest.raises(AttributeError):
        lm.name = "other"  # type: ignore[misc]
