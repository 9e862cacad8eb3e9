"""Gradients that differ from the reference by one factor in every parameter.

At the first step both runs recorded gradients, the weights are still those of step 0,
so a correct run's gradients equal the reference's up to rounding. If instead every
parameter's gradient L2 norm is the reference's times one common factor, the gradients
were scaled: the factor says by what, and the loss at that step tells a scaled loss (the
loss scaled too) from a scaled reduction (the loss alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

#: Every parameter's ratio within this relative spread of the common one.
AGREEMENT = 1e-3
#: A factor this close to 1 is no factor.
NEAR_ONE = 1e-2


@dataclass(frozen=True)
class Factor:
    """``value``: run / reference, the same for every parameter at ``step``; ``loss_ratio``
    likewise for the loss (None when unknown); ``through``: the last step up to which
    every parameter's ratio stayed within 10% of ``value``; ``spread`` the largest
    relative deviation of one parameter's ratio at ``step``."""

    step: int
    value: float
    spread: float
    loss_ratio: Optional[float]
    through: int


def common_factor(ref_l2: np.ndarray, run_l2: np.ndarray) -> Optional[tuple[float, float]]:
    """(factor, spread) when every parameter's gradient norm in the run is the reference's
    times one factor (not 1), else None. Parameters with a zero or missing norm are left out."""
    ref_l2, run_l2 = np.asarray(ref_l2, np.float64), np.asarray(run_l2, np.float64)
    ok = np.isfinite(ref_l2) & np.isfinite(run_l2) & (ref_l2 > 0) & (run_l2 > 0)
    if not ok.any():
        return None
    ratios = run_l2[ok] / ref_l2[ok]
    value = float(np.median(ratios))
    spread = float(np.max(np.abs(ratios / value - 1)))
    if spread > AGREEMENT or abs(value - 1) < NEAR_ONE:
        return None
    return value, spread


def find_factor(steps: np.ndarray, ref_l2: np.ndarray, run_l2: np.ndarray, ref_loss: np.ndarray,
                run_loss: np.ndarray) -> Optional[Factor]:
    """The common factor at the first step where both runs have gradients (arrays (S, P)
    of gradient L2 norms and (S,) losses, aligned on ``steps``), or None."""
    have = np.flatnonzero(np.isfinite(ref_l2).any(axis=1) & np.isfinite(run_l2).any(axis=1))
    if not len(have):
        return None
    k = int(have[0])
    found = common_factor(ref_l2[k], run_l2[k])
    if found is None:
        return None
    value, spread = found
    loss_ratio = None
    if np.isfinite(ref_loss[k]) and np.isfinite(run_loss[k]) and ref_loss[k] != 0:
        loss_ratio = float(run_loss[k] / ref_loss[k])
    through = int(steps[k])
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in have[1:]:
            ratios = run_l2[j] / ref_l2[j]
            ratios = ratios[np.isfinite(ratios)]
            if not len(ratios) or np.max(np.abs(ratios / value - 1)) > 0.1:
                break
            through = int(steps[j])
    return Factor(int(steps[k]), value, spread, loss_ratio, through)


def find_update_factor(steps: np.ndarray, ref_grad: np.ndarray, run_grad: np.ndarray, ref_update: np.ndarray,
                       run_update: np.ndarray) -> Optional[Factor]:
    """At the first step where both runs recorded gradients and update norms (arrays (S, P)
    aligned on ``steps``): if the gradients agree (every ratio within :data:`AGREEMENT` of
    1) and every update norm is the reference's times one factor, that factor."""
    have = np.flatnonzero(np.isfinite(ref_update).any(axis=1) & np.isfinite(run_update).any(axis=1)
                          & np.isfinite(ref_grad).any(axis=1) & np.isfinite(run_grad).any(axis=1))
    if not len(have):
        return None
    k = int(have[0])
    ok = np.isfinite(ref_grad[k]) & np.isfinite(run_grad[k]) & (ref_grad[k] > 0)
    if not ok.any() or np.max(np.abs(run_grad[k][ok] / ref_grad[k][ok] - 1)) > AGREEMENT:
        return None
    found = common_factor(ref_update[k], run_update[k])
    if found is None:
        return None
    return Factor(int(steps[k]), found[0], found[1], None, int(steps[k]))


def nearest_ratio(value: float, candidates: dict[str, float]) -> Optional[str]:
    """The name of the candidate ``value`` equals within 1%, if any."""
    for name, c in candidates.items():
        if c > 0 and abs(value / c - 1) < 0.01:
            return name
    return None


def describe(factor: Factor, world_ref: int, world_run: int, gradients_mean_run: Optional[bool]) -> str:
    """What the factor is and its likely causes, in words."""
    ratio = world_run / world_ref if world_ref else 0
    text = (f"Every parameter's gradient differs from the reference's by the same factor at step {factor.step}: "
            f"{factor.value:.6g}x (all within {factor.spread:.1e})")
    text += (f", and stays within 10% of it through step {factor.through}." if factor.through > factor.step
             else ".")
    loss_scaled = factor.loss_ratio is not None and abs(factor.loss_ratio / factor.value - 1) < 0.01
    loss_same = factor.loss_ratio is not None and abs(factor.loss_ratio - 1) < 1e-3
    if ratio > 1 and abs(factor.value / ratio - 1) < 0.01:
        text += f" That is the ratio of the world sizes ({world_run} ranks against {world_ref})."
        if loss_scaled:
            text += (f" The loss is {factor.loss_ratio:.6g}x the reference's too: the loss is multiplied by the world "
                     "size (a loss summed over ranks or divided by the local instead of the global batch, or "
                     "multiplied by the number of devices). Divide it by the world size.")
        elif loss_same:
            text += (" The loss itself agrees with the reference's, so the loss is right and the reduction is not: "
                     "the gradients are summed over the ranks instead of averaged (gradients_mean=False in "
                     "set_auto_parallel_context, or a DistributedGradReducer with mean=False)")
            if gradients_mean_run is False:
                text += "; the run's metadata says gradients_mean=False"
            text += ". Set gradients_mean=True."
        else:
            text += (" Likely causes: gradients summed instead of averaged (gradients_mean=False), a loss "
                     "multiplied by the world size, or a sum over the global batch where a mean was meant.")
    elif ratio > 1 and abs(factor.value * ratio - 1) < 0.01:
        text += (f" That is the inverse of the ratio of the world sizes ({world_run} ranks against {world_ref}): "
                 "the gradients are divided by the world size once too often (averaged, then divided again, or "
                 "a loss divided by the world size).")
    else:
        text += (" Likely causes: a loss scaled by a constant (a loss scale not undone, a sum where a mean was "
                 "meant), a gradient accumulation dividing by the wrong count, or a learning-rate-like factor "
                 "applied to the gradients.")
        if factor.loss_ratio is not None:
            text += f" The loss differs by {factor.loss_ratio:.6g}x at that step."
    return text


def describe_update(factor: Factor, world_ref: int, world_run: int) -> str:
    """An update that differs by one factor in every parameter while the gradients agree."""
    ratio = world_run / world_ref if world_ref else 0
    text = (f"The gradients agree with the reference's at step {factor.step}, but every parameter's update differs "
            f"from the reference's by the same factor: {factor.value:.6g}x (all within {factor.spread:.1e}), so "
            "the learning rate differs by that factor")
    if ratio > 1 and abs(factor.value / ratio - 1) < 0.01:
        text += (f". That is the ratio of the world sizes ({world_run} ranks against {world_ref}): the learning "
                 "rate was scaled by the world size (the linear scaling rule), although the global batch is the "
                 "reference's. Scale it only if the global batch grew, and then only once.")
    elif ratio > 1 and abs(factor.value - ratio * ratio) / (ratio * ratio) < 0.01:
        text += (f". That is the square of the ratio of the world sizes ({world_run} ranks against {world_ref}): "
                 "the learning rate was scaled by the world size twice (in the script and again in a scheduler "
                 "or wrapper). Scale it once, or not at all for the same global batch.")
    else:
        text += (": a learning rate scaled twice (by the world size, a warm-up or a scheduler applied on top of "
                 "another), another optimizer setting (momentum, weight decay), or a loss scale applied to the "
                 "update. Compare the optimizer's settings of the two runs.")
    return text
