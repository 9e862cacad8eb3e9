"""The dump format: one HDF5 file per rank. ``docs/format.md`` documents it for users.

Names of files, groups and datasets live here and nowhere else, so the writer and
the reader cannot drift apart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

FORMAT = "distcheck.dump"
VERSION = 1

#: Steps per HDF5 chunk and per buffered write.
BLOCK = 64

FILE_PATTERN = re.compile(r"^rank_(\d{5})\.h5$")

# Per-step datasets, shape (N, ...).
STEP = "steps/step"
TIME = "steps/time"
LOSS = "steps/loss"
HAS = "steps/has"
BATCH_DIGEST = "steps/batch_digest"
ROLLUP = "steps/rollup"  # (N, 2 kinds, 2 words): digest of all param digests, of all grad digests
KINDS = ("param", "grad")
HEARTBEAT = "heartbeat"  # (H, 2): unix time, last recorded step
STATUS = "status"  # (1,) int8, see Status
STATUS_MESSAGE = "status_message"  # (1,) fixed bytes
FULL = "full"

# Bits of ``steps/has``.
HAS_PARAMS, HAS_GRADS, HAS_LOSS, HAS_BATCH = 1, 2, 4, 8

STATUS_MESSAGE_BYTES = 512


class Status:
    RUNNING = 0  # still open, or killed without a chance to say anything
    FINISHED = 1  # closed cleanly at the end of training
    ABORTED = 2  # closed on an exception, a signal or an exit in the middle of training

    NAMES = {0: "running", 1: "finished", 2: "aborted"}


def file_name(rank: int) -> str:
    return f"rank_{rank:05d}.h5"


def digests_path(kind: str) -> str:
    return f"{kind}/digest"


def stats_path(kind: str) -> str:
    return f"{kind}/stats"


@dataclass(frozen=True)
class ParamInfo:
    """A parameter as the probe saw it. ``dtype`` is numpy's name, or ``bfloat16``."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool
    has_grad: bool

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n
