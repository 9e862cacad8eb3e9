"""Rules on how the weights move: not at all, too little, too much."""
from __future__ import annotations

import numpy as np

from distcheck.findings import Severity, name_list
from distcheck.rules.rankdata import RankData
from distcheck.rules.registry import finding, rule


@rule("weights_not_updated", Severity.WARNING, "param", "trainable parameters bit-for-bit unchanged through the run")
def weights_not_updated(rank: RankData, settings: dict):
    """
    Phenomenon: a trainable parameter keeps exactly the same bytes at every recorded step:
    it is never updated. Named one by one.

    Likely causes: graph structure (a weight frozen by accident: requires_grad=True but left
    out of the optimizer's parameter list; a branch whose output is unused, so its
    gradient is 0); hyperparameters (learning rate 0); an optimizer built over another
    network's parameters.

    Threshold: bit-exact equality of the digests at every recorded step, over at least
    ``min_steps`` 3 recorded updates (smdebug UnchangedTensor looks at num_steps 3 with a
    tolerance; digests need none).

    Fix: pass every trainable parameter to the optimizer (or set requires_grad=False on
    purpose), check the learning rate, check that the layer is used in construct.
    """
    updates = int(np.count_nonzero(rank.steps > 0))
    if updates < settings["min_steps"]:
        return []
    still = [i for i, p in enumerate(rank.params) if p.trainable and not rank.changed[i]]
    if not still:
        return []
    names = [rank.name(i) for i in still]
    every = "every trainable parameter" if len(still) == sum(p.trainable for p in rank.params) else \
        f"{len(names)} trainable parameter(s)"
    return [finding("weights_not_updated", int(rank.steps[-1]), [rank.rank], names,
                    f"{every} never changed over {updates} recorded update(s): {name_list(names, 10)}. "
                    "Is the learning rate 0, or are they missing from the optimizer?")]


def _update_ratios(rank: RankData) -> tuple[np.ndarray, np.ndarray]:
    """Median |dw|/|w| per weight over recorded steps, and the weight columns."""
    cols = np.array([i for i, p in enumerate(rank.params) if p.trainable and len(p.shape) >= 2], int)
    if not len(cols):
        return np.zeros(0), cols
    delta = rank.column("param", "delta_l2")[:, cols].astype(np.float64)
    norm = rank.column("param", "l2")[:, cols].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(norm > 0, delta / norm, np.nan)
    ratio[~np.isfinite(ratio)] = np.nan
    if not np.isfinite(ratio).any():
        return np.full(len(cols), np.nan), cols
    return np.nanmedian(ratio, axis=0), cols


def _ratio_rule(rank: RankData, settings: dict, code: str, too_small: bool):
    ratio, cols = _update_ratios(rank)
    if not len(cols):
        return []
    if too_small:
        # Exactly 0 is weights_not_updated's finding, stated more precisely there.
        hit = (ratio < settings["threshold"]) & (ratio > 0)
    else:
        hit = ratio > settings["threshold"]
    if not hit.any():
        return []
    names = [rank.name(c) for c in cols[hit]]
    values = ", ".join(f"{rank.name(c)} {r:.2g}" for c, r in zip(cols[hit], ratio[hit]))
    advice = ("The learning rate may be too small, or these layers receive vanishing gradients."
              if too_small else "The learning rate is probably too large for these layers.")
    return [finding(code, None, [rank.rank], names,
                    f"Median update ratio |dw|/|w| per recorded step {'below' if too_small else 'above'} "
                    f"{settings['threshold']:g}: {values}. {advice}")]


@rule("update_ratio_small", Severity.WARNING, "param", "|dw|/|w| per step is tiny: weights change too little")
def update_ratio_small(rank: RankData, settings: dict):
    """
    Phenomenon: weights change too little per step to learn in reasonable time. Measured per
    weight matrix (parameters of 2 or more dimensions) as the median over recorded steps of
    ``|w_s - w_prev| / |w_s|`` (L2 norms; with --every K, per K steps).

    Likely causes: hyperparameters (learning rate too small, weight decay dominating);
    vanishing gradients; a learning-rate schedule that decayed too early.

    Default: threshold 1e-6. MindInsight warns below 1e-4 and smdebug below 1e-8; healthy
    small networks here sit between 1e-4 and 1e-2 per step, and adaptive optimizers late in
    training below 1e-4, so 1e-6 flags only weights that effectively stand still.

    Fix: raise the learning rate, check the schedule, check grad_vanishing.
    """
    return _ratio_rule(rank, settings, "update_ratio_small", too_small=True)


@rule("update_ratio_large", Severity.WARNING, "param", "|dw|/|w| per step is large: weights change too much")
def update_ratio_large(rank: RankData, settings: dict):
    """
    Phenomenon: weights change by a large fraction of their size at every step, so training
    jumps around instead of converging. Same measure as update_ratio_small.

    Likely causes: hyperparameters (learning rate too large, no warm-up); exploding
    gradients; weights initialised near zero (a small |w| inflates the ratio).

    Default: threshold 0.5. MindInsight warns above 1 and smdebug above 10; a weight that
    moves by half its norm every step is already far outside healthy training (1e-4 to 1e-2).

    Fix: lower the learning rate, add warm-up or gradient clipping.
    """
    return _ratio_rule(rank, settings, "update_ratio_large", too_small=False)
