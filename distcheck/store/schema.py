"""The dump format: one HDF5 file per rank. ``docs/format.md`` documents it for users.

Names of files, groups and datasets live here and nowhere else, so the writer and
the reader cannot drift apart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from distcheck.digest import STAT_NAMES

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

INPUT_STATS = "steps/input_stats"  # (N, 7): the first floating tensor of the batch
LABEL_STATS = "steps/label_stats"  # (N, 4): the last integer tensor of the batch
LABEL_COUNTS = "labels/counts"  # (MAX_CLASSES + 1,): running class histogram, last bucket "other"
ACT_STATS = "act/stats"  # (N, A, 4)

#: Per-parameter statistic columns: the tensor's own, then the L2 norm of its change
#: since the previous recorded step (parameters only).
STAT_COLUMNS = STAT_NAMES + ("delta_l2",)
INPUT_COLUMNS = ("min", "max", "mean", "std", "nan", "inf", "size")
LABEL_COLUMNS = ("min", "max", "mean", "purity")
ACT_COLUMNS = ("saturated", "zero", "mean", "absmax")
MAX_CLASSES = 1024

# Bits of ``steps/has``.
HAS_PARAMS, HAS_GRADS, HAS_LOSS, HAS_BATCH, HAS_ACTS = 1, 2, 4, 8, 16

STATUS_MESSAGE_BYTES = 512


class Status:
    RUNNING = 0  # still open, or killed without a chance to say anything
    FINISHED = 1  # closed cleanly at the end of training
    ABORTED = 2  # closed on an exception, a signal or an exit in the middle of training

    NAMES = {0: "running", 1: "finished", 2: "aborted"}


def step_layout(n_params: int, n_acts: int) -> dict[str, tuple[tuple[int, ...], np.dtype, object]]:
    """Every per-step dataset: path -> (shape of one row, dtype, value when absent)."""
    layout = {
        STEP: ((), np.int64, 0),
        TIME: ((), np.float64, 0.0),
        LOSS: ((), np.float64, np.nan),
        HAS: ((), np.uint8, 0),
        BATCH_DIGEST: ((2,), np.uint64, 0),
        ROLLUP: ((len(KINDS), 2), np.uint64, 0),
        INPUT_STATS: ((len(INPUT_COLUMNS),), np.float32, np.nan),
        LABEL_STATS: ((len(LABEL_COLUMNS),), np.float32, np.nan),
        ACT_STATS: ((n_acts, len(ACT_COLUMNS)), np.float32, np.nan),
    }
    for kind in KINDS:
        layout[digests_path(kind)] = ((n_params, 2), np.uint64, 0)
        layout[stats_path(kind)] = ((n_params, len(STAT_COLUMNS)), np.float32, np.nan)
    return layout


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
