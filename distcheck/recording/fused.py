"""One pass over a tensor for its digest and all its statistics, in a small compiled kernel.

numpy and the xxhash package need a pass each for the digest and for every statistic
(sum, dot, min, max), and three more to measure an update against the kept copy
(subtract, dot, copy back): about nine passes over a parameter. The kernels of
``fused.c`` feed the tensor to xxh3-128 in 16 KB blocks (xxHash's own header, vendored
in ``xxhash/``) and take each block's statistics while it is still in the core's cache;
for a parameter they also compare it with the kept copy and overwrite that copy. Memory
is read once. The digest is the xxhash package's ``xxh3_128_intdigest``, bit for bit (a
test checks it).

The C file is compiled when distcheck is installed (``setup.py``: an optional extension,
``distcheck/recording/_fused*.so``, for an editable install as for any other) and loaded
here with ctypes from the package's own directory, and from nowhere else: nothing is
compiled at run time, and nothing is loaded from a directory another user can write.
No import cost, no memory beyond the library's few kilobytes. The library records the
sources it was built from; one built from another ``fused.c`` than the one beside it is
refused (reinstall to rebuild it). Where it was not built (no C compiler at install
time), every tensor takes the numpy path (:func:`distcheck.digest.digest` and
:func:`distcheck.digest.stats`): the same digests and statistics, slower, and the
recorder logs :func:`why_not` once.

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
import sysconfig
import threading
from typing import Callable, Optional

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The sources, installed beside the library; setup.py's ``source_key`` hashes the same two.
SOURCES = (os.path.join(_HERE, "fused.c"), os.path.join(_HERE, "xxhash", "xxhash.h"))
#: The library built at install time, with the suffix setuptools gives extensions.
LIBRARY = os.path.join(_HERE, "_fused" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
#: Kernels by element dtype; bfloat16 arrives as its uint16 bits and is told by name.
_NAMES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}
_BF16 = "bf16"
_POINTER = ctypes.c_void_p

_library: Optional[ctypes.CDLL] = None
_kernels: dict[str, Callable] = {}
_tried = False
_why_not = ""
_lock = threading.Lock()


def source_key() -> Optional[str]:
    """sha256 (16 hex digits) of the installed ``fused.c`` and xxHash header, as setup.py
    records it in the library; None where the sources are not installed."""
    digest = hashlib.sha256()
    try:
        for path in SOURCES:
            with open(path, "rb") as fh:
                digest.update(fh.read())
    except OSError:
        return None
    return digest.hexdigest()[:16]


def _load(path: str) -> ctypes.CDLL:
    """The library at ``path`` with its kernels bound; ValueError if it was built from
    other sources than the installed ones."""
    lib = ctypes.CDLL(path)
    lib.fused_source.restype = ctypes.c_char_p
    built_from = lib.fused_source().decode()
    expected = source_key()
    if expected is not None and built_from != expected:
        raise ValueError(f"{path} was built from another fused.c ({built_from}, not {expected}); "
                         "reinstall distcheck (pip install -e . in a checkout) to rebuild it")
    for name in (*_NAMES.values(), _BF16):
        kernel = getattr(lib, f"{name}_digest_summary")
        kernel.argtypes = [_POINTER, _POINTER, ctypes.c_size_t, _POINTER, _POINTER]
        kernel.restype = None
        _kernels[name] = kernel
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The kernels built at install time, or None (then :func:`why_not` says why). Loaded
    once per process, from :data:`LIBRARY` only."""
    global _library, _tried, _why_not
    with _lock:
        if not _tried:
            _tried = True
            if not os.path.isfile(LIBRARY):
                _why_not = (f"the one-pass kernel was not built when distcheck was installed (no C compiler "
                            f"then?): no {os.path.basename(LIBRARY)}; reinstalling where `cc` works builds it")
                return None
            try:
                _library = _load(LIBRARY)
            except (OSError, AttributeError, ValueError) as exc:  # the numpy path still works
                _kernels.clear()
                _why_not = f"cannot load the one-pass kernel: {exc}"
        return _library


def why_not() -> str:
    """Why :func:`library` is None, in one line ("" while it is not)."""
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
