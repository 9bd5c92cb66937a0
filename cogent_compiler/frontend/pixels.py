"""Image models that take the camera's uint8 pixels: normalisation becomes part of the graph.

A vision model usually expects ``(pixels / 255 - mean) / std`` in float32,
computed by the application before inference.  ``with_pixel_input`` moves
that step into the model: the new model takes the original uint8 pixels
(same shape, values 0..255) and begins with a cast and a per-channel affine
map.  The planner then sees the input as what it is -- one byte per value --
so an edge-only plan, or any cut that sends the input, sends a quarter of the
bytes of the float32 tensor, and the normalisation runs on whichever side the
plan puts it.

``--input-pixels imagenet`` (torchvision's mean and std), ``unit`` (just
``/ 255``) or ``MEAN/STD`` with one value per channel (``0.5,0.5,0.5/0.25,0.25,0.25``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cogent_compiler.errors import FrontendError
from cogent_compiler.frontend.loader import LoadedModel

__all__ = ["PixelNorm", "parse_pixels", "with_pixel_input"]

#: torchvision's ImageNet normalisation.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class PixelNorm:
    """``x = (pixels / 255 - mean[c]) / std[c]`` for channel ``c`` (axis 1, NCHW)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    spec: str = ""

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise FrontendError(f"--input-pixels {self.spec!r}: give as many std values as mean values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise FrontendError(f"--input-pixels {self.spec!r}: every std must be positive")

    def scale_shift(self, channels: int) -> tuple[list[float], list[float]]:
        """Per-channel ``scale``, ``shift`` with ``x = pixels * scale + shift`` (one mean/std broadcasts to every channel)."""
        mean, std = self.mean, self.std
        if len(mean) == 1:
            mean, std = mean * channels, std * channels
        if len(mean) != channels:
            raise FrontendError(
                f"--input-pixels {self.spec!r} gives {len(mean)} channel values, but the model's input has {channels} channels "
                "(axis 1 of NCHW); give one value per channel"
            )
        return [1.0 / (255.0 * s) for s in std], [-m / s for m, s in zip(mean, std)]


def parse_pixels(text: str) -> PixelNorm:
    """``imagenet``, ``unit`` or ``MEAN/STD`` (comma-separated per channel) -> ``PixelNorm``."""
    spec = text.strip()
    if spec == "imagenet":
        return PixelNorm(*_IMAGENET, spec=spec)
    if spec == "unit":
        return PixelNorm((0.0,), (1.0,), spec=spec)
    mean_text, sep, std_text = spec.partition("/")
    try:
        if not sep:
            raise ValueError
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise FrontendError(
            f"--input-pixels {text!r}: expected imagenet, unit or MEAN/STD such as 0.5,0.5,0.5/0.25,0.25,0.25"
        ) from None
    return PixelNorm(mean, std, spec=spec)


def with_pixel_input(model: LoadedModel, norm: PixelNorm) -> LoadedModel:
    """``model`` taking uint8 pixels of its input's shape, normalised by ``norm`` as its first ops.

    The model must have one 4-D (NCHW) float input.  Raises ``FrontendError``
    otherwise, or when ``norm`` does not match the channel count.
    """
    if model.kind == "torch":
        return _torch(model, norm)
    return _onnx(model, norm)


def _check_input(label: str, shape: tuple[Any, ...], dtype: str) -> int:
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape):
        raise FrontendError(f"{label}: --input-pixels needs one static NCHW image input, the model's is {list(shape)}; "
                            "give --input-shape N,C,H,W or drop --input-pixels")
    if not dtype.startswith("float"):
        raise FrontendError(f"{label}: the model's input is {dtype} already, not a float image; drop --input-pixels")
    return int(shape[1])


def _torch(model: LoadedModel, norm: PixelNorm) -> LoadedModel:
    import torch

    from cogent_compiler.frontend.loader import _normalise, _one_line, _quiet, _user_input_vals

    vals = _user_input_vals(model.program)
    if len(vals) != 1:
        raise FrontendError(f"{model.source}: --input-pixels needs a model with one input, this one has {len(vals)}")
    shape = tuple(int(d) for d in vals[0].shape)
    channels = _check_input(model.source, shape, str(vals[0].dtype).removeprefix("torch."))
    scale, shift = norm.scale_shift(channels)
    inner = model.module if model.module is not None else model.program.module()

    class PixelInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = inner
            self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).reshape(1, -1, 1, 1))
            self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).reshape(1, -1, 1, 1))

        def forward(self, pixels: torch.Tensor) -> Any:
            return self.model(pixels.to(torch.float32) * self.scale + self.shift)

    wrapper = PixelInput()
    example = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    try:  # the exported module cannot be put in eval mode (torch refuses); it is in the mode it was exported in
        with _quiet():
            ep = torch.export.export(wrapper, (example,))
    except Exception as e:
        raise FrontendError(f"{model.source}: exporting the model with a pixel input failed ({_one_line(e)})") from e
    eager = wrapper if model.module is not None else None  # an eager model stays prunable
    return LoadedModel(model.name, "torch", _normalise(model.source, ep), model.source, eager)


def _onnx(model: LoadedModel, norm: PixelNorm) -> LoadedModel:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto: onnx.ModelProto = model.program
    inits = {i.name for i in proto.graph.initializer}
    real = [i for i in proto.graph.input if i.name not in inits]
    if len(real) != 1:
        raise FrontendError(f"{model.source}: --input-pixels needs a model with one input, this one has {len(real)}")
    inp = real[0]
    tt = inp.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim)
    channels = _check_input(model.source, shape, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name)
    scale, shift = norm.scale_shift(channels)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    pixels = f"{inp.name}_pixels"
    for i in g.input:
        if i.name == inp.name:
            i.name = pixels
            i.type.tensor_type.elem_type = TensorProto.UINT8
    ns = f"{inp.name}_pixelnorm"
    g.initializer.extend([
        numpy_helper.from_array(np.asarray(scale, np.float32).reshape(1, -1, 1, 1), f"{ns}_scale"),
        numpy_helper.from_array(np.asarray(shift, np.float32).reshape(1, -1, 1, 1), f"{ns}_shift"),
    ])
    nodes = [
        helper.make_node("Cast", [pixels], [f"{ns}_float"], to=tt.elem_type, name=f"{ns}_cast"),
        helper.make_node("Mul", [f"{ns}_float", f"{ns}_scale"], [f"{ns}_scaled"], name=f"{ns}_mul"),
        helper.make_node("Add", [f"{ns}_scaled", f"{ns}_shift"], [inp.name], name=f"{ns}_add"),
    ]
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    try:
        out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
        onnx.checker.check_model(out)
    except Exception as e:  # onnx raises several types; the model was fine before, so this is ours to explain
        raise FrontendError(f"{model.source}: adding the pixel input failed ({type(e).__name__}: {e})") from e
    return LoadedModel(model.name, "onnx", out, model.source)
