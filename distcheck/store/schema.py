"""The dump format: one HDF5 file per rank. ``docs/format.md`` documents it for users.

Names of files, groups and datasets live here and nowhere else, so the writer and
the reader cannot drift apart.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import numpy as np

from distcheck.digest import STAT_NAMES

FORMAT = "distcheck.dump"
VERSION = 2
#: Oldest version a reader still reads (missing datasets get their defaults).
OLDEST_VERSION = 1

#: Steps per HDF5 chunk and per buffered write.
BLOCK = 64

FILE_PATTERN = re.compile(r"^rank_(\d{5})\.h5$")

# Per-step datasets, shape (N, ...).
STEP = "steps/step"  # run step: strictly increasing across segments (see docs/format.md)
SEGMENT = "steps/segment"  # which training segment (Model.train call, restarted counter) the row is from
TIME = "steps/time"
LOSS = "steps/loss"
HAS = "steps/has"
BATCH_DIGEST = "steps/batch_digest"
ROLLUP = "steps/rollup"  # (N, 2 kinds, 2 words): digest of all param digests, of all grad digests
KINDS = ("param", "grad")
HEARTBEAT = "heartbeat"  # (H, 4): see HEARTBEAT_COLUMNS
HEARTBEAT_COLUMNS = ("time", "step", "phase", "since")
STATUS = "status"  # (1,) int8, see Status
STATUS_MESSAGE = "status_message"  # (1,) fixed bytes
STATUS_SIGNAL = "status_signal"  # (1,) int32: the signal that ended the rank, 0 if none
# What kind of difference the online check found before it stopped the job (--fail-fast):
# one JSON object (distcheck.difference.Difference plus step, param, rank), empty if none.
ONLINE_DIFFERENCE = "online/difference"  # (1,) fixed bytes
ONLINE_DIFFERENCE_BYTES = 2048
# Python stacks of the main thread, taken while the rank made no progress.
STACK_TIME = "stacks/time"  # (S,) float64
STACK_STEP = "stacks/step"  # (S,) int64: last completed step
STACK_PHASE = "stacks/phase"  # (S,) int8: Phase
STACK_TEXT = "stacks/text"  # (S,) fixed bytes, innermost frame last
STACK_BYTES = 8192
# Replica groups: which ranks must hold identical copies of each parameter (see
# distcheck.replicas). Written when known: at the start, or once the layout is compiled.
REPLICA_GROUP = "params/replica_group"  # (P,) int16: row of REPLICA_MEMBERS, -1 unknown
REPLICA_MEMBERS = "replicas/members"  # (MAX_GROUPS, ceil(world / 8)) uint8: np.packbits of membership
REPLICA_SOURCE = "replicas/source"  # (MAX_GROUPS,) int8: distcheck.replicas.Source, 0 for an unused row
MAX_GROUPS = 64  # distinct replica groups one rank records; parameters beyond are "unknown"
# Training steps that applied no update because a dynamic loss scale found an overflow.
SKIPPED = "skipped/after"  # (K,) int64: the run step of the last update before each skipped step
FULL = "full"

INPUT_STATS = "steps/input_stats"  # (N, 7): the first floating tensor of the batch
INPUT_COUNTS = "steps/input_counts"  # (N, 3) int64: its NaN, Inf and element counts, exact
LABEL_STATS = "steps/label_stats"  # (N, 4): the last integer tensor of the batch
LABEL_COUNTS = "labels/counts"  # (MAX_CLASSES + 1,): running class histogram, last bucket "other"
ACT_STATS = "act/stats"  # (N, A, 4)

#: Per-parameter statistic columns: the tensor's own, then the L2 norm of its change
#: since the previous recorded step (parameters only).
STAT_COLUMNS = STAT_NAMES + ("delta_l2",)
INPUT_COLUMNS = ("min", "max", "mean", "std", "nan", "inf", "size")
#: Counts are also kept as integers (``{kind}/counts``, ``steps/input_counts``): float32
#: statistics count exactly only up to 2**24.
COUNT_COLUMNS = ("nan", "inf")
INPUT_COUNT_COLUMNS = ("nan", "inf", "size")
LABEL_COLUMNS = ("min", "max", "mean", "purity")
ACT_COLUMNS = ("saturated", "zero", "mean", "absmax")
MAX_CLASSES = 1024

# Bits of ``steps/has``.
HAS_PARAMS, HAS_GRADS, HAS_LOSS, HAS_BATCH, HAS_ACTS = 1, 2, 4, 8, 16

STATUS_MESSAGE_BYTES = 512


class Status(enum.IntEnum):
    """How a rank's dump was closed (dataset ``status``)."""

    RUNNING = 0  #: still open, or the process died without a chance to say anything
    FINISHED = 1  #: closed cleanly at the end of training
    ABORTED = 2  #: an exception, or an exit before training ended; the message says which
    TERMINATED = 3  #: a signal (SIGTERM, SIGINT) ended the rank; ``status_signal`` says which
    RECORDING_STOPPED = 4  #: the probe failed and stopped recording; training went on without it

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


#: How an ABORTED dump's message starts when the online check stopped the job (--fail-fast).
FAIL_FAST_MESSAGE = "fail-fast: "


class Phase(enum.IntEnum):
    """Where a rank's main thread is, as its heartbeats say (column ``phase``)."""

    UNKNOWN = -1  #: version 1 dumps
    STARTING = 0  #: before the first step: building, compiling, loading
    STEP = 1  #: inside the training step: forward, backward, collectives, update
    DATA = 2  #: fetching the next batch from the data pipeline
    CALLBACKS = 3  #: in the training script's own callbacks
    PROBE = 4  #: distcheck's own recording or online check
    LOOP = 5  #: a custom training loop's own code between two recorded steps
    FINISHED = 6  #: training has ended

    @property
    def label(self) -> str:
        return _PHASE_LABELS[self]


_PHASE_LABELS = {
    Phase.UNKNOWN: "unknown",
    Phase.STARTING: "starting up (before the first step)",
    Phase.STEP: "in the training step (where the collectives run)",
    Phase.DATA: "waiting for the next batch from the data pipeline",
    Phase.CALLBACKS: "in the training script's callbacks",
    Phase.PROBE: "in distcheck's recording",
    Phase.LOOP: "in the training loop's own code",
    Phase.FINISHED: "finished training",
}


def step_layout(n_params: int, n_acts: int) -> dict[str, tuple[tuple[int, ...], np.dtype, object]]:
    """Every per-step dataset: path -> (shape of one row, dtype, value when absent)."""
    layout = {
        STEP: ((), np.int64, 0),
        SEGMENT: ((), np.int32, 0),
        TIME: ((), np.float64, 0.0),
        LOSS: ((), np.float64, np.nan),
        HAS: ((), np.uint8, 0),
        BATCH_DIGEST: ((2,), np.uint64, 0),
        ROLLUP: ((len(KINDS), 2), np.uint64, 0),
        INPUT_STATS: ((len(INPUT_COLUMNS),), np.float32, np.nan),
        INPUT_COUNTS: ((len(INPUT_COUNT_COLUMNS),), np.int64, 0),
        LABEL_STATS: ((len(LABEL_COLUMNS),), np.float32, np.nan),
        ACT_STATS: ((n_acts, len(ACT_COLUMNS)), np.float32, np.nan),
    }
    for kind in KINDS:
        layout[digests_path(kind)] = ((n_params, 2), np.uint64, 0)
        layout[stats_path(kind)] = ((n_params, len(STAT_COLUMNS)), np.float32, np.nan)
        layout[counts_path(kind)] = ((n_params, len(COUNT_COLUMNS)), np.int64, 0)
    return layout


def file_name(rank: int) -> str:
    return f"rank_{rank:05d}.h5"


#: Per-step datasets that version 1 dumps lack, and the value they read as.
ADDED_IN_2 = {SEGMENT: 0}
#: Optional per-step datasets added within version 2: older dumps of that version lack them.
OPTIONAL_IN_2 = frozenset({INPUT_COUNTS, *(f"{kind}/counts" for kind in KINDS)})


def digests_path(kind: str) -> str:
    return f"{kind}/digest"


def stats_path(kind: str) -> str:
    return f"{kind}/stats"


def counts_path(kind: str) -> str:
    return f"{kind}/counts"


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


# Files beside the dumps, each a small JSON document (see docs/format.md).
JOB_FILE = "job.json"  # written by `distcheck launch`: the command, and how the job ended
ENDS_DIR = "ends"  # one file per training process, written by its supervisor when it exits


def end_file_name(hostname: str, pid: int) -> str:
    return f"{hostname}-{pid}.json"
