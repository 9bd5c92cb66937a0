"""PROBE frames: the edge answers them without running the model and reports its load."""

from __future__ import annotations

import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cogent_compiler.errors import ProtocolError
from cogent_compiler.runtime import protocol
from cogent_compiler.runtime.device import DeviceClient
from cogent_compiler.runtime.edge import LoadMeter
from cogent_compiler.runtime.manifest import Manifest, ModuleSpec, TensorSpec, sha256_file


def _decode(parts: list[protocol.Buffer]) -> protocol.Frame:
    raw = b"".join(bytes(p) for p in parts)
    kind, count, request_id, length = protocol.parse_header(raw[: protocol.HEADER.size])
    assert length == len(raw) - protocol.HEADER.size
    return protocol.decode_payload(kind, request_id, count, raw[protocol.HEADER.size :])


def test_probe_and_reply_round_trip():
    probe = _decode(protocol.encode_probe(7, 1000, 5000))
    assert (probe.kind, probe.request_id, probe.filler_bytes, probe.reply_bytes, probe.tensors) == (protocol.PROBE, 7, 1000, 5000, [])
    load = protocol.EdgeLoad(1.5, 2.0, 3.0, in_flight=2, recent=9, handled_s=4e-5)
    reply = _decode(protocol.encode_probe_reply(7, load, 5000))
    assert (reply.kind, reply.request_id, reply.filler_bytes) == (protocol.PROBE_REPLY, 7, 5000)
    assert reply.load == protocol.EdgeLoad(1.5, 2.0, 3.0, 2, 9, pytest.approx(4e-5))
    unknown = _decode(protocol.encode_probe_reply(1, protocol.EdgeLoad(), 0)).load
    assert unknown is not None and (unknown.load_factor, unknown.baseline_ms, unknown.recent_ms) == (None, None, None)


def test_requests_keep_their_layout():
    # probes came without a version bump: a REQUEST is byte for byte what version 1 always sent
    parts = protocol.encode(protocol.REQUEST, 3, [("x", np.arange(4, dtype=np.float32))])
    assert bytes(parts[0])[:6] == b"CGNT\x01\x01"
    frame = _decode(parts)
    assert frame.kind == protocol.REQUEST and frame.reply_bytes == 0 and frame.load is None


def test_malformed_probes_are_refused():
    with pytest.raises(ProtocolError, match="MAX_PROBE_BYTES"):
        protocol.encode_probe(1, 0, protocol.MAX_PROBE_BYTES + 1)
    asks_too_much = protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, protocol.PROBE, 0, 1, 8) + (1 << 40).to_bytes(8, "big")
    with pytest.raises(ProtocolError, match="MAX_PROBE_BYTES"):
        _decode([asks_too_much])
    with pytest.raises(ProtocolError, match="truncated PROBE"):
        protocol.decode_payload(protocol.PROBE, 1, 0, b"\x00" * 4)
    with pytest.raises(ProtocolError, match="must carry none"):
        protocol.parse_header(protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, protocol.PROBE, 2, 1, 8))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_load_meter_bookkeeping():
    clock = _Clock()
    meter = LoadMeter(window=4, max_age_s=10.0, min_samples=4, clock=clock)
    assert meter.snapshot().load_factor is None  # no baseline, no requests
    meter.set_baseline([2.0, 9.0, 1.0])  # median 2.0: one slow idle run does not move it
    assert meter.snapshot().load_factor is None  # idle, nothing recent
    for ms in (2.0, 4.0, 6.0):
        meter.started()
        meter.finished(ms)
    snap = meter.snapshot()
    assert (snap.load_factor, snap.recent_ms, snap.recent, snap.in_flight) == (2.0, 4.0, 3, 0)
    meter.started()
    meter.started()
    meter.finished(None)  # a failed request is not a service time
    assert (meter.snapshot().in_flight, meter.snapshot().recent) == (1, 3)
    for ms in (8.0, 8.0, 8.0):
        meter.finished(ms)
        meter.started()
    assert meter.snapshot().recent == 4  # the window keeps the last 4: 6, 8, 8, 8
    assert meter.snapshot().load_factor == pytest.approx(4.0)
    assert meter.snapshot().in_flight == 1
    clock.now += 11.0  # older than max_age_s: the edge has been idle since
    assert meter.snapshot().load_factor is None and meter.snapshot().recent == 0


def test_a_faster_steady_pace_lowers_the_baseline():
    meter = LoadMeter(window=4, min_samples=4, clock=_Clock())
    meter.set_baseline([3.0])  # cold runs right after loading
    for ms in (1.0, 1.2, 0.9):
        meter.started()
        meter.finished(ms)
    assert meter.baseline_ms == 3.0  # not a full window yet
    meter.started()
    meter.finished(1.1)
    assert meter.baseline_ms == pytest.approx(1.05) and meter.snapshot().load_factor == pytest.approx(1.0)
    for ms in (4.0, 4.2, 4.4, 4.6):  # busy: slower windows never raise the baseline
        meter.started()
        meter.finished(ms)
    assert meter.baseline_ms == pytest.approx(1.05) and meter.snapshot().load_factor == pytest.approx(4.3 / 1.05)


def _probe(sock: socket.socket, request_id: int, up: int, down: int) -> protocol.Frame:
    protocol.send_frame(sock, protocol.encode_probe(request_id, up, down))
    frame = protocol.recv_frame(sock)
    assert frame is not None
    return frame


def test_edge_answers_probes_without_running_the_model(bundles, edge_server):
    client = DeviceClient(bundles.device("split"))
    client.connect(edge_server.host, edge_server.port)
    with socket.create_connection((edge_server.host, edge_server.port), timeout=30) as sock:
        first = _probe(sock, 1, 0, 0)
        assert first.kind == protocol.PROBE_REPLY and first.request_id == 1 and first.filler_bytes == 0
        assert first.load.baseline_ms is not None and first.load.baseline_ms > 0  # measured before listening
        assert first.load.load_factor is None and first.load.recent == 0  # no request yet
        big = _probe(sock, 2, 3 << 20, 2 << 20)
        assert big.kind == protocol.PROBE_REPLY and big.filler_bytes == 2 << 20
        for _ in range(3):
            np.testing.assert_allclose(client.infer([bundles.x])["logits"], bundles.logits, rtol=1e-4, atol=1e-5)
        after = _probe(sock, 3, 0, 0).load
        assert after.recent == 3 and after.load_factor is not None and math.isfinite(after.load_factor) and after.load_factor > 0
        assert after.handled_s > 0
        # a request on the same connection as the probes still works: probes leave the stream in step
        protocol.send_frame(sock, protocol.encode(protocol.REQUEST, 4, [("relu", bundles.boundary)]))
        reply = protocol.recv_frame(sock)
        assert reply.kind == protocol.RESPONSE and reply.request_id == 4
        np.testing.assert_allclose(reply.as_dict()["logits"], bundles.logits, rtol=1e-4, atol=1e-5)
    client.close()


@pytest.fixture
def matmul_edge(tmp_path: Path) -> Path:
    """An edge half (ONNX Runtime) of eight 256x256 matmuls: a few ms per request, so requests queue on its lock."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(8):
        inits.append(numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [256, 256])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "model.onnx")
    Manifest(role="edge", model="matmuls", target={"name": "llvm", "device": "cpu"},
             module=ModuleSpec("model.onnx", None, backend="onnxruntime"),
             inputs=(TensorSpec("x", (256, 256), "float32"),), outputs=(TensorSpec(prev, (256, 256), "float32"),),
             files={"model.onnx": sha256_file(tmp_path / "model.onnx")}, plan={"test": True}).write(tmp_path)
    return tmp_path


def test_load_factor_rises_while_the_edge_is_busy(matmul_edge, edge_factory):
    edge = edge_factory(matmul_edge)
    request = protocol.encode(protocol.REQUEST, 1, [("x", np.ones((256, 256), np.float32))])

    def infer(sock: socket.socket) -> None:
        protocol.send_frame(sock, request)
        assert protocol.recv_frame(sock).kind == protocol.RESPONSE

    def hammer(stop: threading.Event) -> None:
        with socket.create_connection((edge.host, edge.port), timeout=30) as s:
            while not stop.is_set():
                infer(s)

    with socket.create_connection((edge.host, edge.port), timeout=30) as sock, \
            socket.create_connection((edge.host, edge.port), timeout=30) as one:
        for _ in range(10):  # one request at a time: the edge's idle pace
            infer(one)
        idle = _probe(sock, 1, 0, 0).load
        stop = threading.Event()
        workers = [threading.Thread(target=hammer, args=(stop,)) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            time.sleep(1.0)  # long enough for the window to hold only busy requests
            busy = [_probe(sock, 2 + i, 0, 0).load for i in range(5)]
        finally:
            stop.set()
            for w in workers:
                w.join()
    assert idle.load_factor is not None and busy[-1].load_factor is not None
    assert 0.7 < idle.load_factor < 1.5, idle
    assert busy[-1].load_factor > 1.5 * idle.load_factor, (idle, busy[-1])
    assert max(b.in_flight for b in busy) >= 1, busy
    print(f"idle {idle.load_factor:.2f}x, busy {busy[-1].load_factor:.2f}x ({busy[-1].recent_ms:.2f} ms vs baseline {busy[-1].baseline_ms:.2f} ms)")
