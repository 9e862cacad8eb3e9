"""The threads that summarise a step's tensors in parallel.

numpy, xxhash and the one-pass kernel release the GIL, and the training thread waits
for the summaries, so the cores are free: tensors are dealt to a small pool of threads
in batches of about :data:`BATCH_BYTES`.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

from distcheck.recording import fused
from distcheck.recording.options import log

#: Tensors are summarised in parallel batches of about this many bytes.
BATCH_BYTES = 4 << 20
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                       thread_name_prefix="distcheck-summary")
        return _POOL


def warm_up() -> None:
    """Load the one-pass kernels (:mod:`distcheck.recording.fused`) in the background,
    while the framework compiles its graph; say once why not if they are not there."""
    def build() -> None:
        if fused.library() is None:
            log(f"statistics computed with numpy, about 3x slower: {fused.why_not()}")

    _pool().submit(build)


def for_each_tensor(summarise_one: Callable[[int], None], sizes: Sequence[int]) -> None:
    """``summarise_one(i)`` for every tensor ``i`` (of ``sizes[i]`` bytes): on the pool's
    threads when the tensors make more than one batch, else here. Returns when all are
    done."""
    batches = _batches(sizes)
    if len(batches) > 1:
        for _ in _pool().map(lambda batch: [summarise_one(i) for i in batch], batches):
            pass
    else:
        for i in range(len(sizes)):
            summarise_one(i)


def _batches(sizes: Sequence[int]) -> list[list[int]]:
    """Consecutive indices grouped into batches of about ``BATCH_BYTES``."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        current.append(i)
        total += size
        if total >= BATCH_BYTES:
            out.append(current)
            current, total = [], 0
    if current:
        out.append(current)
    return out
