"""``cogentc profile --rpc HOST:PORT:KEY``: layers compiled here, timed on a runner of a TVM RPC tracker.

A real ``tvm.exec.rpc_tracker`` and ``tvm.exec.rpc_server`` run on loopback
(this CPU stands for the board); the remote timings are compared with the
same layers timed by the local worker.  An ``arm`` layer is cross-compiled
(no aarch64 runner here, so it is only refused cleanly).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cogent_compiler.backends.tuning import RPCSpec
from cogent_compiler.cli import main
from cogent_compiler.cost import load_profile
from cogent_compiler.cost.profiler import LayerSpec, measure_profile
from cogent_compiler.errors import ProfileError
from rpc_support import free_port, wait_for_port

KEY = "cogent-profile"
#: a convolution, and a pool between convolutions (its sample leaves the conv kernels out)
LAYERS = [LayerSpec("conv2d", 16, 16, 14, 3), LayerSpec("max_pool2d", 16, 0, 28, 3, 2)]



def _wait_for_runner(port: int, timeout: float = 60) -> None:
    from tvm import rpc

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if int(rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].get(KEY, {}).get("free", 0)) >= 1:
            return
        time.sleep(0.3)
    raise AssertionError("the rpc runner did not register")


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Iterator[RPCSpec]:
    """A tracker on loopback with one runner (1 thread) under ``KEY``."""
    port, own = free_port(), free_port()
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    log = open(tmp_path_factory.mktemp("rpc") / "server.log", "w")
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)]
    try:
        wait_for_port(port, procs[0])
        procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(own), "--port-end", str(own + 1),
                                       "--tracker", f"127.0.0.1:{port}", "--key", KEY], stdout=log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))
        _wait_for_runner(port)
        yield RPCSpec("127.0.0.1", port, KEY)
    finally:
        # each serves from a worker process of its own: end the whole group, or the worker outlives the test
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cogentc: error:") and len(err.splitlines()) == 1, err
    return err


def test_remote_kernel_times_match_local_ones_and_the_profile_says_rpc(tracker, tmp_path, capsys):
    out = tmp_path / "remote.json"
    remote = measure_profile("llvm", out, budget_s=120, layers=LAYERS, rpc=tracker)
    local = measure_profile("llvm", tmp_path / "local.json", budget_s=120, threads=1, layers=LAYERS)
    assert [s.key for s in remote.samples] == [s.key for s in local.samples] == [s.key for s in LAYERS]
    for r, here in zip(remote.samples, local.samples):
        assert set(r.kernels) == set(here.kernels) and all(ms > 0 for ms in r.kernels.values())
        # the same kernels on the same CPU: close, however noisy a loaded 2-core machine is
        assert here.ms / 3 < r.ms < here.ms * 3, (r.key, r.kernels, here.kernels)
        assert r.wall_ms is not None and r.wall_ms > 0 and r.runs >= 7
    pool = remote.samples[1]
    assert pool.ms == pytest.approx(pool.kernels["max_pool2d"])  # the convolution around it is not its time
    rpc = remote.machine["rpc"]
    assert rpc["tracker"] == f"127.0.0.1:{tracker.port}" and rpc["key"] == KEY and rpc["device"] == "cpu"
    assert rpc["threads"] == 1 and remote.threads == 1 and remote.cpu_quota is None
    assert remote.machine["cpu"].startswith(f"rpc {KEY} at 127.0.0.1:{tracker.port}")

    # the CLI resumes the remote profile, through the same runner
    rpc_arg = f"127.0.0.1:{tracker.port}:{KEY}"
    assert main(["profile", "--rpc", rpc_arg, "-o", str(out), "--only", "relu", "--budget", "3s", "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] > len(LAYERS) and load_profile(out).machine["rpc"]["key"] == KEY
    # a remote profile is not resumed by measuring this machine
    err = _one_line_error(capsys, ["profile", "-o", str(out), "--only", "relu", "--threads", "1", "-q"])
    assert "give another -o" in err


def test_rpc_errors_are_one_line(tracker, tmp_path, capsys):
    out = str(tmp_path / "x.json")
    for bad in ("board:9190", "board", "board:port:key", ":9190:key", "board:9190:"):
        assert "expected HOST:PORT:KEY" in _one_line_error(capsys, ["profile", "--rpc", bad, "-o", out, "-q"])
    assert "unreachable" in _one_line_error(capsys, ["profile", "--rpc", f"127.0.0.1:{free_port()}:{KEY}", "-o", out, "-q"])
    rpc = f"127.0.0.1:{tracker.port}:{KEY}"
    assert "--cpu-quota with --rpc" in _one_line_error(capsys, ["profile", "--rpc", rpc, "--cpu-quota", "0.5", "-o", out, "-q"])
    assert "--threads with --rpc" in _one_line_error(capsys, ["profile", "--rpc", rpc, "--threads", "2", "-o", out, "-q"])
    err = _one_line_error(capsys, ["profile", "--target", "arm", "--rpc", f"127.0.0.1:{tracker.port}:rk3588", "-o", out, "-q"])
    assert "no runner with key 'rk3588'" in err and KEY in err
    assert not Path(out).exists()


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs the aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
def test_an_arm_layer_compiles_here_for_the_remote_worker(tracker, tmp_path):
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.backends.tvm_backend import compile_program
    from cogent_compiler.frontend import from_module

    spec = LayerSpec("relu", 8, 0, 7)
    module, inputs = spec.module()
    compile_program(from_module(module, inputs, name=spec.key).program, "torch", resolve_target("arm"), tmp_path, name=spec.key, kernel_info=True)
    for lib in ("model.so", "kernels.so"):
        header = (tmp_path / lib).read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    calls = json.loads((tmp_path / "kernels.json").read_text())["calls"]
    assert [c["kernel"] for c in calls] == ["relu"] and calls[0]["params"] == [{"shape": [1, 8, 7, 7], "dtype": "float32"}] * 2
    # no aarch64 runner registered under this key: refused before anything is compiled
    with pytest.raises(ProfileError, match="no runner with key 'rk3588'"):
        measure_profile("arm", tmp_path / "arm.json", layers=[spec], rpc=RPCSpec("127.0.0.1", tracker.port, "rk3588"))
    assert not (tmp_path / "arm.json").exists()
