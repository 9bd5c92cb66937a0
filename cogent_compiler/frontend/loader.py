"""Loading a model from a file, a factory or a live module into one normal form.

Accepted sources (anything else is refused with a one-line ``FrontendError``):

1. ``model.pt2`` saved with ``torch.export.save``;
2. ``package.module:factory`` -- a callable taking no arguments that returns an
   ``nn.Module`` (needs ``input_shape``);
3. a TorchScript archive (``torch.jit.save``; needs ``input_shape``), converted
   to an ``ExportedProgram`` by torch's TorchScript converter;
4. ``model.onnx``;
5. a pickled ``nn.Module`` (``torch.save(model)``) -- only with
   ``trust_pickle=True``, because unpickling runs arbitrary code.

Torch sources become an ``ExportedProgram`` normalised with
``run_decompositions({})`` (functional ATen; ``aten.conv2d``/``aten.linear``
kept); ONNX sources become a checked, shape-inferred ``onnx.ModelProto``.
torch and onnx are imported inside the functions that need them, so importing
this module is cheap.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cogent_compiler.errors import FrontendError

if TYPE_CHECKING:
    import onnx
    import torch

__all__ = ["ACCEPTED_FORMATS", "LoadedModel", "from_module", "load_model", "parse_shape"]

log = logging.getLogger(__name__)

#: The list every "cannot load" message ends with.
ACCEPTED_FORMATS = (
    ".pt2 (torch.export.save), package.module:factory with --input-shape, TorchScript .pt, .onnx, "
    "pickled nn.Module with --trust-pickle"
)

#: Suffixes a torch archive (export, TorchScript or pickle) may carry; the content decides which.
_TORCH_SUFFIXES = frozenset({".pt2", ".pt", ".pth", ".ptl", ".jit", ".ts", ".pkl", ".pickle", ".bin"})
_ONNX_SUFFIXES = frozenset({".onnx"})
_FACTORY = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_PICKLE_PROTO = 0x80
#: Seed of the random example input used to export factories and pickles.
_EXAMPLE_SEED = 0


@dataclass(frozen=True)
class LoadedModel:
    """A model in the frontend's normal form.

    ``program`` is a ``torch.export.ExportedProgram`` (after
    ``run_decompositions({})``) when ``kind == "torch"``, or a shape-inferred
    ``onnx.ModelProto`` when ``kind == "onnx"``.  ``name`` is the file stem or
    the factory's name; ``source`` is what the user gave (path or spec).
    ``module`` is the eager ``nn.Module`` where the source is one (a factory,
    a trusted pickle, ``from_module``): what structured pruning acts on.
    """

    name: str
    kind: Literal["torch", "onnx"]
    program: Any
    source: str
    module: Any = field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``.

    Accepts commas or ``x`` between positive integers, with optional spaces or
    brackets.  Raises ``FrontendError`` for anything else.
    """
    cleaned = str(text).strip().strip("()[]").replace("x", ",").replace("X", ",")
    parts = [p.strip() for p in cleaned.split(",")]
    if parts and parts[-1] == "":
        parts.pop()  # "1,3,224,224," -- a trailing comma is harmless
    if not parts or not all(re.fullmatch(r"\d+", p) for p in parts) or any(int(p) <= 0 for p in parts):
        raise FrontendError(
            f"input shape {text!r} is not understood; write positive integers separated by commas, e.g. 1,3,224,224"
        )
    return tuple(int(p) for p in parts)


def load_model(
    spec: str | Path, *, input_shape: tuple[int, ...] | None = None, trust_pickle: bool = False
) -> LoadedModel:
    """Load ``spec`` (a path or ``package.module:factory``) into a ``LoadedModel``.

    ``input_shape`` is required for factories, TorchScript and pickles (they
    are exported with a seeded float32 random input of that shape); for ONNX
    it fixes dynamic input dimensions; for ``.pt2`` it must match the exported
    input.  ``trust_pickle`` allows formats whose loading runs code stored in
    the file.  Raises ``FrontendError`` (one line, naming ``spec``) on failure.
    """
    spec_s = str(spec)
    if input_shape is not None:
        input_shape = _check_shape(spec_s, input_shape)
    path = Path(spec_s)
    if not path.exists() and _FACTORY.fullmatch(spec_s):
        return _load_factory(spec_s, input_shape)
    if not path.exists():
        raise FrontendError(
            f"{spec_s}: no such file (and not a package.module:factory spec); accepted: {ACCEPTED_FORMATS}"
        )
    if not path.is_file():
        raise FrontendError(f"{spec_s}: is a directory, not a model file; accepted: {ACCEPTED_FORMATS}")
    suffix = path.suffix.lower()
    if suffix in _ONNX_SUFFIXES:
        return _load_onnx(path, input_shape)
    if suffix not in _TORCH_SUFFIXES:
        raise FrontendError(
            f"{spec_s}: unknown model file suffix {path.suffix or '(none)'!r}; accepted: {ACCEPTED_FORMATS}"
        )
    return _load_torch_file(path, input_shape, trust_pickle)


def from_module(module: torch.nn.Module, example_inputs: tuple[Any, ...], name: str | None = None) -> LoadedModel:
    """Export a live ``nn.Module`` (put in eval mode) with ``example_inputs``.

    ``name`` defaults to the module's class name.  Raises ``FrontendError`` if
    ``torch.export`` cannot capture the module.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise FrontendError(f"from_module: expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_inputs, tuple):
        raise FrontendError(
            f"from_module: example_inputs must be a tuple of inputs, got {type(example_inputs).__name__}; "
            "write (x,) for one input"
        )
    label = name or type(module).__name__
    return LoadedModel(label, "torch", _export(label, module, example_inputs), f"<module {type(module).__name__}>", module)


# ---------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------


def _load_factory(spec: str, input_shape: tuple[int, ...] | None) -> LoadedModel:
    import torch

    module_name, _, attr_path = spec.partition(":")
    # like `python -m`, a factory module in the current folder is importable
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or anything the module's top level raises
        raise FrontendError(
            f"{spec}: cannot import module {module_name!r} ({_one_line(e)}); accepted: {ACCEPTED_FORMATS}"
        ) from e
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise FrontendError(
                f"{spec}: module {module_name!r} has no attribute {attr_path!r}; accepted: {ACCEPTED_FORMATS}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise FrontendError(f"{spec}: {attr_path!r} is a {type(obj).__name__}, not a callable factory")
    if input_shape is None:
        raise FrontendError(f"{spec}: a factory needs --input-shape (e.g. --input-shape 1,3,224,224)")
    try:
        model = obj()
    except Exception as e:
        raise FrontendError(f"{spec}: calling the factory {attr_path}() failed: {_one_line(e)}") from e
    if not isinstance(model, torch.nn.Module):
        raise FrontendError(f"{spec}: the factory returned a {type(model).__name__}, expected a torch.nn.Module")
    name = attr_path.rsplit(".", 1)[-1]
    return LoadedModel(name, "torch", _export(spec, model, (_example_input(input_shape),)), spec, model)


def _load_torch_file(path: Path, input_shape: tuple[int, ...] | None, trust_pickle: bool) -> LoadedModel:
    with path.open("rb") as f:
        head = f.read(4)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                kind = _zip_kind(names)
                risks = _pt2_code_risks(zf, names) if kind == "pt2" else []
        except (zipfile.BadZipFile, OSError) as e:
            raise FrontendError(f"{path}: unreadable zip archive ({_one_line(e)}); accepted: {ACCEPTED_FORMATS}") from e
        if kind == "pt2":
            if risks and not trust_pickle:
                raise FrontendError(
                    f"{path}: this torch.export archive holds {risks[0]}, and loading it runs code from the file. "
                    "Pass --trust-pickle if you trust this file, or re-save it with plain tensor weights"
                )
            return _load_pt2(path, input_shape)
        if kind == "torchscript":
            return _load_torchscript(path, input_shape)
        if kind == "pickle":
            return _load_pickle(path, input_shape, trust_pickle)
        raise FrontendError(
            f"{path}: a zip archive that is none of torch.export, TorchScript or torch.save; accepted: {ACCEPTED_FORMATS}"
        )
    if head[:1] == bytes([_PICKLE_PROTO]):
        return _load_pickle(path, input_shape, trust_pickle)
    if not head:
        raise FrontendError(f"{path}: the file is empty; accepted: {ACCEPTED_FORMATS}")
    raise FrontendError(
        f"{path}: not a model file (starts with bytes {head.hex()}, neither a zip archive nor a pickle); "
        f"accepted: {ACCEPTED_FORMATS}"
    )


def _zip_kind(names: list[str]) -> Literal["pt2", "torchscript", "pickle", "unknown"]:
    """Tell torch's zip formats apart by their entries (every entry sits under one root folder)."""
    rel = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in rel or any(r.startswith("models/") for r in rel):
        return "pt2"
    if any(r.startswith("code/") for r in rel):
        return "torchscript"
    if "data.pkl" in rel:
        return "pickle"
    return "unknown"


def _pt2_code_risks(zf: zipfile.ZipFile, names: list[str]) -> list[str]:
    """Describe each part of a ``.pt2`` whose loading would run code (empty when it is data only).

    ``torch.export.load`` unpickles weights saved with ``use_pickle``, custom and
    opaque constants and sample inputs that fail a ``weights_only`` load, and
    dlopens AOTInductor libraries.  A plain ``torch.export.save`` of a module
    has none of these.
    """
    import io

    import torch

    risks: list[str] = []
    for n in names:
        rel = n.split("/", 1)[1] if "/" in n else n
        if rel.startswith("data/aotinductor/"):
            risks.append(f"a compiled AOTInductor library ({n})")
        elif rel.endswith("_config.json") and rel.startswith(("data/weights/", "data/constants/")):
            try:
                config = json.loads(zf.read(n)).get("config", {})
            except (ValueError, AttributeError):
                risks.append(f"an unreadable payload config ({n})")
                continue
            for fqn, meta in config.items():
                path_name = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or path_name.startswith(("custom_obj_", "opaque_obj_")):
                    risks.append(f"a pickled object {fqn!r}")
        elif rel.startswith("data/sample_inputs/") or (rel.startswith("data/constants/") and rel.endswith(".pt")):
            try:
                torch.load(io.BytesIO(zf.read(n)), weights_only=True)
            except Exception:  # noqa: BLE001 -- whatever the safe loader refuses, the unsafe fallback would unpickle
                risks.append(f"a pickled object ({n})")
    if not any((n.split("/", 1)[1] if "/" in n else n) == "archive_format" for n in names):
        risks.append("the legacy export format, which is unpickled")
    return risks


def _load_pt2(path: Path, input_shape: tuple[int, ...] | None) -> LoadedModel:
    import torch

    try:
        with _quiet():
            ep = torch.export.load(str(path))
    except Exception as e:
        raise FrontendError(f"{path}: torch.export.load failed: {_one_line(e)}") from e
    if input_shape is not None:
        shapes = [tuple(v.shape) for v in _user_input_vals(ep)]
        if len(shapes) != 1:
            raise FrontendError(
                f"{path}: --input-shape names one input, but the program has {len(shapes)} inputs; drop --input-shape"
            )
        if shapes[0] != input_shape:
            # a program exported with dynamic dimensions is specialised to the requested shape
            try:
                ep = _reexport_static(ep, (_example_input(input_shape),))
            except Exception as e:
                raise FrontendError(
                    f"{path}: the program was exported for input shape {_fmt_shape(shapes[0])} and cannot run at "
                    f"--input-shape {list(input_shape)} ({_one_line(e)}); re-export it with that shape, or drop --input-shape"
                ) from e
    return LoadedModel(path.stem, "torch", _normalise(str(path), ep), str(path))


def _load_torchscript(path: Path, input_shape: tuple[int, ...] | None) -> LoadedModel:
    import torch

    if input_shape is None:
        raise FrontendError(f"{path}: a TorchScript model needs --input-shape (e.g. --input-shape 1,3,224,224)")
    try:
        with _quiet():
            ts = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise FrontendError(f"{path}: torch.jit.load failed: {_one_line(e)}") from e
    ts.eval()
    args = (_example_input(input_shape),)
    try:
        from torch._export.converter import TS2EPConverter

        with _quiet():
            # the converter exports with every dimension dynamic; specialise to the given shape
            ep = _reexport_static(TS2EPConverter(ts, args).convert(), args)
    except Exception as e:
        raise FrontendError(
            f"{path}: cannot convert this TorchScript model to torch.export ({_one_line(e)}); "
            "export the original nn.Module with torch.export.save instead"
        ) from e
    return LoadedModel(path.stem, "torch", _normalise(str(path), ep), str(path))


def _load_pickle(path: Path, input_shape: tuple[int, ...] | None, trust_pickle: bool) -> LoadedModel:
    import torch

    if not trust_pickle:
        raise FrontendError(
            f"{path}: is a pickled PyTorch object; loading it runs arbitrary code. "
            "Pass --trust-pickle if you trust this file, or save it with torch.export.save (.pt2)"
        )
    if input_shape is None:
        raise FrontendError(f"{path}: a pickled module needs --input-shape (e.g. --input-shape 1,3,224,224)")
    try:
        with _quiet():
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise FrontendError(f"{path}: torch.load failed: {_one_line(e)}") from e
    if not isinstance(obj, torch.nn.Module):
        what = type(obj).__name__
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            what = f"a state_dict ({len(obj)} tensors) with no architecture"
        raise FrontendError(
            f"{path}: holds {what}, not an nn.Module; save the whole model (torch.export.save), or give "
            f"the architecture as package.module:factory and load the weights there; accepted: {ACCEPTED_FORMATS}"
        )
    return LoadedModel(path.stem, "torch", _export(str(path), obj, (_example_input(input_shape),)), str(path), obj)


def _load_onnx(path: Path, input_shape: tuple[int, ...] | None) -> LoadedModel:
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise FrontendError(
            f"{path}: not a readable ONNX protobuf ({_one_line(e)}); accepted: {ACCEPTED_FORMATS}"
        ) from e
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise FrontendError(f"{path}: not a valid ONNX model: {_one_line(e)}") from e
    if input_shape is not None:
        _fix_onnx_input_shape(path, model, input_shape)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    except Exception as e:
        raise FrontendError(f"{path}: ONNX shape inference failed: {_one_line(e)}") from e
    return LoadedModel(path.stem, "onnx", inferred, str(path))


def _fix_onnx_input_shape(path: Path, model: onnx.ModelProto, input_shape: tuple[int, ...]) -> None:
    """Pin the single real input's dimensions to ``input_shape`` (in place), so inference can resolve dynamic dims."""
    inits = {t.name for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    if len(real) != 1:
        raise FrontendError(f"{path}: --input-shape needs a model with one input, this one has {len(real)}")
    dims = real[0].type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise FrontendError(
            f"{path}: input {real[0].name!r} has rank {len(dims)}, but --input-shape {list(input_shape)} has rank "
            f"{len(input_shape)}"
        )
    for i, (d, want) in enumerate(zip(dims, input_shape, strict=True)):
        if d.HasField("dim_value") and d.dim_value != want:
            raise FrontendError(
                f"{path}: input {real[0].name!r} has fixed dimension {i} = {d.dim_value}, but --input-shape says {want}"
            )
        d.dim_value = want
    # stale symbolic annotations would otherwise be merged back over the pinned dims
    del model.graph.value_info[:]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _export(label: str, module: torch.nn.Module, args: tuple[Any, ...]) -> torch.export.ExportedProgram:
    import torch

    module.eval()
    try:
        with _quiet():
            ep = torch.export.export(module, args)
    except Exception as e:
        raise FrontendError(
            f"{label}: torch.export could not capture the model ({_one_line(e)}); make forward() traceable "
            "(no data-dependent Python control flow) or provide an ONNX file"
        ) from e
    return _normalise(label, ep)


def _normalise(label: str, ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    try:
        with _quiet():
            return ep.run_decompositions({})
    except Exception as e:
        raise FrontendError(f"{label}: normalising the exported program failed: {_one_line(e)}") from e


def _reexport_static(ep: torch.export.ExportedProgram, args: tuple[Any, ...]) -> torch.export.ExportedProgram:
    """Export ``ep``'s module again with static shapes taken from ``args``."""
    import torch

    with _quiet():
        return torch.export.export(ep.module(), args)


def _fmt_shape(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _user_input_vals(ep: torch.export.ExportedProgram) -> list[Any]:
    from torch.export.graph_signature import InputKind

    user = {s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT}
    return [n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]


def _example_input(shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    gen = torch.Generator().manual_seed(_EXAMPLE_SEED)
    return torch.rand(shape, generator=gen, dtype=torch.float32)


def _check_shape(spec: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as e:
        raise FrontendError(f"{spec}: input shape {shape!r} is not a tuple of integers") from e
    if not out or any(d <= 0 for d in out):
        raise FrontendError(f"{spec}: input shape {list(out)} must be non-empty with positive dimensions")
    return out


def _one_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, kept short, prefixed with its type."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(text) > 240:
        text = text[:237] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Turn torch's deprecation and export warnings into debug log records instead of stderr noise."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.debug("%s: %s", w.category.__name__, w.message)
