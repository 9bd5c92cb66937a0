"""What machine a measurement ran on, for benchmark JSON."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from importlib import metadata
from typing import Any

__all__ = ["machine_info"]


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("torch", "apache-tvm", "apache-tvm-ffi", "onnxruntime", "numpy")},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
