"""Emulate a device-edge deployment on one Linux machine.

Two network namespaces (device, edge) joined by a veth pair whose two ends
are shaped with ``tbf`` (the uplink on the device's end, the downlink on the
edge's), the device and edge pinned to different cores, and the device held
to a CPU quota with cgroup v1 (``cpu.cfs_quota_us`` over a short period so
latency is not dominated by throttling bursts) -- or, with
``device_sched="repeat"``, slowed by running each inference's compute
``round(1 / quota)`` times (``slowdown.py``), which slows short work too (a
quota lets 1 ms of work per period run at full speed).

Everything is undone on exit, on an exception, on SIGINT/SIGTERM, and — for
what a killed process left — by ``cleanup_stale`` at the next start: every
name carries the owning pid.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from cogent_compiler.errors import CogentError

__all__ = ["TestbedError", "LinkSpec", "Testbed", "cleanup_stale", "require_root", "CGROUP_CPU"]

log = logging.getLogger(__name__)

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
PREFIX = "cgnt"
#: how the device is slowed: a cgroup CPU quota, or each inference's compute repeated 1 / quota times
DEVICE_SCHEDS = ("quota", "repeat")


def tbf_burst(rate_bps: int) -> int:
    """The token bucket of a ``rate_bps`` link: 1 ms of bytes, at least two full-size frames.

    The bucket is what passes at line speed after a pause, and the runtime's
    requests come after pauses (the device computing): a first version gave
    it 10 ms of bytes (at least 32 KiB), and at 100 Mbit/s a whole 96 KiB
    tensor slipped through in the burst -- the "100 Mbit/s" link moved it
    in a fraction of the 7.9 ms a real one takes.
    """
    return max(2 * 1514, rate_bps // 8 // 1000)


class TestbedError(CogentError):
    """The emulated deployment could not be set up."""


@dataclass(frozen=True)
class LinkSpec:
    """The emulated link: rate in bit/s each way and added round-trip delay in s."""

    bandwidth_bps: float
    rtt_s: float = 0.0


def require_root(what: str = "the testbed") -> None:
    if os.geteuid() != 0:
        raise TestbedError(f"{what} needs root (network namespaces, tc, cgroups); run it as root or with sudo")
    for tool in ("ip", "tc", "taskset"):
        if shutil.which(tool) is None:
            raise TestbedError(f"{what} needs `{tool}`; install iproute2 and util-linux (Debian: apt-get install iproute2 util-linux)")


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise TestbedError(f"`{' '.join(cmd)}` failed: {r.stderr.strip() or r.stdout.strip()}")
    return r


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_names() -> list[str]:
    r = _run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    procs = path / "cgroup.procs"
    for _ in range(50):
        pids = [int(p) for p in procs.read_text().split()] if procs.exists() else []
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    try:
        path.rmdir()
    except OSError as e:
        log.warning("could not remove cgroup %s: %s", path, e)


def cleanup_stale() -> list[str]:
    """Remove namespaces and cgroups left by testbeds whose process is gone; return their names."""
    removed = []
    for ns in _netns_names():
        parts = ns.split("-")
        if len(parts) == 3 and parts[0] == PREFIX and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            # the veth pair goes with the namespace
            _run("ip", "netns", "del", ns, check=False)
            removed.append(ns)
    if CGROUP_CPU.is_dir():
        for cg in CGROUP_CPU.glob(f"{PREFIX}-*"):
            parts = cg.name.split("-")
            if len(parts) >= 2 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                _remove_cgroup(cg)
                removed.append(cg.name)
    return removed


class Testbed:
    """A device namespace and an edge namespace joined by a shaped link.

    Use as a context manager.  ``device_cmd`` and ``edge_cmd`` wrap a command
    so that it runs in the right namespace, on the right core, and (device) in
    the quota cgroup from its first instruction.
    """

    __test__ = False  # not a pytest test class
    _count = 0

    def __init__(
        self,
        link: LinkSpec,
        *,
        device_quota: float | None = 0.1,
        device_cpu: int = 0,
        edge_cpu: int = 1,
        period_us: int = 10_000,
        subnet: str = "10.213.0",
        device_sched: str = "quota",
    ) -> None:
        if link.bandwidth_bps <= 0:
            raise TestbedError(f"bandwidth must be positive, got {link.bandwidth_bps} bit/s")
        if device_quota is not None and not 0.001 <= device_quota <= os.cpu_count():  # type: ignore[operator]
            raise TestbedError(f"device quota {device_quota} is out of range; give a fraction of one core such as 0.1")
        if device_sched not in DEVICE_SCHEDS:
            raise TestbedError(f"device_sched {device_sched!r}: choose {' or '.join(DEVICE_SCHEDS)}")
        if device_sched == "repeat" and not (device_quota is not None and device_quota <= 1.0):
            raise TestbedError(f"device_sched 'repeat' emulates a device slower than one core; give a device quota in (0, 1], not {device_quota}")
        ncpu = os.cpu_count() or 1
        if max(device_cpu, edge_cpu) >= ncpu:
            raise TestbedError(f"cores {device_cpu} and {edge_cpu} requested but this machine has {ncpu}")
        self.link = link
        self.device_quota = device_quota
        self.device_sched = device_sched
        self.device_cpu = device_cpu
        self.edge_cpu = edge_cpu
        self.period_us = period_us
        # every name carries the owner's pid so cleanup_stale can tell live testbeds from leftovers
        Testbed._count += 1
        n = Testbed._count % 1000
        pid = os.getpid()
        self.device_ns = f"{PREFIX}-{pid}-d{n:03d}"
        self.edge_ns = f"{PREFIX}-{pid}-e{n:03d}"
        self.device_if = f"cgd{pid % 100000}x{n}"[:15]
        self.edge_if = f"cge{pid % 100000}x{n}"[:15]
        self.device_ip = f"{subnet}.1"
        self.edge_ip = f"{subnet}.2"
        self.cgroup = CGROUP_CPU / f"{PREFIX}-{pid}-{n:03d}"
        self._active = False
        self._old_handlers: dict[int, object] = {}

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> Testbed:
        require_root()
        cleanup_stale()
        self._install_signal_handlers()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM,):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: rely on the context manager
                pass

    def _setup(self) -> None:
        self._active = True
        _run("ip", "netns", "add", self.device_ns)
        _run("ip", "netns", "add", self.edge_ns)
        _run("ip", "link", "add", self.device_if, "type", "veth", "peer", "name", self.edge_if)
        for ns, ifname, ip in ((self.device_ns, self.device_if, self.device_ip), (self.edge_ns, self.edge_if, self.edge_ip)):
            _run("ip", "link", "set", ifname, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifname)
            _run("ip", "-n", ns, "link", "set", ifname, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            rate = int(self.link.bandwidth_bps)
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", ifname, "root", "tbf",
                 "rate", f"{rate}bit", "burst", str(tbf_burst(rate)), "latency", "400ms")
        if self._uses_cgroup:
            if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
                raise TestbedError(f"no cgroup v1 cpu controller at {CGROUP_CPU}; a CPU quota cannot be set on this kernel")
            self.cgroup.mkdir()
            (self.cgroup / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.cgroup / "cpu.cfs_quota_us").write_text(str(max(1000, int(self.period_us * self.device_quota))))
        log.info("testbed up: %s (%s) <-> %s (%s), %.1f Mbit/s, device quota %s",
                 self.device_ns, self.device_ip, self.edge_ns, self.edge_ip, self.link.bandwidth_bps / 1e6, self.device_quota)

    def close(self) -> None:
        if self._active:
            if self._uses_cgroup:
                _remove_cgroup(self.cgroup)
            for ns in (self.device_ns, self.edge_ns):
                if ns in _netns_names():
                    _run("ip", "netns", "del", ns, check=False)
            self._active = False
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old_handlers.clear()

    # -- running things ----------------------------------------------------
    @property
    def _uses_cgroup(self) -> bool:
        return self.device_quota is not None and self.device_sched == "quota"

    @property
    def slowdown(self) -> int:
        """``repeat``: how many times each inference's compute runs."""
        return max(1, round(1.0 / self.device_quota)) if self.device_quota else 1

    def device_cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in the device namespace, on the device core, under the quota (``repeat``: a ``python -m`` command, slowed)."""
        if self.device_sched == "repeat":
            if len(argv) < 3 or argv[1] != "-m":
                raise TestbedError(f"device_sched 'repeat' slows Python modules (python -m MODULE ...), not {' '.join(argv[:3])}")
            argv = [argv[0], "-m", "cogent_compiler.testbed.slowdown", str(self.slowdown), *argv[2:]]
        cmd = ["ip", "netns", "exec", self.device_ns, "taskset", "-c", str(self.device_cpu), *argv]
        if self._uses_cgroup:
            # join the cgroup before `ip netns exec`, which remounts /sys for the namespace
            cmd = ["sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
        return cmd

    def edge_cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in the edge namespace on the edge core (no quota)."""
        return ["ip", "netns", "exec", self.edge_ns, "taskset", "-c", str(self.edge_cpu), *argv]

    def netns_path(self, role: str) -> str:
        return f"/run/netns/{self.device_ns if role == 'device' else self.edge_ns}"
