"""Stage the slim runtime a bundle carries: Cogent's runtime package and the module's runtime.

A container built from a bundle never installs torch or the TVM compiler.  It
gets, under ``runtime/``:

* ``cogent_compiler/`` with only ``__init__.py``, ``errors.py`` and ``runtime/``;
* for a TVM module, ``tvm/`` without ``lib/libtvm_compiler.so`` (260 MB),
  headers, sources and third-party trees, and ``tvm_ffi/`` without headers and
  sources — TVM loads only ``libtvm_runtime.so`` when ``TVM_USE_RUNTIME_LIB=1``;
  ``typing_extensions.py`` (``tvm_ffi`` needs a newer one than Debian 12 has);
  for CUDA, ``libcudart`` beside ``libtvm_runtime_cuda.so`` (found through its
  ``$ORIGIN`` run path); the GPU driver comes from the host;
* for an ONNX Runtime module, ``onnxruntime/`` without its ``tools``,
  ``transformers``, ``quantization``, ``datasets`` and ``backend`` subpackages
  (about 69 MB, nearly all ``libonnxruntime.so``).  Creating and running a CPU
  session imports nothing but numpy and the standard library, so none of its
  declared dependencies (flatbuffers, packaging, protobuf, sympy) is staged.
  ONNX Runtime is staged from the installed package, so only for this
  machine's architecture.

For the host's architecture the files come from the installed packages; for
another (``aarch64`` from an x86 build machine) from the same versions' wheels,
downloaded once into a cache with ``pip download``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path

from cogent_compiler.errors import BundleError

__all__ = ["stage_runtime", "runtime_cache_dir"]

log = logging.getLogger(__name__)

_PKG_ROOT = Path(__file__).resolve().parents[1]
_EXCLUDE = [
    "tvm/lib/libtvm_compiler.so",
    "tvm/3rdparty/*",
    "tvm/src/*",
    "tvm/include/*",
    "tvm/web/*",
    "tvm/*__pycache__*",
    "tvm_ffi/include/*",
    "tvm_ffi/src/*",
    "tvm_ffi/3rdparty/*",
    "tvm_ffi/cython/*",
    "tvm_ffi/*__pycache__*",
    "*.dist-info/*",
]
_CUDA_ONLY = ["tvm/lib/libtvm_runtime_cuda.so"]
_ORT_EXCLUDE = [
    "onnxruntime/tools/*",
    "onnxruntime/transformers/*",
    "onnxruntime/quantization/*",
    "onnxruntime/datasets/*",
    "onnxruntime/backend/*",
    "*__pycache__*",
]


def runtime_cache_dir() -> Path:
    base = os.environ.get("COGENT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cogent")
    return Path(base)


def _keep(rel: str, device: str) -> bool:
    if any(fnmatch.fnmatch(rel, pat) for pat in _EXCLUDE):
        return False
    if device != "cuda" and rel in _CUDA_ONLY:
        return False
    return rel.startswith(("tvm/", "tvm_ffi/"))


def _installed_files() -> Iterator[tuple[str, Path]]:
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        try:
            files = metadata.files(dist) or []
        except metadata.PackageNotFoundError as e:
            raise BundleError(f"{dist} is not installed; install cogent's dependencies (pip install -e .)") from e
        for f in files:
            yield str(f), Path(str(f.locate()))


def _wheel_files(arch: str) -> Iterator[tuple[str, zipfile.ZipFile, str]]:
    cache = runtime_cache_dir() / "wheels" / arch
    cache.mkdir(parents=True, exist_ok=True)
    pins = [f"apache-tvm=={metadata.version('apache-tvm')}", f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"]
    pyver = f"{sys.version_info.major}{sys.version_info.minor}"
    wheels = sorted(cache.glob("*.whl"))
    if len(wheels) < 2:
        log.info("downloading the %s TVM runtime wheels (%s) into %s", arch, ", ".join(pins), cache)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--platform", f"manylinux_2_28_{arch}", "--python-version", pyver, "-d", str(cache), *pins]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise BundleError(f"cannot fetch the {arch} TVM runtime wheels ({tail}); put {' and '.join(pins)} wheels for {arch} in {cache}")
        wheels = sorted(cache.glob("*.whl"))
    for w in wheels:
        zf = zipfile.ZipFile(w)
        for name in zf.namelist():
            yield name, zf, name


def _copy(files: Iterable[tuple[str, Path]], dest: Path, device: str) -> None:
    for rel, src in files:
        if _keep(rel, device) and src.is_file():
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)


def _stage_tvm(dest: Path, arch: str, device: str) -> None:
    if arch == (platform.machine() or "x86_64"):
        _copy(_installed_files(), dest, device)
    else:
        for rel, zf, name in _wheel_files(arch):
            if _keep(rel, device) and not rel.endswith("/"):
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(name))
                if rel.endswith(".so"):
                    out.chmod(0o755)
    import typing_extensions

    shutil.copy2(typing_extensions.__file__, dest / "typing_extensions.py")
    if device == "cuda":
        _stage_cudart(dest / "tvm" / "lib", arch)


def _stage_cudart(libdir: Path, arch: str) -> None:
    """Copy libcudart.so.N (the CUDA runtime TVM's CUDA module links) beside it."""
    if arch != (platform.machine() or "x86_64"):
        raise BundleError(f"a CUDA edge for {arch} cannot be bundled from this machine; build the bundle on {arch}")
    r = subprocess.run(["ldd", str(libdir / "libtvm_runtime_cuda.so")], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("libcudart.so") and len(parts) >= 3 and parts[2] != "not":
            shutil.copy2(parts[2], libdir / parts[0])
            return
    raise BundleError("libcudart for TVM's CUDA runtime was not found; install the CUDA toolkit (nvcc is needed anyway) so ldd finds it")


def _stage_cogent(dest: Path) -> None:
    pkg = dest / "cogent_compiler"
    (pkg / "runtime").mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "errors.py", "py.typed"):
        shutil.copy2(_PKG_ROOT / name, pkg / name)
    for f in sorted((_PKG_ROOT / "runtime").glob("*.py")):
        shutil.copy2(f, pkg / "runtime" / f.name)


def _stage_onnxruntime(dest: Path, arch: str) -> None:
    if arch != (platform.machine() or "x86_64"):
        raise BundleError(
            f"ONNX Runtime for {arch} cannot be bundled from this {platform.machine()} machine; "
            f"compile that half with --backend tvm, or build the bundle on an {arch} machine"
        )
    try:
        files = metadata.files("onnxruntime") or []
    except metadata.PackageNotFoundError as e:
        raise BundleError("onnxruntime is not installed; install cogent's dependencies (pip install -e .) or use --backend tvm") from e
    for f in files:
        rel = str(f)
        src = Path(str(f.locate()))
        if rel.startswith("onnxruntime/") and not any(fnmatch.fnmatch(rel, pat) for pat in _ORT_EXCLUDE) and src.is_file():
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)


def _copy_cached(dest: Path, key: str, stage: Callable[[Path], None]) -> None:
    """Stage into the cache folder ``key`` once (atomically), then copy it into ``dest``."""
    cached = runtime_cache_dir() / "runtime" / key
    if not (cached / ".complete").exists():
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        stage(tmp)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    shutil.copytree(cached, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))


def stage_runtime(dest: Path, *, arch: str, device: str, with_tvm: bool = True, with_onnxruntime: bool = False) -> None:
    """Write the slim runtime for ``arch``/``device`` under ``dest``.

    The TVM runtime (``with_tvm``) and ONNX Runtime (``with_onnxruntime``, CPU
    of this machine's architecture only) are each staged once per (arch,
    device, versions) in the cache and copied from there.  With neither (a half
    with no module) only Cogent's runtime package is staged.  Raises
    ``BundleError`` when a runtime cannot be staged.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _stage_cogent(dest)
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    if with_tvm:
        rules = hashlib.sha256(repr((_EXCLUDE, _CUDA_ONLY)).encode()).hexdigest()[:8]
        key = f"{rules}-tvm-{metadata.version('apache-tvm')}-ffi-{metadata.version('apache-tvm-ffi')}-{py}-{arch}-{device}"
        _copy_cached(dest, key, lambda tmp: _stage_tvm(tmp, arch, device))
    if with_onnxruntime:
        if device != "cpu":
            raise BundleError(f"ONNX Runtime is bundled for CPU halves only, not {device}; compile that half with --backend tvm")
        try:
            version = metadata.version("onnxruntime")
        except metadata.PackageNotFoundError as e:
            raise BundleError("onnxruntime is not installed; install cogent's dependencies (pip install -e .) or use --backend tvm") from e
        rules = hashlib.sha256(repr(_ORT_EXCLUDE).encode()).hexdigest()[:8]
        _copy_cached(dest, f"{rules}-onnxruntime-{version}-{py}-{arch}", lambda tmp: _stage_onnxruntime(tmp, arch))
