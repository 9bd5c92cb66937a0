"""The bundle manifest: what a half consumes and produces, and the sha256 of every file.

The compiler writes it (``cogent_compiler.bundle``); the runtime reads it and
refuses to start when a file's hash differs.  This module is pure Python so the
runtime can use it without numpy, torch or tvm.

Layout of ``manifest.json`` (format ``cogent-bundle/1``)::

    {
      "format": "cogent-bundle/1",
      "role": "device" | "edge",
      "model": "resnet18",
      "target": {"name": "llvm", "device": "cpu"},     # device: "cpu" | "cuda"
      "module": {"library": "model.so", "params": "params.npz", "entry": "main",
                 "backend": "tvm",                                   # or "onnxruntime"; absent: tvm
                 "kernels": ["kernels/<sha256>.fatbin"]} | null,      # kernels: CUDA only
      "inputs":  [{"name", "shape", "dtype"}],          # what this half's module reads, in order
      "outputs": [{"name", "shape", "dtype"}],          # what it returns, in order
      "send":    ["relu_3"],                            # device only: tensors sent to the edge, in edge-input order
      "encodings": {"relu_3": "float16"},               # sent tensors that cross in another dtype (see below)
      "model_outputs": [{"name", "shape", "dtype"}],    # device only: the model's outputs, in order
      "files": {"model.so": "<sha256>", ...},
      "plan": {...}                                      # the Plan as JSON, for reference
    }

``module`` is ``null`` for an empty half: the edge of a device-only plan, or
the device of an edge-only plan (which sends its inputs unchanged).

``encodings`` lists the sent tensors the plan sends in a narrower dtype than
their own (``ENCODINGS``: float32 as float16): the device casts before
sending, the edge casts back before its module runs.  The device sends the
tensor in its own dtype instead whenever the narrow one cannot hold a value
(float16 overflows above 65504), so the edge accepts either.

``backend`` names the runtime that loads ``library``: ``tvm`` (a Relax VM
shared library whose ``entry`` takes the inputs then the ``params``) or
``onnxruntime`` (``library`` is ``model.onnx`` with the weights inside,
``params`` is ``null``; inputs are fed and outputs read in manifest order).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogent_compiler.errors import RuntimeFailure, TamperedBundleError

__all__ = ["BACKENDS", "ENCODINGS", "FORMAT", "TensorSpec", "ModuleSpec", "Manifest", "sha256_file", "load_manifest"]

FORMAT = "cogent-bundle/1"
#: the runtimes a module can name (``ModuleSpec.backend``)
BACKENDS = ("tvm", "onnxruntime")
MANIFEST_NAME = "manifest.json"
#: the wire dtypes a tensor of a given dtype may be encoded as
ENCODINGS: Mapping[str, tuple[str, ...]] = {"float32": ("float16",)}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class ModuleSpec:
    library: str
    params: str | None
    entry: str = "main"
    #: precompiled GPU kernels (``kernels/<sha256 of the CUDA source>.fatbin``)
    kernels: tuple[str, ...] = ()
    #: the runtime that loads ``library``: one of ``BACKENDS``
    backend: str = "tvm"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"library": self.library, "params": self.params, "entry": self.entry, "backend": self.backend}
        if self.kernels:
            d["kernels"] = list(self.kernels)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModuleSpec:
        backend = str(d.get("backend", "tvm"))
        if backend not in BACKENDS:
            raise ValueError(f"module backend {backend!r} is not one of {', '.join(BACKENDS)}")
        return cls(str(d["library"]), d.get("params"), str(d.get("entry", "main")), tuple(d.get("kernels", ())), backend)


@dataclass(frozen=True)
class Manifest:
    role: str
    model: str
    target: Mapping[str, Any]
    module: ModuleSpec | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    send: tuple[str, ...] = ()
    model_outputs: tuple[TensorSpec, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    plan: Mapping[str, Any] = field(default_factory=dict)
    encodings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dtypes = {t.name: t.dtype for t in self.inputs} if self.role == "edge" else None
        for name, wire in self.encodings.items():
            if self.role == "device" and name not in self.send:
                raise ValueError(f"encoding for {name!r}, which is not sent")
            if dtypes is not None and name not in dtypes:
                raise ValueError(f"encoding for {name!r}, which is not an input of the edge")
            if dtypes is not None and wire not in ENCODINGS.get(dtypes[name], ()):
                raise ValueError(f"{name!r} is {dtypes[name]} and cannot be encoded as {wire!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "role": self.role,
            "model": self.model,
            "target": dict(self.target),
            "module": None if self.module is None else self.module.to_json(),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "send": list(self.send),
            "encodings": dict(sorted(self.encodings.items())),
            "model_outputs": [t.to_json() for t in self.model_outputs],
            "files": dict(sorted(self.files.items())),
            "plan": dict(self.plan),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Manifest:
        mod = d.get("module")
        return cls(
            role=str(d["role"]),
            model=str(d["model"]),
            target=dict(d["target"]),
            module=None if mod is None else ModuleSpec.from_json(mod),
            inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in d["outputs"]),
            send=tuple(d.get("send", ())),
            model_outputs=tuple(TensorSpec.from_json(t) for t in d.get("model_outputs", ())),
            files=dict(d.get("files", {})),
            plan=dict(d.get("plan", {})),
            encodings={str(k): str(v) for k, v in d.get("encodings", {}).items()},
        )

    def write(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")
        return path


def load_manifest(bundle_dir: str | Path, *, role: str | None = None, verify: bool = True) -> Manifest:
    """Read ``bundle_dir/manifest.json`` and, unless ``verify=False``, check every file's sha256.

    Raises ``RuntimeFailure`` for a missing or malformed manifest or the wrong
    role, and ``TamperedBundleError`` when a file is missing or its hash differs.
    """
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise RuntimeFailure(f"{bundle}: no {MANIFEST_NAME} here; pass the device/ or edge/ folder of a bundle written by cogentc")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RuntimeFailure(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); rebuild the bundle with cogentc") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise RuntimeFailure(f"{path}: format is {found!r}, expected {FORMAT!r}; rebuild the bundle with this cogentc")
    try:
        manifest = Manifest.from_json(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise RuntimeFailure(f"{path}: malformed manifest ({e!r}); rebuild the bundle with cogentc") from e
    if role is not None and manifest.role != role:
        raise RuntimeFailure(f"{bundle}: is a {manifest.role} bundle, expected a {role} bundle; pass the {role}/ folder")
    if verify:
        for name, digest in manifest.files.items():
            f = bundle / name
            if not f.is_file():
                raise TamperedBundleError(f"{f}: listed in the manifest but missing; rebuild the bundle with cogentc")
            actual = sha256_file(f)
            if actual != digest:
                raise TamperedBundleError(
                    f"{f}: sha256 {actual[:16]}… does not match the manifest's {digest[:16]}…; "
                    "the artifact was modified — rebuild the bundle with cogentc"
                )
    return manifest
