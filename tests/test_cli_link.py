"""`cogentc profile --peer` measures a real edge; `cogentc plan --link-profile` plans with what it wrote."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from edge_support import edge_argv, start_edge_process, stop_edge_process, write_empty_edge

from cogent_compiler.cli import main
from cogent_compiler.cost.link import load_link_profile

PLAN = ["plan", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16"]


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, host, port = start_edge_process(edge_argv(write_empty_edge(tmp_path_factory.mktemp("edge"))))
    yield f"{host}:{port}"
    stop_edge_process(proc)


@pytest.fixture(scope="module")
def link_file(peer: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("link") / "link.json")
    assert main(["profile", "--peer", peer, "-o", path, "--sizes", "64k,1m", "--repeats", "2", "-q"]) == 0
    return path


def test_profile_peer_writes_a_link_profile(peer, tmp_path, capsys):
    out = tmp_path / "link.json"
    assert main(["profile", "--peer", peer, "-o", str(out), "--sizes", "16k,256k", "--repeats", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    profile = load_link_profile(out)
    assert summary["link_profile"] == str(out) and summary["peer"] == peer == profile.peer
    assert summary["bandwidth_up_bps"] == profile.bandwidth_up_bps > 0 and profile.settings["sizes"] == [16 << 10, 256 << 10]
    assert main(["profile", "--peer", peer, "-o", str(out), "--sizes", "16k,256k", "--repeats", "1"]) == 0
    captured = capsys.readouterr()
    assert f"{out}: {peer}: up " in captured.out and "link: probing" in captured.err  # progress through `say`


def test_plan_uses_the_link_profile_and_flags_override_it(link_file, capsys):
    profile = load_link_profile(link_file)
    assert main([*PLAN, "--link-profile", link_file, "--json"]) == 0
    link = json.loads(capsys.readouterr().out)["conditions"]["link"]
    assert link["bandwidth_mbps"] == pytest.approx(profile.bandwidth_up_bps / 1e6)
    assert link["bandwidth_down_mbps"] == pytest.approx(profile.bandwidth_down_bps / 1e6)
    assert link["rtt_ms"] == pytest.approx(profile.rtt_s * 1e3) and link["per_message_ms"] == pytest.approx(profile.per_message_s * 1e3)
    assert link_file in link["source"]

    assert main([*PLAN, "--link-profile", link_file, "--bandwidth", "1mbit", "--edge-load", "2.5", "--json"]) == 0
    conditions = json.loads(capsys.readouterr().out)["conditions"]
    assert (conditions["link"]["bandwidth_mbps"], conditions["link"]["bandwidth_down_mbps"]) == (1.0, 1.0)
    assert conditions["link"]["rtt_ms"] == pytest.approx(profile.rtt_s * 1e3)  # not given: still the profile's
    assert conditions["edge_load"] == 2.5 and "bandwidth, edge load from flags" in conditions["link"]["source"]

    assert main([*PLAN, "--link-profile", link_file]) == 0
    table = capsys.readouterr().out
    assert "link: up " in table and "edge load 1x" in table and link_file in table


def test_plan_without_a_profile_keeps_the_old_defaults(capsys):
    assert main([*PLAN, "--json"]) == 0
    conditions = json.loads(capsys.readouterr().out)["conditions"]
    assert conditions["link"] == {"bandwidth_mbps": 20.0, "bandwidth_down_mbps": 20.0, "rtt_ms": 10.0, "per_message_ms": 0.0, "source": "defaults"}
    assert conditions["edge_load"] == 1.0
    assert main([*PLAN, "--rtt", "30ms", "--json"]) == 0
    link = json.loads(capsys.readouterr().out)["conditions"]["link"]
    assert (link["rtt_ms"], link["bandwidth_mbps"], link["source"]) == (30.0, 20.0, "flags")


@pytest.mark.parametrize(
    "argv,message",
    [
        ([*PLAN, "--link-profile", "/nonexistent/link.json"], "no such link profile; measure one with `cogentc profile --peer"),
        ([*PLAN, "--edge-load", "0"], "is not a slowdown factor"),
        (["profile", "--peer", "127.0.0.1:1", "-o", "/tmp/never.json"], "cannot reach the edge at 127.0.0.1:1"),
        (["profile", "--peer", "host:http", "-o", "/tmp/never.json"], "port 'http' is not a number"),
        (["profile", "--peer", "127.0.0.1:1", "-o", "/tmp/never.json", "--sizes", "0"], "is not a positive size"),
        (["profile", "--peer", "127.0.0.1:1", "-o", "/tmp/never.json", "--only", "conv2d"], "--only belongs to compute profiling"),
    ],
)
def test_link_mistakes_get_one_line(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cogentc: error: ") and message in err and "\n" not in err, err
