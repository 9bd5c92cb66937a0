"""Labelled data sets for measuring and recovering a compiled model's accuracy.

``load_data(spec, input_shape, num_classes)`` reads one of three sources —
``digits`` (scikit-learn's offline 8x8 digits), ``imagefolder:DIR`` or
``npz:FILE`` — and ``from_loader`` materialises a torch ``DataLoader``; both
return a :class:`Dataset` whose inputs already have the model's per-sample
shape and input dtype, split into train and validation parts by a seeded
shuffle.  Every bad input raises a one-line :class:`DataError` naming the
problem and the fix.  torch, scikit-learn and PIL are imported only by the
sources that need them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cogent_compiler.errors import DataError

__all__ = ["Dataset", "IMAGE_EXTENSIONS", "load_data", "from_loader"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_SPEC_FORMS = "'digits', 'imagefolder:DIR' or 'npz:FILE'"
_DIGITS_CLASSES = 10
_DIGITS_MAX = 16.0  # load_digits pixels are counts 0..16 of a 4x4 block


@dataclass(frozen=True)
class Dataset:
    """Model-ready inputs and int64 labels, split into train and validation parts.

    ``x_*`` have shape ``(N, *input_shape[1:])`` and the model's input dtype;
    ``y_*`` are int64 in ``[0, num_classes)``.  Both parts are non-empty.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: name, part sizes, classes, per-sample input shape and dtype."""
        return {
            "name": self.name,
            "train_size": int(len(self.y_train)),
            "val_size": int(len(self.y_val)),
            "num_classes": int(self.num_classes),
            "input_shape": [int(d) for d in self.x_train.shape[1:]],
            "dtype": str(self.x_train.dtype),
        }


def load_data(
    spec: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    input_dtype: str = "float32",
    val_fraction: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """Load the data set ``spec`` names, shaped and typed for a model's input.

    ``spec`` is ``digits``, ``imagefolder:DIR`` (``DIR/<class>/<image>``,
    classes sorted by name become labels 0..K-1) or ``npz:FILE`` (arrays ``x``
    of shape ``(N, *input_shape[1:])`` and integer ``y`` of shape ``(N,)``).
    ``input_shape`` is the model's input shape with the batch first (ignored);
    image sources need it to be N,C,H,W with C 1 or 3, and are resized to HxW
    and scaled to [0, 1] for a float ``input_dtype`` or kept as 0..255 pixel
    values for ``uint8``.  The samples are shuffled with ``seed`` and the last
    ``val_fraction`` of them become the validation part.

    Raises DataError for an unknown spec, a missing or unreadable source, a
    shape or label that does not fit the model, or fewer than 2 samples.
    """
    dtype = _check_common(input_shape, num_classes, input_dtype, val_fraction)
    if not isinstance(spec, str):
        raise DataError(f"data spec {spec!r} is not a string; use {_SPEC_FORMS}")
    if spec == "digits":
        x, y = _load_digits(input_shape, num_classes, dtype)
    elif spec.startswith("imagefolder:") and spec[len("imagefolder:"):]:
        x, y = _load_imagefolder(spec, Path(spec[len("imagefolder:"):]), input_shape, num_classes, dtype)
    elif spec.startswith("npz:") and spec[len("npz:"):]:
        x, y = _load_npz(spec, Path(spec[len("npz:"):]), input_shape, num_classes, dtype)
    else:
        raise DataError(f"unknown data spec {spec!r}; use {_SPEC_FORMS}")
    return _split(spec, x, y, num_classes, val_fraction, seed)


def from_loader(
    loader: Iterable[Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    input_dtype: str = "float32",
    val_fraction: float = 0.25,
    seed: int = 0,
    name: str = "dataloader",
) -> Dataset:
    """Materialise a torch DataLoader (or any iterable of ``(x, y)`` batches) into a Dataset.

    Each batch's ``x`` (tensor or array) must have shape ``(B, *input_shape[1:])``
    and its ``y`` shape ``(B,)`` with integer labels in ``[0, num_classes)``;
    ``x`` is cast to ``input_dtype`` as for an npz file, and the samples are
    split as by :func:`load_data`.  Iterates the loader once.

    Raises DataError for a batch that is not an (x, y) pair, batches of
    different shapes, an empty loader or any check ``npz:`` sources get.
    """
    dtype = _check_common(input_shape, num_classes, input_dtype, val_fraction)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for i, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DataError(
                f"{name}: batch {i} is a {type(batch).__name__}, not an (x, y) pair; "
                "make the loader yield (inputs, labels)"
            )
        bx, by = (_to_numpy(v) for v in batch)
        bx, by = np.asarray(bx), np.atleast_1d(np.asarray(by))
        if xs and bx.shape[1:] != xs[0].shape[1:]:
            raise DataError(
                f"{name}: batch {i} has inputs of shape {bx.shape} but batch 0 had {xs[0].shape}; "
                "make every sample the same shape"
            )
        xs.append(bx)
        ys.append(by)
    if not xs:
        raise DataError(f"{name}: the loader yielded no batches; give it a non-empty data set")
    if any(b.ndim != 1 for b in ys):
        bad = next(b for b in ys if b.ndim != 1)
        raise DataError(f"{name}: labels of shape {bad.shape} are not 1-D; yield labels of shape (batch,)")
    try:
        x, y = np.concatenate(xs), np.concatenate(ys)
    except ValueError as e:
        raise DataError(f"{name}: batches cannot be stacked ({e}); make every batch (x, y) of consistent shape") from e
    x, y = _check_arrays(name, x, y, input_shape, num_classes, dtype)
    return _split(name, x, y, num_classes, val_fraction, seed)


# -- checks shared by every source -------------------------------------------


def _check_common(input_shape: tuple[int, ...], num_classes: int, input_dtype: str, val_fraction: float) -> np.dtype:
    """Validate the arguments every source takes; return ``input_dtype`` as a numpy dtype."""
    try:
        shape_ok = len(input_shape) >= 1 and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape
        )
    except TypeError:  # not a sequence at all
        shape_ok = False
    if not shape_ok:
        raise DataError(f"input shape {input_shape!r} is not a tuple of positive sizes; pass the model's input shape, e.g. (1, 3, 32, 32)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DataError(f"num_classes {num_classes!r} is not a positive integer; pass the model's number of outputs")
    if not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"val_fraction {val_fraction!r} is not in (0, 1); use e.g. 0.25")
    try:
        dtype = np.dtype(input_dtype)
    except TypeError as e:
        raise DataError(f"input dtype {input_dtype!r} is not a numpy dtype; use e.g. 'float32' or 'uint8'") from e
    if dtype.kind not in "biuf":
        raise DataError(f"input dtype {input_dtype!r} is not numeric; use e.g. 'float32' or 'uint8'")
    return dtype


def _check_arrays(
    name: str, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...], num_classes: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Check raw inputs and labels against the model; return x cast to ``dtype`` and y as int64."""
    expected = ("N", *(int(d) for d in input_shape[1:]))
    if x.ndim != len(input_shape) or tuple(x.shape[1:]) != tuple(int(d) for d in input_shape[1:]):
        raise DataError(
            f"{name}: inputs have shape {tuple(x.shape)} but the model expects {_fmt_shape(expected)}; "
            "reshape or resize the inputs"
        )
    if x.shape[0] == 0:
        raise DataError(f"{name}: the data set is empty (N == 0); give it at least 2 samples")
    if y.ndim != 1:
        raise DataError(f"{name}: labels have shape {tuple(y.shape)} but must be 1-D of shape ({x.shape[0]},); flatten them")
    if len(y) != len(x):
        raise DataError(f"{name}: {len(x)} inputs but {len(y)} labels; give one label per input")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: inputs have non-numeric dtype {x.dtype}; store them as numbers")
    y = _integer_labels(name, y)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"{name}: labels span {lo}..{hi} but the model has {num_classes} classes; relabel to 0..{num_classes - 1}"
        )
    return _cast_inputs(name, x, dtype), y


def _integer_labels(name: str, y: np.ndarray) -> np.ndarray:
    """Labels as int64; whole-valued floats are accepted, anything else is refused."""
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    example = next((v for v in y.ravel().tolist() if not (isinstance(v, (int, float)) and float(v).is_integer())), None)
    raise DataError(
        f"{name}: labels have dtype {y.dtype} and are not whole class indices (e.g. {example!r}); "
        "store integer labels 0..num_classes-1"
    )


def _cast_inputs(name: str, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast x to the model's input dtype, refusing values the cast would corrupt."""
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{name}: inputs contain NaN or infinity; clean the data")
    if dtype == np.uint8 and x.dtype != np.uint8:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 255:
            raise DataError(
                f"{name}: inputs range {lo:g}..{hi:g} but the model takes uint8 pixels 0..255; "
                "store pixel values 0..255 or use a float model input"
            )
        if x.dtype.kind == "f":
            # truncation would bias every value downwards; round to the nearest pixel value
            x = np.rint(x)
    return np.ascontiguousarray(x.astype(dtype, copy=False))


def _split(
    name: str, x: np.ndarray, y: np.ndarray, num_classes: int, val_fraction: float, seed: int
) -> Dataset:
    """Shuffle with ``seed`` and keep the last ``val_fraction`` (at least one sample) for validation."""
    n = len(x)
    if n < 2:
        raise DataError(f"{name}: {n} sample(s); need at least 2 samples to have both a train and a validation part")
    n_val = min(n - 1, max(1, int(round(n * float(val_fraction)))))
    order = np.random.default_rng(seed).permutation(n)
    train, val = order[: n - n_val], order[n - n_val:]
    log.info("%s: %d train / %d val samples, %d classes", name, len(train), len(val), num_classes)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x[train]),
        y_train=np.ascontiguousarray(y[train]),
        x_val=np.ascontiguousarray(x[val]),
        y_val=np.ascontiguousarray(y[val]),
        num_classes=int(num_classes),
    )


def _fmt_shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _to_numpy(v: Any) -> np.ndarray:
    """A batch element as an array; tensors are detached and moved to the CPU first."""
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


# -- image sources -------------------------------------------------------------


def _image_geometry(name: str, input_shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int, int]:
    """(C, H, W) for an image source; refuse shapes and dtypes images cannot fill."""
    if len(input_shape) != 4:
        raise DataError(
            f"{name}: the model input shape {tuple(input_shape)} is not 4-D N,C,H,W; "
            "image sources need an image model, or use an npz:FILE of ready inputs"
        )
    _, c, h, w = (int(d) for d in input_shape)
    if c not in (1, 3):
        raise DataError(f"{name}: the model takes {c} channels; image sources give 1 (grayscale) or 3 (RGB), use an npz:FILE")
    if dtype.kind != "f" and dtype != np.uint8:
        raise DataError(f"{name}: images cannot be given as {dtype}; use a float or uint8 model input, or an npz:FILE")
    return c, h, w


def _load_digits(input_shape: tuple[int, ...], num_classes: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits resized to HxW, replicated to C channels, scaled for ``dtype``."""
    c, h, w = _image_geometry("digits", input_shape, dtype)
    if num_classes < _DIGITS_CLASSES:
        raise DataError(
            f"digits: the data set has {_DIGITS_CLASSES} classes but the model has {num_classes}; "
            "use a model with 10 outputs or a data set of your own"
        )
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32))[:, None]  # (N, 1, 8, 8), values 0..16
    if (h, w) != images.shape[-2:]:
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
    pixels = images.numpy()
    if c == 3:
        pixels = np.repeat(pixels, 3, axis=1)
    # bilinear weights are convex, so values stay in 0..16; the clip only absorbs rounding error
    if dtype == np.uint8:
        x = np.clip(np.rint(pixels * (255.0 / _DIGITS_MAX)), 0, 255).astype(np.uint8)
    else:
        x = np.clip(pixels / _DIGITS_MAX, 0.0, 1.0).astype(dtype)
    return np.ascontiguousarray(x), np.asarray(bunch.target, dtype=np.int64)


def _load_imagefolder(
    spec: str, root: Path, input_shape: tuple[int, ...], num_classes: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """``root/<class>/<image>`` with classes sorted by name, as model-ready arrays."""
    c, h, w = _image_geometry(spec, input_shape, dtype)
    if not root.exists():
        raise DataError(f"{spec}: directory {root} does not exist; pass DIR/<class name>/<images>")
    if not root.is_dir():
        raise DataError(f"{spec}: {root} is not a directory; pass DIR/<class name>/<images>")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{spec}: no class subdirectories in {root}; put images in {root}/<class name>/")
    if len(classes) > num_classes:
        raise DataError(
            f"{spec}: {len(classes)} class directories but the model has {num_classes} classes; "
            f"remove classes or use a model with {len(classes)} outputs"
        )
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append((f, label))
    if not files:
        raise DataError(
            f"{spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class directories of {root}; add some"
        )
    from PIL import Image, UnidentifiedImageError

    mode = "L" if c == 1 else "RGB"
    x = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError) as e:
            raise DataError(f"{spec}: cannot read image {f} ({type(e).__name__}); remove or replace the file") from e
        x[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    y = np.fromiter((label for _, label in files), dtype=np.int64, count=len(files))
    log.info("%s: %d images in %d classes", spec, len(files), len(classes))
    if dtype == np.uint8:
        return x, y
    return (x.astype(np.float32) / 255.0).astype(dtype), y


# -- array sources ---------------------------------------------------------------


def _load_npz(
    spec: str, path: Path, input_shape: tuple[int, ...], num_classes: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an npz file, checked against the model."""
    if not path.exists():
        raise DataError(f"{spec}: file {path} does not exist; pass an .npz with arrays 'x' and 'y'")
    if not path.is_file():
        raise DataError(f"{spec}: {path} is not a file; pass an .npz with arrays 'x' and 'y'")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{spec}: {path} holds a single array, not an .npz; save it with np.savez(file, x=..., y=...)")
        with loaded as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise DataError(
                    f"{spec}: no array {' or '.join(repr(k) for k in missing)} (found {sorted(npz.files)}); "
                    "save it with np.savez(file, x=inputs, y=labels)"
                )
            x, y = npz["x"], npz["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError) as e:
        # object arrays (refused by allow_pickle=False), truncated and non-zip files all end up here
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{spec}: cannot read {path} as an .npz of plain arrays ({msg}); save it with np.savez(file, x=..., y=...)") from e
    return _check_arrays(spec, x, y, input_shape, num_classes, dtype)
