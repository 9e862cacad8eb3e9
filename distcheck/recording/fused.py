"""One pass over a tensor for its digest and all its statistics, in a small compiled kernel.

numpy and the xxhash package need a pass each for the digest and for every statistic
(sum, dot, min, max), and three more to measure an update against the kept copy
(subtract, dot, copy back): about nine passes over a parameter. The kernels of
``fused.c`` feed the tensor to xxh3-128 in 16 KB blocks (xxHash's own header, vendored
in ``xxhash/``) and take each block's statistics while it is still in the core's cache;
for a parameter they also compare it with the kept copy and overwrite that copy. Memory
is read once. The digest is the xxhash package's ``xxh3_128_intdigest``, bit for bit (a
test checks it).

The C file is compiled on first use with the system's C compiler (``cc``, or ``$CC``)
into a cache directory (:func:`cache_dirs`: ``$DISTCHECK_CACHE``, else
``~/.cache/distcheck``, else one in the temporary directory), keyed by the sources, the
compiler and the CPU, and loaded with ctypes: no import cost, no memory beyond the
library's few kilobytes. Ranks that start together may each compile; the library is
moved into place atomically. Without a compiler, or where compiling fails, every tensor
takes the numpy path (:func:`distcheck.digest.digest` and
:func:`distcheck.digest.stats`): the same digests and statistics, slower.

Contiguous float32, float64, float16 and bfloat16 tensors take this path (float16 and
bfloat16 widened to float32, as the numpy path does); integers and strided arrays do not.
Sums are partial per lane, so they may differ from numpy's pairwise sums in the last
bits: statistics, not digests. A tensor whose sum is not finite is handed back to the
caller, which counts its NaN and Inf.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Callable, Optional

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_HERE, "fused.c")
_HEADER = os.path.join(_HERE, "xxhash", "xxhash.h")
#: Kernels by element dtype; bfloat16 arrives as its uint16 bits and is told by name.
_NAMES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}
_BF16 = "bf16"
_POINTER = ctypes.c_void_p

_library: Optional[ctypes.CDLL] = None
_kernels: dict[str, Callable] = {}
_tried = False
_why_not = ""
_lock = threading.Lock()


def cache_dirs() -> list[str]:
    """Where the library is built, in order: ``$DISTCHECK_CACHE``, else the user's cache
    (``$XDG_CACHE_HOME/distcheck`` or ``~/.cache/distcheck``), then a directory of this
    user's in the temporary directory, for compute nodes whose home is read-only."""
    configured = os.environ.get("DISTCHECK_CACHE")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    user = getattr(os, "getuid", lambda: "user")()
    return [configured or os.path.join(base, "distcheck"), os.path.join(tempfile.gettempdir(), f"distcheck-{user}")]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _compiler() -> Optional[list[str]]:
    configured = os.environ.get("CC")
    if configured:
        return configured.split()
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return [found] if found else None


def _build(compiler: list[str]) -> str:
    """The path of the compiled library, compiling it if this key has none yet."""
    source = b""
    for path in (SOURCE, _HEADER):
        with open(path, "rb") as fh:
            source += fh.read()
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(b"\0".join([source, version.encode(), _cpu_flags().encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    for directory in cache_dirs():
        built = os.path.join(directory, f"fused-{key}.so")
        if os.path.exists(built):
            return built
    failures = []
    for directory in cache_dirs():
        try:
            os.makedirs(directory, exist_ok=True)
            return _compile(compiler, os.path.join(directory, f"fused-{key}.so"))
        except OSError as exc:  # not writable: the next directory
            failures.append(f"{directory}: {exc.strerror or exc}")
    raise RuntimeError(f"no writable cache directory ({'; '.join(failures)})")


def _compile(compiler: list[str], target: str) -> str:
    handle, partial = tempfile.mkstemp(prefix="fused-", suffix=".so.tmp", dir=os.path.dirname(target))
    os.close(handle)
    try:
        for flags in (["-O3", "-march=native"], ["-O3"]):  # -march=native: clang on some CPUs lacks it
            done = subprocess.run([*compiler, *flags, "-shared", "-fPIC", "-o", partial, SOURCE],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                os.replace(partial, target)
                return target
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "compiler failed")
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or None (then :func:`why_not` says why). Built or loaded once
    per process."""
    global _library, _tried, _why_not
    with _lock:
        if not _tried:
            _tried = True
            compiler = _compiler()
            if compiler is None:
                _why_not = "no C compiler (cc) found"
                return None
            try:
                lib = ctypes.CDLL(_build(compiler))
                for name in (*_NAMES.values(), _BF16):
                    kernel = getattr(lib, f"{name}_digest_summary")
                    kernel.argtypes = [_POINTER, _POINTER, ctypes.c_size_t, _POINTER, _POINTER]
                    _kernels[name] = kernel
                _library = lib
            except Exception as exc:  # the numpy path still works
                _why_not = f"cannot build {SOURCE}: {type(exc).__name__}: {exc}"
        return _library


def why_not() -> str:
    return _why_not


def _kernel(array: np.ndarray, dtype: Optional[str]) -> Optional[Callable]:
    if array.size == 0 or not array.flags.c_contiguous:
        return None
    name = _BF16 if dtype == "bfloat16" and array.dtype == np.uint16 else _NAMES.get(array.dtype)
    return _kernels.get(name) if name else None


def digest_and_summary(array: np.ndarray, kept: Optional[np.ndarray] = None, dtype: Optional[str] = None
                       ) -> Optional[tuple[tuple[int, int], np.ndarray]]:
    """The xxh3-128 digest (low, high) and float64 [min, max, sum, sum of squares, squared
    norm of ``array - kept``] in one pass; with ``kept``, ``array`` is copied into it as the
    pass goes. ``dtype`` "bfloat16" marks uint16 bits as bfloat16. None, with nothing
    done, if the array (or the pair) does not fit."""
    if library() is None:
        return None
    kernel = _kernel(array, dtype)
    if kernel is None:
        return None
    if kept is not None and (kept.dtype != array.dtype or kept.shape != array.shape
                             or not kept.flags.c_contiguous or not kept.flags.writeable):
        return None
    out = np.zeros(5, np.float64)
    words = np.zeros(2, np.uint64)
    kernel(array.ctypes.data, None if kept is None else kept.ctypes.data, array.size, out.ctypes.data,
           words.ctypes.data)
    return (int(words[0]), int(words[1])), out
