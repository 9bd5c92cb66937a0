"""A real ``cogent-edge serve`` process for tests that need a peer but no compiled model (link probes).

The edge serves an *empty* half (the edge bundle of a device-only plan): it
answers PROBE frames like any edge, and writing it needs no compiler.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cogent_compiler.runtime.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]


def write_empty_edge(folder: Path) -> Path:
    """Write an edge bundle with an empty half into ``folder``; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    Manifest(role="edge", model="empty", target={"name": "llvm", "device": "cpu"}, module=None, inputs=(), outputs=(),
             files={}, plan={"test": True}).write(folder)
    return folder


def edge_argv(bundle: Path, host: str = "127.0.0.1", port: int = 0) -> list[str]:
    return [sys.executable, "-m", "cogent_compiler.runtime.edge", "serve", str(bundle), "--host", host, "--port", str(port)]


def repo_env() -> dict[str, str]:
    """The environment with this checkout importable (subprocesses, also inside namespaces)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))


def start_edge_process(cmd: Sequence[str], timeout: float = 60.0) -> tuple[subprocess.Popen[str], str, int]:
    """Start ``cmd`` (a cogent-edge serve command line, maybe wrapped); wait for its ready line; return (process, host, port)."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=repo_env())
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        raise AssertionError(f"edge printed nothing in {timeout} s; stderr: {proc.communicate()[1]}")
    line = proc.stdout.readline()
    if not line.startswith("cogent-edge: serving "):
        proc.kill()
        raise AssertionError(f"unexpected ready line {line!r}; stderr: {proc.communicate()[1]}")
    host, _, port = line.strip().rpartition(" ")[2].rpartition(":")
    return proc, host, int(port)


def stop_edge_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the edge, wait for it (SIGKILL after 20 s)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def infer_bundle(bundle: Path, inputs: Sequence[object]) -> list[dict[str, object]]:
    """Run a compiled bundle as deployed: its edge half in a ``cogent-edge`` process, its device half in this one.

    ``inputs`` are the model inputs of one request each (a list of arrays in
    manifest order); returns each request's outputs by name.
    """
    from cogent_compiler.runtime.device import DeviceClient

    proc, host, port = start_edge_process(edge_argv(Path(bundle) / "edge"))
    try:
        client = DeviceClient(Path(bundle) / "device")
        client.connect(host, port)
        try:
            return [client.infer(list(x)) for x in inputs]  # type: ignore[call-overload]
        finally:
            client.close()
    finally:
        stop_edge_process(proc)
