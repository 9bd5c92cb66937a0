"""Run one half of a bundle (device head or edge tail) with the TVM runtime or ONNX Runtime.

``Half.load`` reads the manifest (checking every file's sha256), loads the
module once — a compiled relax executable and its parameters, or an ONNX
model in an ONNX Runtime session, as the manifest's ``backend`` says — and
warms it up; ``Half.run`` checks the inputs against the manifest and returns
numpy arrays.

Only numpy, the TVM *runtime* and, for ``onnxruntime`` modules, ONNX Runtime
are used, each imported lazily when a module needs it: tvm with
``TVM_USE_RUNTIME_LIB=1``, so the 260 MB compiler library is never mapped, and
the protocol module stays usable where neither is installed.

Threads: both backends use ``runtime_threads()`` — ``TVM_NUM_THREADS``, else
``OMP_NUM_THREADS``, else TVM's own default (half the hardware threads on
x86-64, all of them elsewhere, at least one).  That is the count TVM's thread
pool picks by itself, so a TVM half and an ONNX Runtime half on the same
machine run with the same parallelism, and the compiler measures both with it
when it chooses between them.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from cogent_compiler.errors import RuntimeFailure
from cogent_compiler.runtime.manifest import Manifest, TensorSpec, load_manifest

__all__ = ["Half", "import_onnxruntime", "import_tvm_runtime", "onnxruntime_session", "runtime_threads", "serve_precompiled_kernels"]

log = logging.getLogger(__name__)


def serve_precompiled_kernels(bundle: Path, kernels: tuple[str, ...]) -> Callable[..., bytes]:
    """Answer TVM's request to compile CUDA source with the bundle's precompiled fatbin.

    TVM stores CUDA kernels as source and asks the global function
    ``tvm_callback_cuda_compile`` for binary code when the module is loaded.
    The compiler already built a fatbin per source (named by the source's
    sha256), so the edge needs neither nvcc nor NVRTC.  Returns the callback.
    """
    import tvm_ffi

    table = {Path(k).stem: Path(bundle) / k for k in kernels}

    def compile_from_bundle(code: str, *_: object) -> bytes:
        digest = hashlib.sha256(code.encode()).hexdigest()
        path = table.get(digest)
        if path is None:
            raise RuntimeFailure(
                f"{bundle}: TVM asked for a CUDA kernel (source sha256 {digest[:16]}…) the bundle did not precompile; "
                "rebuild the bundle with cogentc for this GPU"
            )
        return path.read_bytes()

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_from_bundle, override=True)
    return compile_from_bundle


def import_tvm_runtime() -> ModuleType:
    """Import tvm in runtime-only mode (``TVM_USE_RUNTIME_LIB=1``) and return it.

    If tvm is already imported (e.g. by the compiler in the same process) that
    module is returned as is.  Raises ``RuntimeFailure`` when tvm is missing.
    """
    if "tvm" in sys.modules:
        importlib.import_module("tvm.runtime.vm")
        return sys.modules["tvm"]
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    # tvm_ffi imports torch eagerly when it is installed (~1 s and a large
    # shared library) although the runtime never needs it.  Hide torch during
    # the import unless this process already loaded it, then unhide it so a
    # later `import torch` by the user still works.
    hide_torch = "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        tvm = importlib.import_module("tvm")
        importlib.import_module("tvm.runtime.vm")
    except ImportError as e:
        raise RuntimeFailure(
            f"cannot import the TVM runtime ({e}); install apache-tvm (the runtime needs only its libtvm_runtime.so)"
        ) from e
    finally:
        if hide_torch and "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return tvm


def runtime_threads(environ: Mapping[str, str] | None = None) -> int:
    """The number of threads a half runs with (see the module doc); at least 1.

    Raises ``RuntimeFailure`` when ``TVM_NUM_THREADS``/``OMP_NUM_THREADS`` is set but not a positive integer.
    """
    env = os.environ if environ is None else environ
    for key in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = env.get(key)
        if value is not None and value.strip():
            try:
                n = int(value)
            except ValueError:
                n = 0
            if n < 1:
                raise RuntimeFailure(f"{key}={value!r} is not a positive integer; set it to the number of threads to use, e.g. {key}=2")
            return n
    cores = os.cpu_count() or 1
    if os.uname().machine in ("x86_64", "AMD64"):
        cores //= 2  # TVM's rule: ignore hyper-threading
    return max(cores, 1)


def import_onnxruntime() -> ModuleType:
    """Import ONNX Runtime (only bundles whose modules use it need it); ``RuntimeFailure`` when missing."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise RuntimeFailure(
            f"cannot import onnxruntime ({e}); the bundle's module runs on ONNX Runtime — "
            "use the runtime/ folder the bundle carries, or pip install onnxruntime"
        ) from e


def onnxruntime_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session for ``path`` using ``threads`` intra-op threads.

    One inter-op thread and sequential execution: a half is one inference at a
    time, and the thread count must match what the compiler measured.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _device(tvm: ModuleType, target: Any) -> Any:
    kind = str(target.get("device", "cpu")) if isinstance(target, dict) else "cpu"
    if kind == "cpu":
        return tvm.cpu(0)
    if kind == "cuda":
        dev = tvm.cuda(0)
        if not dev.exist:
            raise RuntimeFailure(
                "the bundle targets cuda but no CUDA device is visible; run it on a GPU host "
                "(containers need --gpus / the NVIDIA runtime) or rebuild for an llvm target"
            )
        return dev
    raise RuntimeFailure(f"manifest target device {kind!r} is not supported; expected 'cpu' or 'cuda'")


def _load_params(path: Path) -> list[np.ndarray]:
    """Load ``p0, p1, ...`` from an ``.npz`` in call order."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            order = sorted(keys, key=lambda k: int(k[1:]) if k[:1] == "p" and k[1:].isdigit() else -1)
            if order != [f"p{i}" for i in range(len(keys))]:
                raise RuntimeFailure(
                    f"{path}: parameter keys {sorted(keys)[:5]}… are not p0..p{len(keys) - 1}; rebuild the bundle with cogentc"
                )
            return [z[k] for k in order]
    except (OSError, ValueError) as e:
        raise RuntimeFailure(f"{path}: cannot read parameters ({e}); rebuild the bundle with cogentc") from e


def _native(array: np.ndarray) -> np.ndarray:
    """Return ``array`` C-contiguous in native byte order (a copy only when needed)."""
    a = np.asarray(array)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
    return a if a.flags.c_contiguous else a.copy(order="C")


def _to_numpy(result: Any) -> list[np.ndarray]:
    """Flatten a VM result (a Tensor or a possibly nested Array of Tensors) to numpy arrays."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out: list[np.ndarray] = []
    for item in result:
        out.extend(_to_numpy(item))
    return out


@dataclass
class Half:
    """One loaded half of a bundle, ready to run.

    Build it with ``Half.load``.  ``run`` may be called from several threads:
    a lock serialises calls because a TVM VM is not thread-safe (and each call
    already uses ``threads`` threads).
    """

    manifest: Manifest
    bundle_dir: Path
    load_seconds: float = 0.0
    _vm: Any = None
    _entry: Any = None
    _params: list[Any] = field(default_factory=list)
    _dev: Any = None
    _tvm: ModuleType | None = None
    _session: Any = None
    _session_inputs: list[str] = field(default_factory=list)
    #: CPU threads the module runs with (``runtime_threads()``); 0 for an empty or a GPU half
    threads: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, bundle_dir: str | Path, role: str | None = None, verify: bool = True, *, warmup: bool = True) -> Half:
        """Load the half in ``bundle_dir``.

        Preconditions: ``bundle_dir`` holds a ``manifest.json`` (of ``role`` when
        given).  With ``verify`` every file's sha256 is checked first
        (``TamperedBundleError`` on mismatch).  With ``warmup`` the module runs
        once on zeros so that the first real request is not slower.  Raises
        ``RuntimeFailure`` for any bundle or library problem.
        """
        start = time.perf_counter()
        bundle = Path(bundle_dir)
        manifest = load_manifest(bundle, role=role, verify=verify)
        half = cls(manifest=manifest, bundle_dir=bundle)
        if manifest.module is not None and manifest.module.backend == "onnxruntime":
            half._load_onnxruntime()
        elif manifest.module is not None:
            tvm = import_tvm_runtime()
            half._tvm = tvm
            half._dev = _device(tvm, dict(manifest.target))
            lib_path = bundle / manifest.module.library
            if not lib_path.is_file():
                raise RuntimeFailure(f"{lib_path}: module library missing; rebuild the bundle with cogentc")
            if manifest.module.kernels:
                serve_precompiled_kernels(bundle, manifest.module.kernels)
            try:
                lib = tvm.runtime.load_module(str(lib_path))
                half._vm = tvm.runtime.vm.VirtualMachine(lib, half._dev)
                half._entry = half._vm[manifest.module.entry]
            except Exception as e:  # TVM raises its own error types (TVMError, AttributeError, ...)
                raise RuntimeFailure(
                    f"{lib_path}: cannot load entry {manifest.module.entry!r} with the TVM runtime "
                    f"({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}); "
                    "was it compiled for this machine's architecture and a compatible TVM version?"
                ) from e
            if manifest.module.params is not None:
                params = _load_params(bundle / manifest.module.params)
                half._params = [tvm.runtime.tensor(_native(p), half._dev) for p in params]
            if str(manifest.target.get("device", "cpu")) == "cpu":
                half.threads = int(tvm.runtime.num_threads())
        half.load_seconds = time.perf_counter() - start
        log.info(
            "loaded %s half of %s from %s in %.3f s (%s)",
            manifest.role,
            manifest.model,
            bundle,
            half.load_seconds,
            "empty"
            if manifest.module is None
            else f"onnxruntime, {half.threads} threads"
            if manifest.module.backend == "onnxruntime"
            else f"tvm, {len(half._params)} params on {manifest.target.get('device', 'cpu')}",
        )
        if warmup and manifest.module is not None:
            t0 = time.perf_counter()
            half.run([np.zeros(s.shape, dtype=s.dtype) for s in manifest.inputs])
            log.info("warm-up run took %.3f ms", (time.perf_counter() - t0) * 1e3)
        return half

    def _load_onnxruntime(self) -> None:
        module = self.manifest.module
        assert module is not None
        if str(self.manifest.target.get("device", "cpu")) != "cpu":
            raise RuntimeFailure(
                f"{self.bundle_dir}: an onnxruntime module for device {self.manifest.target.get('device')!r}; "
                "this runtime runs ONNX Runtime on the CPU only — rebuild the bundle with --backend tvm"
            )
        path = self.bundle_dir / module.library
        if not path.is_file():
            raise RuntimeFailure(f"{path}: ONNX model missing; rebuild the bundle with cogentc")
        self.threads = runtime_threads()
        try:
            self._session = onnxruntime_session(path, self.threads)
        except RuntimeFailure:
            raise
        except Exception as e:  # onnxruntime raises its own pybind error types
            raise RuntimeFailure(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {_last_line(e)}); rebuild the bundle with cogentc") from e
        self._session_inputs = [i.name for i in self._session.get_inputs()]
        n_out = len(self._session.get_outputs())
        if len(self._session_inputs) != len(self.manifest.inputs) or n_out != len(self.manifest.outputs):
            raise RuntimeFailure(
                f"{path}: the ONNX model has {len(self._session_inputs)} inputs and {n_out} outputs, the manifest lists "
                f"{len(self.manifest.inputs)} and {len(self.manifest.outputs)}; rebuild the bundle with cogentc"
            )

    @property
    def is_empty(self) -> bool:
        """True when the half has no module and passes its inputs through."""
        return self.manifest.module is None

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def output_names(self) -> list[str]:
        """Names of what ``run`` returns, in order (the inputs' names for an empty half without outputs)."""
        if self.is_empty and len(self.manifest.outputs) != len(self.manifest.inputs):
            return [s.name for s in self.manifest.inputs]
        return [s.name for s in self.manifest.outputs]

    def check_inputs(self, inputs: Sequence[np.ndarray]) -> None:
        """Raise ``RuntimeFailure`` unless ``inputs`` match the manifest's count, shapes and dtypes."""
        specs = self.manifest.inputs
        where = f"{self.manifest.role} half of {self.manifest.model}"
        if len(inputs) != len(specs):
            raise RuntimeFailure(
                f"{where}: got {len(inputs)} inputs, expected {len(specs)} ({', '.join(s.name for s in specs)})"
            )
        for spec, arr in zip(specs, inputs):
            a = np.asarray(arr)
            shape, dtype = tuple(int(d) for d in a.shape), a.dtype.name
            if shape != spec.shape or dtype != spec.dtype:
                raise RuntimeFailure(
                    f"{where}: input {spec.name!r} has shape {list(shape)} {dtype}, "
                    f"expected {list(spec.shape)} {spec.dtype}"
                )

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the half on ``inputs`` (in manifest order); return its outputs in manifest order.

        An empty half returns its inputs unchanged.  Raises ``RuntimeFailure``
        for inputs that do not match the manifest or a failure inside TVM.
        """
        self.check_inputs(inputs)
        if self.is_empty:
            return list(inputs)
        if self._session is not None:
            outputs = self._run_onnxruntime(inputs)
        else:
            outputs = self._run_tvm(inputs)
        expected = self.manifest.outputs
        if len(outputs) != len(expected):
            raise RuntimeFailure(
                f"{self.manifest.role} half of {self.manifest.model}: module returned {len(outputs)} outputs, "
                f"the manifest lists {len(expected)}; rebuild the bundle with cogentc"
            )
        return outputs

    def _run_onnxruntime(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = {name: _native(a) for name, a in zip(self._session_inputs, inputs)}
        with self._lock:
            try:
                return [np.asarray(o) for o in self._session.run(None, feed)]
            except Exception as e:  # onnxruntime's error types live in its pybind module
                raise RuntimeFailure(
                    f"{self.manifest.role} half of {self.manifest.model}: ONNX Runtime execution failed "
                    f"({type(e).__name__}: {_last_line(e)})"
                ) from e

    def _run_tvm(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        assert self._tvm is not None
        tvm = self._tvm
        with self._lock:
            try:
                args = [tvm.runtime.tensor(_native(a), self._dev) for a in inputs]
                outputs = _to_numpy(self._entry(*args, *self._params))
            except Exception as e:  # TVM errors carry no common base we can import without the compiler
                raise RuntimeFailure(
                    f"{self.manifest.role} half of {self.manifest.model}: TVM execution failed "
                    f"({type(e).__name__}: {e})"
                ) from e
        return outputs


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else repr(e)
