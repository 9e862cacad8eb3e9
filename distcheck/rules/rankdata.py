"""One rank's series, as the health rules see them: loaded once, lazily, in blocks.

Per-parameter series are reduced to what the rules need (norms, counts, whether a
digest changed) so that a long run does not have to fit in memory as raw statistics.
A series several rules derive alike is derived here, once.
"""
from __future__ import annotations

from functools import cached_property
from typing import Optional

import numpy as np
from numpy.lib.stride_tricks import as_strided

from distcheck.store import schema
from distcheck.store.reader import DumpReader
from distcheck.store.schema import ParamInfo

BLOCK = 1024
_COL = {name: i for i, name in enumerate(schema.STAT_COLUMNS)}
_SCALED = ("l2", "mean", "min", "max")  # statistics a loss scale multiplies
#: The statistics the rules read over whole runs, per kind (read together).
_USED = {"param": ("l2", "delta_l2"), "grad": ("l2", "nan", "inf")}
#: Parameter digests of one block and at most this many bytes are read whole: one read
#: costs less than the two of the first and the last row.
_WHOLE_DIGESTS = 1 << 20


class RankData:
    def __init__(self, reader: DumpReader) -> None:
        self.reader = reader
        self.rank = reader.rank
        self.params: list[ParamInfo] = reader.params
        self.steps: np.ndarray = reader.steps
        self.meta: dict = reader.meta
        self._step0_row: Optional[np.ndarray] = None  # kept by the pass over the parameters' statistics

    @property
    def static(self) -> Optional[dict]:
        return self.meta.get("static")

    def name(self, col: int) -> str:
        return self.params[col].name

    @cached_property
    def has(self) -> np.ndarray:
        return self.reader.has()

    @cached_property
    def loss(self) -> np.ndarray:
        """Loss per recorded step; NaN where no loss was recorded (see :attr:`loss_mask`)."""
        return self.reader.loss()

    @cached_property
    def loss_mask(self) -> np.ndarray:
        return (self.has & schema.HAS_LOSS) != 0

    @cached_property
    def training(self) -> np.ndarray:
        """(N,) bool: the row is of a training step (after an update), not step 0."""
        return self.steps > 0

    @cached_property
    def training_loss(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, losses) of the training steps that recorded a loss."""
        ok = self.loss_mask & self.training
        return self.steps[ok], self.loss[ok]

    def column(self, kind: str, stat: str) -> np.ndarray:
        """(N, P) one statistic of every parameter (or gradient) at every step. The
        statistics the rules use of a kind (:data:`_USED`) are read together, in one
        pass over the blocks, and only they are kept (and the parameters' row of step 0,
        :attr:`step0`). Gradient magnitudes are unscaled: divided by the optimizer's loss
        scale (see ``grad_scale``)."""
        cache = self.__dict__.setdefault("_column_cache", {})
        if (kind, stat) not in cache:
            wanted = tuple(dict.fromkeys((*_USED.get(kind, ()), stat)))
            n = self.reader.n_steps
            out = {name: np.empty((n, len(self.params)), np.float32) for name in wanted}
            first = self._step0_index if kind == "param" else None
            for start in range(0, n, BLOCK):
                block = self.reader.stats(kind, start, start + BLOCK)
                for name, values in out.items():  # plain strided copies, straight into place
                    values[start:start + len(block)] = block[:, :, _COL[name]]
                if first is not None and start <= first < start + len(block) and self._step0_row is None:
                    self._step0_row = block[first - start].copy()
            for name, values in out.items():
                if kind == "grad" and name in _SCALED and self.grad_scale != 1.0:
                    values /= np.float32(self.grad_scale)
                cache.setdefault((kind, name), values)
        return cache[(kind, stat)]

    @cached_property
    def _step0_index(self) -> Optional[int]:
        zero = np.flatnonzero(self.steps == 0)
        return int(zero[0]) if len(zero) else None

    @cached_property
    def step0(self) -> Optional[dict[str, np.ndarray]]:
        """(P,) every statistic of every parameter at step 0 (the initial weights), or None
        if step 0 was not recorded. Kept from the pass over the parameters' statistics
        that the update ratios make anyway: one read of the file, not two."""
        if self._step0_index is None:
            return None
        self.column("param", "l2")
        return {stat: self._step0_row[:, i] for stat, i in _COL.items()}

    @cached_property
    def grad_scale(self) -> float:
        """The factor the recorded gradients carry: the optimizer's own loss scale (1 unless a
        fixed loss scale leaves the unscaling to the optimizer)."""
        optimizer = (self.static or {}).get("optimizer") or {}
        scale = optimizer.get("loss_scale")
        return float(scale) if isinstance(scale, (int, float)) and scale > 0 else 1.0

    @cached_property
    def skipped(self) -> np.ndarray:
        """(K,) per training step whose update a loss-scale overflow skipped, the run step
        of the update before it."""
        return self.reader.skipped()

    @cached_property
    def grad_mask(self) -> np.ndarray:
        return (self.has & schema.HAS_GRADS) != 0

    @cached_property
    def batch_mask(self) -> np.ndarray:
        return (self.has & schema.HAS_BATCH) != 0

    @cached_property
    def sizes(self) -> np.ndarray:
        return np.array([max(p.size, 1) for p in self.params], np.float64)

    @cached_property
    def update_ratios(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, ratios (steps, W), weight columns): ``|w_s - w_prev| / |w_prev|`` at each
        recorded step after the first, for weight matrices (2 or more dimensions). NaN where
        the previous norm is 0 (an all-zero start is init_all_zero's finding) or unknown."""
        cols = np.array([i for i, p in enumerate(self.params) if p.trainable and len(p.shape) >= 2], int)
        if not len(cols) or len(self.steps) < 2:
            return np.zeros(0, np.int64), np.zeros((0, len(cols))), cols
        delta = self.column("param", "delta_l2")[1:, cols].astype(np.float64)
        before = self.column("param", "l2")[:-1, cols].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(before > 0, delta / before, np.nan)
        ratio[~np.isfinite(ratio)] = np.nan
        return self.steps[1:], ratio, cols

    @cached_property
    def changed(self) -> np.ndarray:
        """(P,) bool: the parameter's bytes changed at some recorded step after the first.
        Those whose last digest differs from the first changed; only if some do not are
        the steps in between read (a small run's are read whole at once)."""
        n, out = self.reader.n_steps, np.zeros(len(self.params), bool)
        if n < 2:
            return out
        if n > BLOCK or n * len(self.params) * 16 > _WHOLE_DIGESTS:  # 16 bytes a digest
            out = np.any(self.reader.digests("param", 0, 1)[0] != self.reader.digests("param", n - 1, n)[0], axis=-1)
            if out.all():
                return out
        previous = None
        for start in range(0, n, BLOCK):
            block = self.reader.digests("param", start, start + BLOCK)
            if previous is not None:
                block = np.concatenate([previous[None], block])
            if len(block) > 1:
                out |= (block[1:] != block[:-1]).any(axis=0).any(axis=-1)  # one axis at a time: 10x faster
            previous = block[-1]
        return out

    @cached_property
    def input_stats(self) -> np.ndarray:
        return self.reader.input_stats()

    @cached_property
    def label_stats(self) -> np.ndarray:
        return self.reader.label_stats()

    @cached_property
    def label_counts(self) -> np.ndarray:
        return self.reader.label_counts()

    @cached_property
    def act_stats(self) -> np.ndarray:
        return self.reader.act_stats()

    @property
    def activations(self) -> list[tuple[str, str]]:
        return self.reader.activations


def row_nanmedians(rows: np.ndarray) -> np.ndarray:
    """``np.nanmedian(rows, axis=1)`` (NaN for an all-NaN row), by one sort: numpy's own
    goes through masked arrays, a millisecond a call. For rows of finite values and NaN
    (no infinities), the same values: the mean of the middle two, or the middle one."""
    ordered = np.sort(rows, axis=1)  # NaN last
    count = np.isfinite(ordered).sum(axis=1)
    r = np.arange(len(rows))
    return (ordered[r, (count - 1) // 2] + ordered[r, count // 2]) / 2  # an all-NaN row: its last and first


def windows(values: np.ndarray, width: int) -> np.ndarray:
    """(len(values) - width + 1, width) read-only view, row i: ``values[i:i + width]``
    (numpy's sliding_window_view, without its checks: 20 us a call)."""
    return as_strided(values, (len(values) - width + 1, width), values.strides * 2, writeable=False)


def median(values: np.ndarray) -> float:
    """``float(np.median(values))`` of a 1-D array, by a sort: numpy's own costs 20 us a call."""
    ordered = np.sort(values)  # NaN last
    half = len(ordered) // 2
    if not len(ordered) or np.isnan(ordered[-1]):
        return float("nan")
    return float(ordered[half]) if len(ordered) % 2 else float((ordered[half - 1] + ordered[half]) / 2)
