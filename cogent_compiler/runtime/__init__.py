"""What runs inside the bundle's containers: protocol, executor, edge server, device client.

Only numpy and the TVM *runtime* are used here, never torch or the TVM
compiler; tvm itself is imported only when a half with a module is loaded.
Names are loaded lazily (PEP 562) so that ``import cogent_compiler.runtime``
costs almost nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Manifest": "cogent_compiler.runtime.manifest",
    "TensorSpec": "cogent_compiler.runtime.manifest",
    "ModuleSpec": "cogent_compiler.runtime.manifest",
    "load_manifest": "cogent_compiler.runtime.manifest",
    "sha256_file": "cogent_compiler.runtime.manifest",
    "Frame": "cogent_compiler.runtime.protocol",
    "EdgeLoad": "cogent_compiler.runtime.protocol",
    "Half": "cogent_compiler.runtime.executor",
    "EdgeServer": "cogent_compiler.runtime.edge",
    "LoadMeter": "cogent_compiler.runtime.edge",
    "serve": "cogent_compiler.runtime.edge",
    "DeviceClient": "cogent_compiler.runtime.device",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cogent_compiler.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
