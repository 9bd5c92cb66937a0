"""Lower a (sub)program to an ONNX model that the runtime runs with ONNX Runtime.

The artifact is one self-contained ``model.onnx`` (weights inside, no external
data file).  A torch half is exported from its ``ExportedProgram`` with the
dynamo ONNX exporter (opset as the exporter picks); an ONNX half is saved as
it is.  Inputs and outputs keep the half's order: the runtime feeds inputs and
reads outputs by position, in manifest order.

ONNX Runtime applies to CPU halves of this machine's architecture (``llvm``):
that is the only build the bundle can carry (``bundle.runtime_files``) and the
only place the compiler can measure it.  ``choose_backend`` in
``backends.select`` decides per half whether it is used.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

from cogent_compiler.backends.targets import TargetSpec
from cogent_compiler.backends.tvm_backend import CompiledModule
from cogent_compiler.errors import BackendError

__all__ = ["MODEL_NAME", "compile_onnxruntime", "onnxruntime_applies", "to_onnx"]

log = logging.getLogger(__name__)

MODEL_NAME = "model.onnx"


def onnxruntime_applies(target: TargetSpec) -> str | None:
    """``None`` when ONNX Runtime can run a half for ``target``, else the reason it cannot."""
    host = platform.machine() or "x86_64"
    if target.device != "cpu":
        return (
            f"{target.label}: the bundle runs ONNX Runtime on the CPU only "
            "(a CUDA half would need onnxruntime-gpu in the compiler and the edge image)"
        )
    if target.arch != host:
        return f"{target.label}: ONNX Runtime for {target.arch} cannot be bundled or measured on this {host} machine"
    return None


def to_onnx(program: Any, kind: str, *, name: str = "model") -> Any:
    """The half as an ``onnx.ModelProto`` with its weights inside; inputs and outputs in the half's order."""
    if kind == "onnx":
        return program
    if kind != "torch":
        raise BackendError(f"{name}: cannot export a {kind!r} program to ONNX; expected torch or onnx")
    import torch

    try:
        # verbose=False: from an ExportedProgram the exporter then prints nothing
        onnx_program = torch.onnx.export(program, (), dynamo=True, verbose=False, report=False)
        model = onnx_program.model_proto
    except Exception as e:  # the exporter raises many types; its message says which op failed
        raise BackendError(f"{name}: exporting the torch program to ONNX failed: {_first_line(e)}") from e
    n_inputs = len(program.graph_signature.user_inputs)
    n_outputs = len(program.graph_signature.user_outputs)
    if len(model.graph.input) != n_inputs or len(model.graph.output) != n_outputs:
        raise BackendError(
            f"{name}: the ONNX export has {len(model.graph.input)} inputs and {len(model.graph.output)} outputs, "
            f"the program {n_inputs} and {n_outputs}; compile this half with --backend tvm"
        )
    return model


def compile_onnxruntime(program: Any, kind: str, target: TargetSpec, out_dir: Path, *, name: str = "model") -> CompiledModule:
    """Write ``out_dir/model.onnx`` for ``target``; return it as a ``CompiledModule`` with ``backend="onnxruntime"``.

    Raises ``BackendError`` when ONNX Runtime does not apply to ``target`` (see
    ``onnxruntime_applies``) or the program cannot be exported.
    """
    import onnx

    reason = onnxruntime_applies(target)
    if reason is not None:
        raise BackendError(f"{name}: cannot use ONNX Runtime here — {reason}; use --backend tvm or auto")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = to_onnx(program, kind, name=name)
    path = out_dir / MODEL_NAME
    try:
        onnx.save_model(model, str(path), save_as_external_data=False)
    except ValueError as e:  # protobuf refuses models over 2 GB without external data
        raise BackendError(f"{name}: the ONNX model does not fit in one file ({e}); use --backend tvm") from e
    n_weights = len(model.graph.initializer)
    dt = time.perf_counter() - t0
    log.info("%s: exported %s for ONNX Runtime in %.1fs (%d initializers)", name, path.name, dt, n_weights)
    return CompiledModule(MODEL_NAME, None, n_weights, dt, (), backend="onnxruntime")


def _first_line(e: BaseException) -> str:
    for line in str(e).strip().splitlines():
        if line.strip() and not line.startswith("Traceback"):
            return line.strip()[:300]
    return type(e).__name__
