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
        """(N, P) one statistic of every parameter (or gradient) at every step. Gradient
        magnitudes are unscaled: divided by the optimizer's loss scale (see ``grad_scale``)."""
        return self._columns(kind)[stat]

    @cached_property
    def grad_scale(self) -> float:
        """The factor the recorded gradients carry: the optimizer's own loss scale (1 unless a
        fixed loss scale leaves the unscaling to the optimizer)."""
        optimizer = (self.static or {}).get("optimizer") or {}
        scale = optimizer.get("loss_scale")
        return float(scale) if isinstance(scale, (int, float)) and scale > 0 else 1.0

    def _columns(self, kind: str) -> dict[str, np.ndarray]:
        cache = self.__dict__.setdefault("_column_cache", {})
        if kind not in cache:
            wanted = ("l2", "nan", "inf", "mean", "min", "max", "delta_l2")
            parts: dict[str, list] = {name: [] for name in wanted}
            for start in range(0, self.reader.n_steps, BLOCK):
                block = self.reader.stats(kind, start, start + BLOCK)
                for name in wanted:
                    parts[name].append(block[:, :, _COL[name]])
            p = len(self.params)
            cache[kind] = {name: (np.concatenate(v) if v else np.zeros((0, p), np.float32)) for name, v in parts.items()}
            if kind == "grad" and self.grad_scale != 1.0:
                for name in ("l2", "mean", "min", "max"):
                    cache[kind][name] = cache[kind][name] / np.float32(self.grad_scale)
        return cache[kind]

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
        """(P,) bool: the parameter's bytes changed at some recorded step after the first."""
        out = np.zeros(len(self.params), bool)
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
