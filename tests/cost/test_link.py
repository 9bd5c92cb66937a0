"""The link model: probes through a real edge server, the fit, the link profile file, and the latency model's use of it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
from edge_support import edge_argv, start_edge_process, stop_edge_process, write_empty_edge

from cogent_compiler.cost import ComputeModel, LatencyModel, Link
from cogent_compiler.cost.link import (
    LINK_SCHEMA,
    LinkProfile,
    LinkSample,
    fit_link,
    load_link_profile,
    measure_link,
    save_link_profile,
)
from cogent_compiler.errors import CogentError, LinkError, LinkFormatError, PeerUnreachableError

@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real ``cogent-edge serve`` process on loopback, serving an empty half."""
    bundle = write_empty_edge(tmp_path_factory.mktemp("edge"))
    proc, host, port = start_edge_process(edge_argv(bundle))
    yield host, port
    stop_edge_process(proc)


# -- the fit ---------------------------------------------------------------


def _synthetic(up_bps: float, down_bps: float, base_s: float, noise: dict[int, float] | None = None) -> list[LinkSample]:
    samples = [LinkSample("empty", 0, base_s + d) for d in (0.0, 1e-4, -1e-4, 5e-2)]  # one outlier
    for n in (16 << 10, 64 << 10, 256 << 10, 1 << 20):
        for extra in (0.0, 1e-4, 3.0 * (noise or {}).get(n, 0.0)):
            samples.append(LinkSample("up", n, base_s + n * 8 / up_bps + extra))
            samples.append(LinkSample("down", n, base_s + n * 8 / down_bps + extra))
    return samples


def test_fit_recovers_asymmetric_bandwidths_and_the_round_trip():
    up, down, rtt, per_message = fit_link(_synthetic(10e6, 40e6, 0.02), per_message_s=0.001)
    assert up == pytest.approx(10e6, rel=0.01) and down == pytest.approx(40e6, rel=0.01)
    assert rtt == pytest.approx(0.019, rel=0.01) and per_message == 0.001


def test_fit_is_robust_to_an_outlying_size():
    # every probe of one size hit a stall: the median of pairwise slopes ignores it
    up, _, _, _ = fit_link(_synthetic(10e6, 10e6, 0.01, noise={64 << 10: 0.2}))
    assert up == pytest.approx(10e6, rel=0.1)


def test_fit_refuses_what_it_cannot_measure():
    flat = [LinkSample("empty", 0, 0.001)] + [LinkSample(d, 1000, 0.001) for d in ("up", "down")]
    with pytest.raises(LinkError, match="probe larger sizes"):
        fit_link(flat)
    with pytest.raises(LinkError, match="no empty probe"):
        fit_link([LinkSample("up", 1000, 0.1)])
    with pytest.raises(LinkError, match="downlink"):
        fit_link([LinkSample("empty", 0, 0.001), LinkSample("up", 1000, 0.1)])


# -- measuring through a real edge ---------------------------------------------


def test_measure_link_on_loopback(edge):
    host, port = edge
    lines: list[str] = []
    profile = measure_link(host, port, sizes=(64 << 10, 1 << 20), repeats=3, progress=lines.append)
    assert profile.peer == f"{host}:{port}"
    assert profile.bandwidth_up_bps > 100e6 and profile.bandwidth_down_bps > 100e6  # loopback: Gbit/s
    assert 0 < profile.rtt_s < 0.05 and 0 < profile.per_message_s < 0.05
    assert profile.edge_load_factor == 1.0 and profile.edge_load["load_factor"] is None  # an empty half reports no load
    assert [s.direction for s in profile.samples].count("empty") == 6
    assert sorted((s.direction, s.bytes) for s in profile.samples if s.direction != "empty") == sorted(
        [(d, n) for d in ("up", "down") for n in (64 << 10, 1 << 20)] * 3)
    assert lines and "Mbit/s" in lines[-1]


def test_a_slow_probe_drops_the_larger_sizes(edge):
    lines: list[str] = []
    # the size kept must take measurably longer than an empty probe on loopback: 64 KiB did not when the edge process had
    # just started on a busy machine (0.59 ms against an empty probe's 1.56 ms)
    profile = measure_link(*edge, sizes=(4 << 20, 8 << 20), repeats=2, max_probe_s=0.0, progress=lines.append)
    assert {s.bytes for s in profile.samples if s.direction != "empty"} == {4 << 20}
    assert any(f"not probing [{8 << 20}] bytes" in line for line in lines)


def test_an_unreachable_peer_names_the_fix(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PeerUnreachableError, match="cogent-edge serve"):
        measure_link("127.0.0.1", port, timeout_s=5)


def test_a_peer_that_is_not_an_edge_is_named():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def http_like() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(100)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b" " * 64)

    t = threading.Thread(target=http_like)
    t.start()
    try:
        with pytest.raises(LinkError, match="Cogent edge listening"):
            measure_link("127.0.0.1", port, timeout_s=5)
    finally:
        t.join()
        server.close()


def test_an_edge_older_than_probes_is_told_apart():
    from cogent_compiler.runtime import protocol

    # the bytes a release-1 edge answers a frame of unknown kind with, before it closes the connection
    old_answer = protocol.encode_error(0, "malformed frame: unknown frame kind 4; expected 1 (REQUEST), 2 (RESPONSE) or 3 (ERROR)")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def old_edge() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(protocol.HEADER.size)
            protocol.send_frame(conn, old_answer)

    t = threading.Thread(target=old_edge)
    t.start()
    try:
        with pytest.raises(LinkError, match="older than probes: upgrade it"):
            measure_link("127.0.0.1", port, timeout_s=5)
    finally:
        t.join()
        server.close()


# -- the file ------------------------------------------------------------------


def _profile() -> LinkProfile:
    return LinkProfile(peer="10.0.0.2:7461", bandwidth_up_bps=19e6, bandwidth_down_bps=38e6, rtt_s=0.004, per_message_s=5e-5,
                       edge_load_factor=1.5, date="2026-11-26T15:00:00+00:00", edge_load={"load_factor": 1.5, "in_flight": 2},
                       samples=(LinkSample("empty", 0, 0.004), LinkSample("up", 1024, 0.0045)), settings={"repeats": 1})


def test_link_profile_round_trip(tmp_path):
    path = tmp_path / "link.json"
    save_link_profile(_profile(), path)
    assert json.loads(path.read_text())["schema"] == LINK_SCHEMA
    assert load_link_profile(path) == _profile()
    link = load_link_profile(path).link()
    assert (link.bandwidth_bps, link.down_bps, link.rtt_s, link.per_message_s) == (19e6, 38e6, 0.004, 5e-5)
    assert "10.0.0.2:7461" in link.source


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "no such link profile.*cogentc profile --peer"),
        ("{not json", "not JSON"),
        (json.dumps({"schema": "cogent-link/9"}), "schema 'cogent-link/9' is not supported"),
        (json.dumps({"schema": "cogent-profile/1", "target": "llvm"}), "not a link profile.*--device-profile"),
        (json.dumps({"schema": LINK_SCHEMA, "peer": "x"}), "malformed link profile.*KeyError"),
        (json.dumps({**_profile().to_json(), "bandwidth_up_bps": 0}), "malformed link profile.*positive"),
    ],
)
def test_bad_link_profiles_get_one_line_errors(tmp_path, content, match):
    path = tmp_path / "link.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LinkFormatError, match=match) as e:
        load_link_profile(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


# -- the latency model ------------------------------------------------------------


def test_link_adds_per_message_overhead_and_separate_directions():
    link = Link(8e6, 0.010, per_message_s=0.002, bandwidth_down_bps=80e6)
    # 1 MB up at 8 Mbit/s = 1000 ms, 1 MB down at 80 Mbit/s = 100 ms, then 10 + 2 ms
    assert link.transfer_ms(1_000_000, 1_000_000) == pytest.approx(1112.0)
    assert Link(8e6, 0.010).transfer_ms(1_000_000, 1_000_000) == pytest.approx(2010.0)  # symmetric, no overhead: as before
    assert link.to_json() == {"bandwidth_mbps": 8.0, "bandwidth_down_mbps": 80.0, "rtt_ms": 10.0, "per_message_ms": 2.0, "source": "flags"}
    with pytest.raises(CogentError, match="per message"):
        Link(8e6, 0.01, per_message_s=-1.0)


def test_edge_load_multiplies_edge_compute_only(tiny_graph):
    from cogent_compiler.passes import partition_at

    def model(load: float) -> LatencyModel:
        return LatencyModel(ComputeModel("device", 1.0), ComputeModel("edge", 10.0), Link(20e6, 0.01), edge_load=load)

    edge_only = partition_at(tiny_graph, tuple(t.name for t in tiny_graph.inputs))
    idle, busy = model(1.0).estimate(edge_only), model(3.0).estimate(edge_only)
    assert busy.edge_ms == pytest.approx(3 * idle.edge_ms)
    assert (busy.device_ms, busy.transfer_ms) == (idle.device_ms, idle.transfer_ms)
    assert model(3.0).to_json()["edge_load"] == 3.0
    with pytest.raises(CogentError, match="slowdown factor"):
        model(0.0)
