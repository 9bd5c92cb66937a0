"""The emulated deployment is real: shaped bandwidth, a slower device, added delay, and nothing left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from testbed_support import leftover_names, needs_podman, needs_root

from cogent_compiler.testbed import LinkSpec, Testbed, cleanup_stale
from cogent_compiler.testbed import TestbedError as BadTestbed

pytestmark = needs_root

SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 9100)); s.listen()
print("ready", flush=True)
c, _ = s.accept()
while True:
    d = c.recv(1 << 20)
    if not d:
        break
c.sendall(b"ok")
"""

SEND = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 9100)); n = 2_500_000
t = time.perf_counter(); s.sendall(b"x" * n); s.shutdown(socket.SHUT_WR); s.recv(2)
print(n * 8 / (time.perf_counter() - t) / 1e6)
"""

#: one 96 KiB message after each pause, answered by one byte: the runtime's pattern (a tensor after the device computed)
ECHO = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 9100)); s.listen()
print("ready", flush=True)
c, _ = s.accept()
while (n := int.from_bytes(c.recv(4, socket.MSG_WAITALL) or bytes(4), "big")):
    c.recv(n, socket.MSG_WAITALL)
    c.sendall(b"k")
"""

MESSAGES = """
import socket, statistics, sys, time
s = socket.create_connection((sys.argv[1], 9100)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ms = []
for _ in range(5):
    time.sleep(0.05)
    t = time.perf_counter(); s.sendall((96 << 10).to_bytes(4, "big") + bytes(96 << 10)); s.recv(1)
    ms.append((time.perf_counter() - t) * 1e3)
s.sendall(bytes(4))
print(statistics.median(ms))
"""

LOOP = "import time; t = time.perf_counter(); sum(range(3 * 10**6)); print(time.perf_counter() - t)"


def _over_20mbit(server: str, client: str) -> float:
    """Run ``server`` on the edge and ``client`` (given the edge's address) on the device of a 20 Mbit/s testbed; the number it prints."""
    with Testbed(LinkSpec(20e6), device_quota=None) as tb:
        sink = subprocess.Popen(tb.edge_cmd([sys.executable, "-c", server]), stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "ready"
        out = float(subprocess.run(tb.device_cmd([sys.executable, "-c", client, tb.edge_ip]), capture_output=True, text=True, check=True).stdout)
        sink.wait(timeout=30)
    return out


def test_link_is_shaped_to_the_bandwidth():
    mbps = _over_20mbit(SINK, SEND)
    assert 14 <= mbps <= 21, f"measured {mbps:.1f} Mbit/s on a 20 Mbit/s link"
    assert not leftover_names()


def test_a_message_after_a_pause_takes_its_time_on_the_wire():
    """The token bucket must not let a whole tensor through at line speed after the device paused to compute."""
    ms = _over_20mbit(ECHO, MESSAGES)
    wire = (96 << 10) * 8 / 20e6 * 1e3  # 39.3 ms
    assert 0.85 * wire <= ms <= 1.5 * wire, f"a 96 KiB message took {ms:.1f} ms on a 20 Mbit/s link ({wire:.1f} ms on the wire)"


def test_device_quota_makes_the_device_slower():
    free = min(float(subprocess.run([sys.executable, "-c", LOOP], capture_output=True, text=True, check=True).stdout) for _ in range(3))
    with Testbed(LinkSpec(100e6), device_quota=0.1) as tb:
        quota = float(subprocess.run(tb.device_cmd([sys.executable, "-c", LOOP]), capture_output=True, text=True, check=True).stdout)
    assert quota / free >= 4, f"10 % quota only slowed a loop {quota / free:.1f}x"


#: wall ms of 0.3 ms of CPU work, the best of 20 tries 20 ms apart (a head computed once per request)
SHORT = """
import time
def work():
    t = time.process_time()
    while time.process_time() - t < 3e-4:
        pass
best = float("inf")
for _ in range(20):
    time.sleep(0.02)
    t = time.perf_counter(); work(); best = min(best, time.perf_counter() - t)
print(best * 1e3)
"""


def test_a_quota_does_not_slow_short_work_so_repeat_mode_exists():
    """A 10 % quota hands out 1 ms per 10 ms: 0.3 ms of work after a pause runs at full speed (why ``device_sched="repeat"``)."""
    with Testbed(LinkSpec(20e6), device_quota=0.1) as tb:
        ms = float(subprocess.run(tb.device_cmd([sys.executable, "-c", SHORT]), capture_output=True, text=True, check=True).stdout)
    assert ms < 1.0
    with Testbed(LinkSpec(20e6), device_quota=0.1, device_sched="repeat") as tb:
        assert tb.slowdown == 10
        assert tb.device_cmd([sys.executable, "-m", "cogent_compiler.runtime.device", "run"])[-4:] == [
            "cogent_compiler.testbed.slowdown", "10", "cogent_compiler.runtime.device", "run"]
        with pytest.raises(BadTestbed, match="slows Python modules"):
            tb.device_cmd([sys.executable, "-c", SHORT])
    with pytest.raises(BadTestbed, match="choose quota or repeat"):
        Testbed(LinkSpec(20e6), device_sched="fifo")


def test_added_delay_through_the_proxy():
    from cogent_compiler.runtime.protocol import DEFAULT_PORT

    echo = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", {DEFAULT_PORT})); s.listen()
print("ready", flush=True)
c, _ = s.accept()
while (d := c.recv(100)):
    c.sendall(d)
"""
    ping = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(5):
    t = time.perf_counter(); s.sendall(b"p"); s.recv(1); rtts.append((time.perf_counter() - t) * 1e3)
print(min(rtts))
"""
    with Testbed(LinkSpec(100e6), device_quota=None) as tb:
        server = subprocess.Popen(tb.edge_cmd([sys.executable, "-c", echo]), stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        proxy = subprocess.Popen(tb.edge_cmd([sys.executable, "-m", "cogent_compiler.testbed.delay", "--listen", f"{tb.edge_ip}:{DEFAULT_PORT + 1}",
                                              "--to", f"{tb.edge_ip}:{DEFAULT_PORT}", "--rtt-ms", "40"]), stdout=subprocess.PIPE, text=True)
        assert "delay proxy" in proxy.stdout.readline()
        direct = float(subprocess.run(tb.device_cmd([sys.executable, "-c", ping, tb.edge_ip, str(DEFAULT_PORT)]), capture_output=True, text=True, check=True).stdout)
        server.wait(timeout=10)
        server = subprocess.Popen(tb.edge_cmd([sys.executable, "-c", echo]), stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        delayed = float(subprocess.run(tb.device_cmd([sys.executable, "-c", ping, tb.edge_ip, str(DEFAULT_PORT + 1)]), capture_output=True, text=True, check=True).stdout)
        proxy.terminate()
        server.kill()
    assert direct < 10
    assert 40 <= delayed <= 80, f"round trip through a +40 ms proxy took {delayed:.1f} ms"


def test_everything_is_removed_after_an_error():
    with pytest.raises(RuntimeError):
        with Testbed(LinkSpec(5e6), device_quota=0.2):
            assert leftover_names()
            raise RuntimeError("boom")
    assert not leftover_names()


CHILD = """
import json, sys, time
from cogent_compiler.testbed import LinkSpec, Testbed
with Testbed(LinkSpec(5e6), device_quota=0.2) as tb:
    print(json.dumps([tb.device_ns, tb.edge_ns, str(tb.cgroup)]), flush=True)
    time.sleep(60)
"""


def _names_exist(names: list[str]) -> list[str]:
    from pathlib import Path

    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [n for n in names[:2] if n in listed] + [n for n in names[2:] if Path(n).exists()]


def test_sigterm_cleans_up_and_a_killed_run_is_cleaned_next_time():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    names = json.loads(child.stdout.readline())
    assert len(_names_exist(names)) == 3
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)
    assert not _names_exist(names)

    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    names = json.loads(child.stdout.readline())
    child.kill()  # SIGKILL: no chance to clean up
    child.wait(timeout=30)
    time.sleep(0.2)
    assert len(_names_exist(names)) == 3
    removed = cleanup_stale()
    assert not _names_exist(names)
    assert set(names[:2]) <= set(removed)


@needs_podman
def test_container_quota_makes_the_device_slower():
    """The device container's quota bites on short requests too (a 100 ms period would hide it)."""
    from cogent_compiler.testbed import containers as ct

    base = ct.ensure_base_image()
    with Testbed(LinkSpec(100e6), device_quota=0.1) as tb:
        def loop_s(cpus):
            args = ct.run_args(base, netns=tb.netns_path("device"), cpus=cpus, cpuset=tb.device_cpu, period_us=tb.period_us)
            return min(float(ct.podman(*args, "python3", "-c", LOOP).stdout) for _ in range(2))

        free, quota = loop_s(None), loop_s(0.1)
    assert quota / free >= 4, f"a 10 % container quota only slowed a loop {quota / free:.1f}x"
