"""End to end: a real edge server process and real device clients on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from shutil import copytree
from typing import TYPE_CHECKING

import numpy as np
import pytest

from cogent_compiler.errors import RuntimeFailure
from cogent_compiler.runtime import protocol
from cogent_compiler.runtime.device import DeviceClient, parse_address

if TYPE_CHECKING:
    from conftest import Bundles, EdgeProcess

TOL = {"rtol": 1e-4, "atol": 1e-4}


def device_cli(args: list[str], env: dict[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cogent_compiler.runtime.device", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_line_error(stderr: str, prog: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_split_plan_through_the_cli(
    bundles: Bundles, edge_server: EdgeProcess, run_env: dict[str, str], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", bundles.x)
    r = device_cli(
        [
            "run",
            str(bundles.device()),
            "--edge",
            edge_server.address,
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "y.npy"),
        ],
        run_env,
    )
    assert r.returncode == 0, r.stderr
    assert "logits [1, 10] float32" in r.stdout
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), bundles.logits, **TOL)


def test_many_concurrent_clients_get_their_own_answers(bundles: Bundles, edge_server: EdgeProcess) -> None:
    rng = np.random.default_rng(7)
    n_clients, n_requests = 6, 5
    xs = [
        [rng.standard_normal(bundles.x.shape).astype(np.float32) for _ in range(n_requests)] for _ in range(n_clients)
    ]
    want = [[bundles.expected(x) for x in row] for row in xs]
    host, port = edge_server.host, edge_server.port
    clients = [DeviceClient(bundles.device(), warmup=False) for _ in range(n_clients)]
    barrier = threading.Barrier(n_clients)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with clients[i] as c:
                c.connect(host, port)
                barrier.wait()
                for x, w in zip(xs[i], want[i]):
                    out = c.infer({"x": x})
                    assert list(out) == ["logits"]
                    np.testing.assert_allclose(out["logits"], w, **TOL)
        except Exception as e:  # re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_concurrent_device_processes(
    bundles: Bundles, edge_server: EdgeProcess, run_env: dict[str, str], tmp_path: Path
) -> None:
    rng = np.random.default_rng(8)
    procs = []
    for i in range(3):
        x = rng.standard_normal(bundles.x.shape).astype(np.float32)
        np.save(tmp_path / f"x{i}.npy", x)
        cmd = [
            sys.executable,
            "-m",
            "cogent_compiler.runtime.device",
            "run",
            str(bundles.device()),
            "--edge",
            edge_server.address,
            "--input",
            str(tmp_path / f"x{i}.npy"),
            "--output",
            str(tmp_path / f"y{i}.npy"),
            "--repeat",
            "3",
        ]
        procs.append((x, subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for i, (x, p) in enumerate(procs):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        np.testing.assert_allclose(np.load(tmp_path / f"y{i}.npy"), bundles.expected(x), **TOL)


def test_repeat_and_json(bundles: Bundles, edge_server: EdgeProcess, run_env: dict[str, str], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", bundles.x)
    r = device_cli(
        [
            "run",
            str(bundles.device()),
            "--edge",
            edge_server.address,
            "--input",
            str(tmp_path / "x.npy"),
            "--repeat",
            "4",
            "--json",
        ],
        run_env,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["model"] == "tinycnn" and report["edge"] == edge_server.address
    assert report["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert report["repeat"] == 4 and len(report["runs_ms"]) == 4
    assert set(report["median_ms"]) == {"total_ms", "head_ms", "edge_ms"}
    assert all(v > 0 for v in report["median_ms"].values())
    r = device_cli(
        [
            "run",
            str(bundles.device()),
            "--edge",
            edge_server.address,
            "--input",
            str(tmp_path / "x.npy"),
            "--repeat",
            "2",
        ],
        run_env,
    )
    assert r.returncode == 0 and "median" in r.stdout and "over 2 runs" in r.stdout, r.stderr


def test_bad_requests_get_error_frames_and_the_server_lives_on(bundles: Bundles, edge_server: EdgeProcess) -> None:
    with socket.create_connection((edge_server.host, edge_server.port), timeout=30) as s:
        cases = [
            (
                [("relu", np.zeros((1, 8, 4, 4), np.float32))],
                r"shape \[1, 8, 4, 4\] float32, expected \[1, 8, 16, 16\] float32",
            ),
            ([("relu", bundles.boundary.astype(np.float64))], "float64, expected"),
            ([], "carries 0 tensors"),
            ([("other", bundles.boundary)], "'other' where the edge expects 'relu'"),
        ]
        for rid, (tensors, message) in enumerate(cases, start=10):
            protocol.send_frame(s, protocol.encode(protocol.REQUEST, rid, tensors))
            frame = protocol.recv_frame(s)
            assert frame is not None and frame.kind == protocol.ERROR and frame.request_id == rid
            assert frame.message is not None
            assert re.search(message, frame.message), frame.message
        # The same connection still answers a good request.
        protocol.send_frame(s, protocol.encode(protocol.REQUEST, 99, [("relu", bundles.boundary)]))
        frame = protocol.recv_frame(s)
        assert frame is not None and frame.kind == protocol.RESPONSE and frame.request_id == 99
        assert frame.names == ["logits"]
        np.testing.assert_allclose(frame.arrays[0], bundles.logits, **TOL)
        # A malformed frame: an ERROR, then the server hangs up this connection.
        s.sendall(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n")
        frame = protocol.recv_frame(s)
        assert frame is not None and frame.kind == protocol.ERROR and "bad magic" in (frame.message or "")
        assert protocol.recv_frame(s) is None
    # ...and keeps serving others.
    with DeviceClient(bundles.device(), warmup=False) as c:
        c.connect(edge_server.host, edge_server.port)
        np.testing.assert_allclose(c.infer([bundles.x])["logits"], bundles.logits, **TOL)
    assert edge_server.proc.poll() is None


def test_device_only_plan_needs_no_edge(bundles: Bundles, run_env: dict[str, str], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", bundles.x)
    r = device_cli(
        [
            "run",
            str(bundles.device("device_only")),
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "y.npy"),
        ],
        run_env,
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), bundles.logits, **TOL)
    client = DeviceClient(bundles.device("device_only"))
    assert not client.needs_edge
    np.testing.assert_allclose(client.infer([bundles.x])["logits"], bundles.logits, **TOL)


def test_edge_only_plan_sends_the_input(
    bundles: Bundles, edge_factory: Callable[..., EdgeProcess], run_env: dict[str, str], tmp_path: Path
) -> None:
    edge = edge_factory(bundles.edge("edge_only"))
    np.save(tmp_path / "x.npy", bundles.x)
    r = device_cli(
        [
            "run",
            str(bundles.device("edge_only")),
            "--edge",
            edge.address,
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "y.npy"),
        ],
        run_env,
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), bundles.logits, **TOL)


def test_missing_edge_flag_is_a_usage_error(bundles: Bundles, run_env: dict[str, str], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", bundles.x)
    r = device_cli(["run", str(bundles.device()), "--input", str(tmp_path / "x.npy")], run_env)
    assert r.returncode == 2
    line = one_line_error(r.stderr, "cogent-device")
    assert "sends ['relu'] to an edge server; pass --edge HOST:PORT" in line


def test_unreachable_edge_is_a_runtime_error(bundles: Bundles, run_env: dict[str, str], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", bundles.x)
    port = free_port()
    r = device_cli(
        ["run", str(bundles.device()), "--edge", f"127.0.0.1:{port}", "--input", str(tmp_path / "x.npy")], run_env
    )
    assert r.returncode == 1
    line = one_line_error(r.stderr, "cogent-device")
    assert f"cannot reach edge at 127.0.0.1:{port}: connection refused; start `cogent-edge serve" in line


def test_bad_inputs_are_usage_errors(bundles: Bundles, run_env: dict[str, str], tmp_path: Path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 8, 8), np.float32))
    r = device_cli(
        ["run", str(bundles.device()), "--edge", "127.0.0.1:1", "--input", str(tmp_path / "small.npy")], run_env
    )
    assert r.returncode == 2
    assert "input 'x' has shape [1, 3, 8, 8] float32, expected [1, 3, 16, 16] float32" in one_line_error(
        r.stderr, "cogent-device"
    )
    r = device_cli(["run", str(bundles.device()), "--input", str(tmp_path / "nope.npy")], run_env)
    assert r.returncode == 2 and "no such file" in one_line_error(r.stderr, "cogent-device")
    np.save(tmp_path / "x.npy", bundles.x)
    r = device_cli(
        [
            "run",
            str(bundles.device()),
            "--edge",
            "127.0.0.1:1",
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            "a.npy",
            "--output",
            "b.npy",
        ],
        run_env,
    )
    assert r.returncode == 2 and "2 --output given, the model has 1 outputs" in one_line_error(
        r.stderr, "cogent-device"
    )
    r = device_cli(
        ["run", str(bundles.device()), "--edge", "host:notaport", "--input", str(tmp_path / "x.npy")], run_env
    )
    assert r.returncode == 2 and "not a number" in one_line_error(r.stderr, "cogent-device")


def _tamper(src: Path, dst: Path, name: str) -> Path:
    copytree(src, dst)
    data = bytearray((dst / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / name).write_bytes(bytes(data))
    return dst


def test_tampered_bundles_are_refused_by_both(bundles: Bundles, run_env: dict[str, str], tmp_path: Path) -> None:
    edge_dir = _tamper(bundles.edge(), tmp_path / "edge", "tail.so")
    r = subprocess.run(
        [sys.executable, "-m", "cogent_compiler.runtime.edge", "serve", str(edge_dir), "--port", "0"],
        check=False,
        capture_output=True,
        text=True,
        env=run_env,
        timeout=60,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert "tail.so: sha256" in one_line_error(r.stderr, "cogent-edge") and "does not match" in r.stderr

    dev_dir = _tamper(bundles.device(), tmp_path / "device", "head.npz")
    np.save(tmp_path / "x.npy", bundles.x)
    r = device_cli(["run", str(dev_dir), "--edge", "127.0.0.1:1", "--input", str(tmp_path / "x.npy")], run_env)
    assert r.returncode == 2
    assert "head.npz: sha256" in one_line_error(r.stderr, "cogent-device") and "rebuild the bundle" in r.stderr


def test_edge_with_no_bundle_is_a_usage_error(run_env: dict[str, str], tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "cogent_compiler.runtime.edge", "serve", str(tmp_path), "--port", "0"],
        check=False,
        capture_output=True,
        text=True,
        env=run_env,
        timeout=60,
    )
    assert r.returncode == 2 and "no manifest.json" in one_line_error(r.stderr, "cogent-edge")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_with_an_open_connection(
    bundles: Bundles, edge_factory: Callable[..., EdgeProcess], sig: signal.Signals
) -> None:
    edge = edge_factory(bundles.edge())
    with socket.create_connection((edge.host, edge.port), timeout=30) as s:
        protocol.send_frame(s, protocol.encode(protocol.REQUEST, 1, [("relu", bundles.boundary)]))
        assert protocol.recv_frame(s) is not None
        start = time.monotonic()
        edge.proc.send_signal(sig)
        edge.proc.wait(timeout=20)
        assert time.monotonic() - start < 10
        assert edge.proc.returncode == 0
        assert protocol.recv_frame(s) is None  # the server closed our connection
    assert "Traceback" not in (edge.proc.stderr.read() if edge.proc.stderr else "")


def test_client_reports_a_dead_edge_then_reconnects(bundles: Bundles, edge_factory: Callable[..., EdgeProcess]) -> None:
    edge = edge_factory(bundles.edge())
    client = DeviceClient(bundles.device(), warmup=False)
    client.connect(edge.host, edge.port)
    client.infer([bundles.x])
    edge.proc.terminate()
    edge.proc.wait(timeout=20)
    with pytest.raises(RuntimeFailure, match=f"edge at 127.0.0.1:{edge.port}"):
        client.infer([bundles.x])
    assert not client.connected
    with pytest.raises(RuntimeFailure, match="connection refused"):
        client.infer([bundles.x])
    # A new server on the same port: the client reconnects on its own.
    again = edge_factory(bundles.edge(), "--port", str(edge.port))
    assert again.port == edge.port
    np.testing.assert_allclose(client.infer([bundles.x])["logits"], bundles.logits, **TOL)
    client.close()


def test_help_is_fast_and_works(run_env: dict[str, str]) -> None:
    for module, needle in (("edge", "--port"), ("device", "--edge")):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                f"cogent_compiler.runtime.{module}",
                "serve" if module == "edge" else "run",
                "--help",
            ],
            check=False,
            capture_output=True,
            text=True,
            env=run_env,
            timeout=60,
        )
        assert r.returncode == 0 and needle in r.stdout, r.stderr


def test_parse_address() -> None:
    assert parse_address("10.0.0.2:9000") == ("10.0.0.2", 9000)
    assert parse_address("edge") == ("edge", protocol.DEFAULT_PORT)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address("::1") == ("::1", protocol.DEFAULT_PORT)
    for bad in (":80", "h:0", "h:70000", "h:x"):
        with pytest.raises(ValueError):
            parse_address(bad)
