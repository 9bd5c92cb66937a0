"""`cogentc profile --peer` through an emulated 20 Mbit/s link measures 20 Mbit/s each way."""

from __future__ import annotations

import json
import subprocess
import sys

from edge_support import edge_argv, repo_env, start_edge_process, stop_edge_process, write_empty_edge
from testbed_support import leftover_names, needs_root

from cogent_compiler.runtime.protocol import DEFAULT_PORT
from cogent_compiler.testbed import LinkSpec, Testbed

pytestmark = needs_root


def test_profile_peer_measures_the_shaped_link(tmp_path):
    bundle = write_empty_edge(tmp_path / "edge")
    out = tmp_path / "link.json"
    with Testbed(LinkSpec(20e6), device_quota=None) as tb:
        edge, _, _ = start_edge_process(tb.edge_cmd(edge_argv(bundle, host="0.0.0.0", port=DEFAULT_PORT)))
        try:
            run = subprocess.run(tb.device_cmd([sys.executable, "-m", "cogent_compiler.cli", "profile", "--peer", f"{tb.edge_ip}:{DEFAULT_PORT}",
                                                "-o", str(out), "--sizes", "64k,256k,1m", "--repeats", "3", "--json"]),
                                 capture_output=True, text=True, env=repo_env(), timeout=120)
        finally:
            stop_edge_process(edge)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    up, down = summary["bandwidth_up_bps"] / 1e6, summary["bandwidth_down_bps"] / 1e6
    print(f"20mbit tbf: up {up:.2f} Mbit/s, down {down:.2f} Mbit/s, RTT {summary['rtt_s'] * 1e3:.3f} ms, "
          f"per message {summary['per_message_s'] * 1e3:.3f} ms")
    assert 16 <= up <= 24 and 16 <= down <= 24, summary
    assert 0 < summary["rtt_s"] < 0.05
    assert json.loads(out.read_text())["schema"] == "cogent-link/1"
    assert not leftover_names()
