"""A rank's progress in a memory-mapped file: survives SIGKILL, costs a memory write.

The dump receives rows at each flush (every couple of seconds), so a rank killed
without warning loses the steps since its last flush. Its progress (the last
completed step, the phase, and when) is also written, at every step, into a 32-byte
memory-mapped file ``progress/rank_NNNNN.bin`` beside the dumps. The kernel keeps a
dead process's writes to a shared mapping, so the analyzer knows the true last step
of a rank killed with SIGKILL (only the loss of the whole machine loses it).

Layout: little-endian int64 step, int64 phase, float64 since (Unix time the step
completed), float64 updated (Unix time of the last write).
"""
from __future__ import annotations

import mmap
import os
import struct
import time
from typing import NamedTuple, Optional

from distcheck.store.schema import Phase

PROGRESS_DIR = "progress"
_FORMAT = struct.Struct("<qqdd")


class ProgressRecord(NamedTuple):
    step: int
    phase: Phase
    since: float
    updated: float


def progress_path(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, PROGRESS_DIR, f"rank_{rank:05d}.bin")


class ProgressFile:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, _FORMAT.size)
            self._map = mmap.mmap(fd, _FORMAT.size)
        finally:
            os.close(fd)

    def write(self, step: int, phase: Phase, since: float) -> None:
        _FORMAT.pack_into(self._map, 0, step, int(phase), since, time.time())

    def close(self) -> None:
        self._map.close()


def read_progress(run_dir: str, rank: int) -> Optional[ProgressRecord]:
    try:
        with open(progress_path(run_dir, rank), "rb") as fh:
            data = fh.read(_FORMAT.size)
    except OSError:
        return None
    if len(data) < _FORMAT.size:
        return None
    step, phase, since, updated = _FORMAT.unpack(data)
    if updated <= 0:
        return None
    return ProgressRecord(step, Phase(phase) if phase in Phase._value2member_map_ else Phase.UNKNOWN, since, updated)
