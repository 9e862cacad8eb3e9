"""One rank's series, as the health rules see them: loaded once, lazily, in blocks.

Per-parameter series are reduced to what the rules need (norms, counts, whether a
digest changed) so that a long run does not have to fit in memory as raw statistics.
"""
from __future__ import annotations

from functools import cached_property
from typing import Optional

import numpy as np

from distcheck.store import schema
from distcheck.store.reader import DumpReader
from distcheck.store.schema import ParamInfo

BLOCK = 1024
_COL = {name: i for i, name in enumerate(schema.STAT_COLUMNS)}
_SCALED = ("l2", "mean", "min", "max")  # statistics a loss scale multiplies
#: The statistics the rules read over whole runs, per kind (read together).
_USED = {"param": ("l2", "delta_l2"), "grad": ("l2", "nan", "inf")}


class RankData:
    def __init__(self, reader: DumpReader) -> None:
        self.reader = reader
        self.rank = reader.rank
        self.params: list[ParamInfo] = reader.params
        self.steps: np.ndarray = reader.steps
        self.meta: dict = reader.meta

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

    def column(self, kind: str, stat: str) -> np.ndarray:
        """(N, P) one statistic of every parameter (or gradient) at every step. The
        statistics the rules use of a kind (:data:`_USED`) are read together, in one
        pass over the blocks, and only they are kept. Gradient magnitudes are unscaled:
        divided by the optimizer's loss scale (see ``grad_scale``)."""
        cache = self.__dict__.setdefault("_column_cache", {})
        if (kind, stat) not in cache:
            wanted = tuple(dict.fromkeys((*_USED.get(kind, ()), stat)))
            n = self.reader.n_steps
            out = {name: np.empty((n, len(self.params)), np.float32) for name in wanted}
            for start in range(0, n, BLOCK):
                block = self.reader.stats(kind, start, start + BLOCK)
                for name, values in out.items():  # plain strided copies, straight into place
                    values[start:start + len(block)] = block[:, :, _COL[name]]
            for name, values in out.items():
                if kind == "grad" and name in _SCALED and self.grad_scale != 1.0:
                    values /= np.float32(self.grad_scale)
                cache.setdefault((kind, name), values)
        return cache[(kind, stat)]

    def row(self, kind: str, index: int, stats: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The statistics ``stats`` of every parameter at row ``index`` alone."""
        block = self.reader.stats(kind, index, index + 1)[0]
        values = {stat: block[:, _COL[stat]] for stat in stats}
        if kind == "grad" and self.grad_scale != 1.0:
            values = {k: v / np.float32(self.grad_scale) if k in _SCALED else v for k, v in values.items()}
        return values

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
    def sizes(self) -> np.ndarray:
        return np.array([max(p.size, 1) for p in self.params], np.float64)

    @cached_property
    def changed(self) -> np.ndarray:
        """(P,) bool: the parameter's bytes changed at some recorded step after the first.
        Those whose last digest differs from the first changed; only if some do not are
        the steps in between read."""
        n = self.reader.n_steps
        if n < 2:
            return np.zeros(len(self.params), bool)
        out = np.any(self.reader.digests("param", 0, 1)[0] != self.reader.digests("param", n - 1, n)[0], axis=-1)
        if out.all():
            return out
        previous = None
        for start in range(0, self.reader.n_steps, BLOCK):
            block = self.reader.digests("param", start, start + BLOCK)
            if previous is not None:
                block = np.concatenate([previous[None], block])
            if len(block) > 1:
                out |= np.any(block[1:] != block[:-1], axis=(0, 2))
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
