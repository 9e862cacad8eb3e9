"""Which layer's output differs first: the forward pass, compared tap by tap.

With ``--activations`` on both runs, each activation cell (a tap) records its output's
statistics at every recorded step: the mean output and the largest absolute output,
over the global batch (:mod:`distcheck.reference.sides` combines the ranks'). They are
the statistics of the forward pass of that step, computed with the weights before its
update, so they part before the gradients do when the difference is in the forward pass
(other data, BatchNorm over another batch), and after, when it is in the backward pass
or the reduction (summed gradients: the forward pass of step 1 agrees).

The taps are taken in the order the dump lists them: the model's cell order, which is
the forward order when the cells are defined in the order they are called. At the first
step where any tap is outside its envelope (the same envelope as every other series),
the first of them is the first layer whose output differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from distcheck.reference import envelope as env
from distcheck.store import schema

_MEAN, _ABSMAX, _ZERO = (schema.ACT_COLUMNS.index(c) for c in ("mean", "absmax", "zero"))


@dataclass(frozen=True)
class LayerParting:
    """At ``step`` (index ``row`` of the compared steps), ``taps`` part, in forward order;
    ``ref``/``run``/``allowed``: the first tap's mean output and envelope there."""

    step: int
    row: int
    taps: list[str]
    statistic: str
    ref: float
    run: float
    allowed: float
    zero_ref: float
    zero_run: float


def act_series(ref: np.ndarray, run: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The judged statistics of aligned (S, A, 4) activation arrays: name -> (ref, run,
    scale). The mean is judged on the scale of the largest output (a mean near zero
    rounds on the scale of its terms)."""
    absmax_ref = np.abs(ref[..., _ABSMAX])
    return {"mean output": (ref[..., _MEAN], run[..., _MEAN], np.fmax(np.abs(ref[..., _MEAN]), absmax_ref)),
            "largest absolute output": (ref[..., _ABSMAX], run[..., _ABSMAX], absmax_ref)}


def first_layer(steps: np.ndarray, taps: list[str], ref: np.ndarray, run: np.ndarray,
                bounds_of: Callable[[str, np.ndarray, np.ndarray], env.Bounds]) -> Optional[LayerParting]:
    """The first step where a tap's output statistics are outside their envelope, and the
    taps that part there (first in forward order), or None. ``bounds_of(name, ref,
    scale)`` gives each statistic's envelope."""
    series = act_series(ref, run)
    judged = {name: (a, b, bounds_of(name, a, scale)) for name, (a, b, scale) in series.items()}
    far = {name: env.outside(a, b, bounds) for name, (a, b, bounds) in judged.items()}
    any_far = np.logical_or.reduce(list(far.values()))
    rows = np.flatnonzero(any_far.any(axis=1))
    if not len(rows):
        return None
    k = int(rows[0])
    parted = np.flatnonzero(any_far[k])
    c = int(parted[0])
    name = next(n for n in judged if far[n][k, c])
    a, b, bounds = judged[name]
    allowed = float(bounds.allowed[k, c])
    return LayerParting(int(steps[k]), k, [taps[i] for i in parted], name, float(a[k, c]), float(b[k, c]),
                        allowed, float(ref[k, c, _ZERO]), float(run[k, c, _ZERO]))
