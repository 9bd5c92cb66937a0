"""Time compiled reference layers on a remote board through a TVM RPC tracker (``cogentc profile --rpc``).

``RemoteWorker`` answers the profiler as its local timing process does
(``profile_worker``): ``time(folder, inputs, min_batch_s, batches)`` returns
``{"kernels": [[symbol, ms], ...], "wall_ms": ..., "runs": ...}`` or
``{"error": "..."}``.  The layer's folder must come from
``compile_program(..., kernel_info=True)``: besides ``model.so`` and
``params.npz`` it holds ``kernels.json`` (each kernel call of ``main`` with
its parameters' shapes and dtypes) and ``kernels.so`` (the kernel library on
its own).  Nothing of the layer runs on this machine, so an ``arm`` library
needs only to be linked here.

How each part is timed, on the remote device (``sess.cpu(0)``, or
``sess.cuda(0)`` for cuda), with TVM's ``time_evaluator`` (``number`` grown
until a batch lasts ``min_batch_s``, ``repeat=batches``, median of the
batches):

- the whole call: ``model.so`` is uploaded and loaded, the relax VM built on
  the remote device, the inputs (seeded random) and parameters uploaded, and
  ``vm.time_evaluator("invoke_stateful", dev)("main")`` after ``set_input``;
- each kernel on its own: ``kernels.so`` is uploaded and loaded, and every
  call listed in ``kernels.json`` is timed by name on remote tensors of its
  shapes (floats seeded random, integers zero).  The kernels go through a
  library of their own because in ``model.so`` they are functions of the
  VM executable's *imported* library, which a remote ``time_evaluator``
  does not search (it looks up the executable's own functions only, and the
  VM refuses to hand out a kernel as a closure), and an RPC client cannot
  reach a remote module's imports.

The remote machine's TVM runtime, not this one, decides the thread count
(``TVM_NUM_THREADS`` of its ``rpc_server``); ``info()`` reports it, with the
device's name where the remote runtime tells it.  A cuda library loads on the
remote only where that runtime can build the CUDA source TVM embeds (``nvcc``
beside a full TVM); this is untested here (no GPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cogent_compiler.errors import CogentError, ProfileError

if TYPE_CHECKING:
    from cogent_compiler.backends.tuning import RPCSpec

__all__ = ["RemoteWorker"]

log = logging.getLogger(__name__)


class RemoteWorker:
    """One RPC session on a runner of ``rpc`` (a ``backends.tuning.RPCSpec``), timing layers there.

    ``device``: ``cpu`` (llvm and arm targets) or ``cuda``.  Raises
    ``ProfileError`` at once when the tracker is unreachable or has no runner
    registered under the key.  A layer that fails (an RPC error, a kernel the
    remote cannot run) is answered with ``{"error": ...}`` and the session is
    opened anew for the next layer, as a remote runner may have died with it.
    """

    #: the profiler compiles with ``kernel_info=True`` for this worker
    kernel_info: ClassVar[bool] = True

    def __init__(self, rpc: RPCSpec, device: str) -> None:
        from cogent_compiler.backends.tuning import _check_tracker

        if device not in ("cpu", "cuda"):
            raise ProfileError(f"--rpc: cannot time a {device} device remotely; targets llvm and arm run on cpu, cuda on cuda")
        try:
            # TVM's client retries an unanswered tracker for a minute; a wrong address should fail at once
            socket.create_connection((rpc.host, rpc.port), timeout=10).close()
        except OSError as e:
            raise ProfileError(f"--rpc {rpc.host}:{rpc.port}:{rpc.key}: RPC tracker {rpc.host}:{rpc.port} unreachable ({e.strerror or e}); "
                               f"start it with `python -m tvm.exec.rpc_tracker --port {rpc.port}`") from e
        try:
            _check_tracker(rpc)
        except CogentError as e:
            raise ProfileError(f"--rpc {rpc.host}:{rpc.port}:{rpc.key}: {e}") from e
        self.rpc, self.device = rpc, device
        self._session: Any = None
        self._uploads = 0

    def _connect(self) -> Any:
        if self._session is None:
            from tvm import rpc as tvm_rpc

            try:
                # no session timeout: a profile keeps its runner for as long as it measures
                self._session = tvm_rpc.connect_tracker(self.rpc.host, self.rpc.port).request(self.rpc.key, session_timeout=0, max_retry=3)
            except Exception as e:
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise ProfileError(f"--rpc {self.rpc.host}:{self.rpc.port}:{self.rpc.key}: no session from the tracker ({first})") from e
        return self._session

    def _dev(self, sess: Any) -> Any:
        return sess.cuda(0) if self.device == "cuda" else sess.cpu(0)

    def info(self) -> dict[str, Any]:
        """What the profile's ``machine`` records: the tracker and key, and what the remote runtime reports about itself."""
        sess = self._connect()
        dev = self._dev(sess)
        out: dict[str, Any] = {"tracker": f"{self.rpc.host}:{self.rpc.port}", "key": self.rpc.key, "device": self.device}
        # each is optional on a runtime-only remote (the llvm queries need TVM's compiler there)
        for field, func in (("threads", "runtime.NumThreads"), ("llvm_triple", "target.llvm_get_system_triple"),
                            ("llvm_mcpu", "target.llvm_get_system_cpu")):
            try:
                out[field] = sess.get_function(func)()
            except Exception:
                log.debug("the remote runtime has no %s", func)
        if self.device == "cuda":
            for field in ("device_name", "compute_version"):
                try:
                    out[field] = getattr(dev, field)
                except Exception:
                    log.debug("the remote device does not report %s", field)
        return {k: (v if isinstance(v, (int, float, bool)) or v is None else str(v)) for k, v in out.items()}

    def _load(self, sess: Any, path: Path) -> Any:
        # a fresh remote name per file: a runner would hand back a library already loaded from the same path
        self._uploads += 1
        name = f"cogent-{os.getpid()}-{self._uploads}-{path.name}"
        sess.upload(str(path), name)
        try:
            return sess.load_module(name)
        finally:
            sess.remove(name)

    def time(self, folder: Path, inputs: Sequence[Sequence[int]], min_batch_s: float, batches: int, *, kernels: bool = True) -> dict[str, Any]:
        """Time the layer compiled in ``folder`` (see the module doc); the answer of ``profile_worker``."""
        try:
            return self._time(Path(folder), inputs, min_batch_s, batches, kernels)
        except ProfileError:
            raise
        except Exception as e:  # one layer failing must not end the run; the session may be broken with it
            self._session = None
            first = (str(e).strip().splitlines() or [""])[0][:300]
            return {"error": f"{type(e).__name__} on the remote runner: {first}"}

    def _time(self, folder: Path, inputs: Sequence[Sequence[int]], min_batch_s: float, batches: int, kernels: bool) -> dict[str, Any]:
        import numpy as np
        import tvm
        from tvm import relax

        from cogent_compiler.backends.tvm_backend import KERNEL_LIBRARY_NAME, KERNELS_INFO_NAME, LIBRARY_NAME, PARAMS_NAME

        sess = self._connect()
        dev = self._dev(sess)
        rng = np.random.default_rng(0)
        min_ms = max(1, round(min_batch_s * 1e3))

        def timed(evaluator: Any, *args: Any) -> tuple[float, int]:
            batch_s = [float(s) for s in evaluator(*args).results]  # the mean of one call in each batch
            one = statistics.median(batch_s)
            # TVM does not say how many calls it ran: at least enough to fill min_repeat_ms per batch
            return one * 1e3, batches * max(1, math.ceil(min_batch_s / max(one, 1e-9)))

        def tensor(shape: Sequence[int], dtype: str) -> Any:
            data = rng.standard_normal(shape).astype(dtype) if dtype.startswith(("float", "bfloat")) else np.zeros(shape, dtype)
            return tvm.runtime.tensor(data, dev)

        answer: dict[str, Any] = {"kernels": []}
        runs = 0
        if kernels:
            info = folder / KERNELS_INFO_NAME
            if not info.exists() or not (folder / KERNEL_LIBRARY_NAME).exists():
                raise ProfileError(f"{folder}: no {KERNELS_INFO_NAME}/{KERNEL_LIBRARY_NAME}; compile the layer with compile_program(..., kernel_info=True)")
            calls = json.loads(info.read_text())["calls"]
            klib = self._load(sess, folder / KERNEL_LIBRARY_NAME)
            for call in calls:
                if any(p["shape"] is None for p in call["params"]):
                    raise ValueError(f"kernel {call['kernel']} has a scalar or symbolic-shape parameter; it cannot be timed on its own")
                args = [tensor(p["shape"], p["dtype"]) for p in call["params"]]
                ms, n = timed(klib.time_evaluator(call["kernel"], dev, number=1, repeat=batches, min_repeat_ms=min_ms), *args)
                answer["kernels"].append([call["kernel"], ms])
                runs = max(runs, n)
        lib = self._load(sess, folder / LIBRARY_NAME)
        params = []
        if (folder / PARAMS_NAME).exists():
            with np.load(folder / PARAMS_NAME) as npz:
                params = [tvm.runtime.tensor(npz[f"p{i}"], dev) for i in range(len(npz.files))]
        vm = relax.VirtualMachine(lib, dev)
        vm.set_input("main", *[tensor(shape, "float32") for shape in inputs], *params)
        wall_ms, n = timed(vm.time_evaluator("invoke_stateful", dev, number=1, repeat=batches, min_repeat_ms=min_ms), "main")
        answer["wall_ms"], answer["runs"] = wall_ms, runs or n
        return answer

    def close(self) -> None:
        """End the session: the tracker gives the runner to the next client."""
        self._session = None
