from __future__ import annotations

import os
import shutil

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
    reason="the testbed needs root and iproute2 (namespaces, tc); CI runs as root and .ci/run installs iproute2",
)
needs_podman = pytest.mark.skipif(
    shutil.which("podman") is None or shutil.which("debootstrap") is None,
    reason="container tests need podman, runc and debootstrap; .ci/run installs them",
)


def leftover_names() -> list[str]:
    import subprocess
    from pathlib import Path

    ns = [line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines() if line.startswith(f"cgnt-{os.getpid()}-")]
    cg = [p.name for p in Path("/sys/fs/cgroup/cpu").glob(f"cgnt-{os.getpid()}-*")]
    return ns + cg
