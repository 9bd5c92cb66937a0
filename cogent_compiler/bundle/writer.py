"""Write a bundle: ``device/`` and ``edge/`` container build contexts, ``compose.yaml``.

Each half's folder holds the compiled artifact and parameters (written there
by the backend), the slim runtime under ``runtime/``, a ``Dockerfile`` whose
base image is a build ``ARG``, and ``manifest.json`` with the sha256 of every
file the runtime loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cogent_compiler.backends.targets import TargetSpec
from cogent_compiler.bundle.runtime_files import stage_runtime
from cogent_compiler.errors import BundleError
from cogent_compiler.ir import TensorInfo
from cogent_compiler.runtime.manifest import BACKENDS, Manifest, ModuleSpec, TensorSpec, sha256_file
from cogent_compiler.runtime.protocol import DEFAULT_PORT

__all__ = ["write_half", "write_compose", "EDGE_PORT", "DEFAULT_BASE_IMAGE"]

EDGE_PORT = DEFAULT_PORT
DEFAULT_BASE_IMAGE = "python:3.11-slim"

_DOCKERFILE = """\
# Built by cogentc: the {role} half of {model} for {target}.
# The base image must provide Python {py} (the runtime's native parts are built for it).
ARG BASE_IMAGE={base}
FROM ${{BASE_IMAGE}}
ENV PYTHONPATH=/opt/cogent/runtime \\
    PYTHONDONTWRITEBYTECODE=1 \\
    TVM_USE_RUNTIME_LIB=1
# numpy is the runtime's only third-party Python package; torch and the TVM compiler are never installed.
RUN python3 -c "import numpy" 2>/dev/null || python3 -m pip install --no-cache-dir "numpy>=1.26,<3"
COPY runtime/ /opt/cogent/runtime/
COPY {files} /opt/cogent/bundle/{kernels_copy}
{tail}"""

_EDGE_TAIL = """EXPOSE {port}
ENTRYPOINT ["python3", "-m", "cogent_compiler.runtime.edge", "serve", "/opt/cogent/bundle", "--host", "0.0.0.0", "--port", "{port}"]
"""

_DEVICE_TAIL = """ENTRYPOINT ["python3", "-m", "cogent_compiler.runtime.device", "run", "/opt/cogent/bundle"]
CMD ["--edge", "edge:{port}", "--input", "/data/input.npy", "--output", "/data/output.npy"]
"""


def _specs(infos: Sequence[TensorInfo]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, t.shape, t.dtype) for t in infos)


def write_half(
    folder: Path,
    *,
    role: str,
    model: str,
    target: TargetSpec,
    library: str | None,
    params: str | None,
    kernels: Sequence[str] = (),
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    plan: Mapping[str, Any],
    send: Sequence[str] = (),
    model_outputs: Sequence[TensorInfo] = (),
    base_image: str = DEFAULT_BASE_IMAGE,
    backend: str = "tvm",
    encodings: Mapping[str, str] | None = None,
) -> Manifest:
    """Finish one half's build context in ``folder`` (which already holds the artifact, if any).

    ``backend`` is the runtime that loads ``library`` (``tvm`` or
    ``onnxruntime``, see ``runtime.manifest``); only that runtime is staged.
    """
    import sys

    if backend not in BACKENDS:
        raise BundleError(f"{folder}: backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage_runtime(
        folder / "runtime", arch=target.arch, device=target.device,
        with_tvm=library is not None and backend == "tvm",
        with_onnxruntime=library is not None and backend == "onnxruntime",
    )
    artifact_files = [f for f in (library, params) if f] + list(kernels)
    manifest = Manifest(
        role=role,
        model=model,
        target=target.to_json(),
        module=ModuleSpec(library, params, kernels=tuple(kernels), backend=backend) if library else None,
        inputs=_specs(inputs),
        outputs=_specs(outputs),
        send=tuple(send),
        model_outputs=_specs(model_outputs),
        files={f: sha256_file(folder / f) for f in artifact_files},
        plan=dict(plan),
        encodings=dict(encodings or {}),
    )
    manifest.write(folder)
    tail = (_EDGE_TAIL if role == "edge" else _DEVICE_TAIL).format(port=EDGE_PORT)
    (folder / "Dockerfile").write_text(
        _DOCKERFILE.format(
            role=role,
            model=model,
            target=target.label,
            py=f"{sys.version_info.major}.{sys.version_info.minor}",
            base=base_image,
            files=" ".join(["manifest.json", *(f for f in artifact_files if "/" not in f)]),
            kernels_copy="\nCOPY kernels/ /opt/cogent/bundle/kernels/" if kernels else "",
            tail=tail,
        )
    )
    return manifest


def write_compose(out: Path, *, model: str, edge_device: str, base_image: str = DEFAULT_BASE_IMAGE) -> Path:
    """``compose.yaml`` wiring the device container to the edge container by service name."""
    gpu = ""
    if edge_device == "cuda":
        gpu = (
            "    deploy:\n      resources:\n        reservations:\n"
            "          devices:\n            - driver: nvidia\n              count: 1\n              capabilities: [gpu]\n"
        )
    text = f"""\
# Built by cogentc for {model}. `docker compose up --build` (or podman-compose) runs both halves;
# put the input at ./data/input.npy, the output appears at ./data/output.npy.
services:
  edge:
    build:
      context: ./edge
      args:
        BASE_IMAGE: {base_image}
    expose:
      - "{EDGE_PORT}"
{gpu}  device:
    build:
      context: ./device
      args:
        BASE_IMAGE: {base_image}
    depends_on:
      - edge
    command: ["--edge", "edge:{EDGE_PORT}", "--input", "/data/input.npy", "--output", "/data/output.npy"]
    volumes:
      - ./data:/data
"""
    path = Path(out) / "compose.yaml"
    path.write_text(text)
    return path
