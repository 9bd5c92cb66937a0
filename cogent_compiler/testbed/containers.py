"""Build and run a bundle's container images with podman.

No registry is reachable here, so the base image is made locally with
debootstrap (Debian bookworm: Python 3.11 and numpy, nothing else) and passed
to the bundle's Dockerfiles as ``BASE_IMAGE``; on a machine with a registry
the same Dockerfiles build ``FROM python:3.11-slim``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cogent_compiler.testbed.emulation import TestbedError

__all__ = ["BASE_IMAGE", "podman_available", "ensure_base_image", "build_image", "image_size", "podman"]

log = logging.getLogger(__name__)

BASE_IMAGE = "localhost/cogent-base:bookworm"


def podman_available() -> bool:
    return shutil.which("podman") is not None


def podman(*args: str, check: bool = True, timeout: float | None = 1800) -> subprocess.CompletedProcess[str]:
    if not podman_available():
        raise TestbedError("podman is not installed; install it (Debian: apt-get install podman runc) to build and run bundle containers")
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise TestbedError(f"`podman {' '.join(args[:3])} …` failed: {tail[0]}")
    return r


def ensure_base_image(name: str = BASE_IMAGE) -> str:
    """Return ``name``, making it with debootstrap first if it does not exist yet (about 80 s)."""
    if podman("image", "exists", name, check=False).returncode == 0:
        return name
    if shutil.which("debootstrap") is None:
        raise TestbedError(f"base image {name} is missing and debootstrap is not installed to make it (apt-get install debootstrap)")
    log.info("making base image %s with debootstrap (bookworm, python3, python3-numpy)", name)
    with tempfile.TemporaryDirectory(prefix="cogent-rootfs-") as root:
        r = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-numpy", "bookworm", root],
            capture_output=True, text=True, timeout=1800,
        )
        if r.returncode != 0:
            raise TestbedError(f"debootstrap failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}")
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["podman", "import", "-", name], stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        if imp.returncode != 0:
            raise TestbedError(f"podman import of the base image failed: {imp.stderr.strip()}")
    return name


def build_image(context: Path, *, base_image: str = BASE_IMAGE, tag_prefix: str = "localhost/cogent") -> str:
    """Build ``context`` (a bundle's device/ or edge/ folder); the tag is the manifest's hash."""
    context = Path(context)
    digest = hashlib.sha256((context / "manifest.json").read_bytes() + (context / "Dockerfile").read_bytes()).hexdigest()[:12]
    tag = f"{tag_prefix}-{context.name}:{digest}"
    if podman("image", "exists", tag, check=False).returncode != 0:
        podman("build", "--quiet", "--build-arg", f"BASE_IMAGE={base_image}", "-t", tag, str(context))
    return tag


def image_size(tag: str) -> int:
    """Size in bytes of an image (all layers)."""
    r = podman("image", "inspect", "--format", "{{.Size}}", tag)
    return int(r.stdout.strip())


def run_args(tag: str, *, netns: str, cpus: float | None, cpuset: int, period_us: int = 10_000,
             volumes: Sequence[tuple[str, str]] = (), name: str | None = None, detach: bool = False) -> list[str]:
    """``podman run`` arguments placing a container in a testbed namespace, on a core, with a quota."""
    args = ["run", "--rm", f"--network=ns:{netns}", f"--cpuset-cpus={cpuset}", "-e", "TVM_NUM_THREADS=1"]
    if cpus is not None:
        # `--cpus` alone uses a 100 ms period: a request shorter than the quota then runs unthrottled
        # and the median hides the quota.  Use the testbed's short period instead.
        args += [f"--cpu-period={period_us}", f"--cpu-quota={max(1000, int(cpus * period_us))}"]
    for host, inside in volumes:
        args += ["-v", f"{host}:{inside}"]
    if name:
        args += ["--name", name]
    if detach:
        args.append("-d")
    return [*args, tag]
