"""Rules on the loss curve: the first thing to look at, and the last symptom of most causes."""
from __future__ import annotations

import numpy as np

from distcheck.findings import Severity
from distcheck.rules.rankdata import RankData
from distcheck.rules.registry import document, finding, rule

document("loss_nonfinite", Severity.ERROR, "loss", "the loss is NaN or Inf: the first step and the rank(s)", """
    Phenomenon: the loss is NaN or +/-Inf. Reported once, at the first step where any rank's
    loss is non-finite, naming only the rank(s) where it was born: under data parallel a NaN
    reaches every rank one step later through the gradient all-reduce.

    Likely causes: hyperparameters (learning rate or loss scale far too large, so the loss
    runs away first: see loss_diverging); data (an Inf, NaN or extreme value in an input
    sample on that rank); API misuse (a division or log of zero: use DivNoNan, clip log
    inputs; a loss fed logits where it expects probabilities).

    Threshold: none; any non-finite value.

    Fix: if loss_diverging came first, lower the learning rate. Otherwise inspect the batch of
    that step on that rank (input statistics are in the dump), and guard divisions and logs.
    """)


def _training_loss(rank: RankData) -> tuple[np.ndarray, np.ndarray]:
    ok = rank.loss_mask & (rank.steps > 0)
    return rank.steps[ok], rank.loss[ok]


@rule("loss_diverging", Severity.ERROR, "loss", "the loss runs away from its running minimum, or jumps")
def loss_diverging(rank: RankData, settings: dict):
    """
    Phenomenon: the loss runs away. It climbs to more than ``growth`` times its running
    minimum (and by more than ``min_delta`` in absolute terms), or it jumps by more than
    ``jump`` times from one recorded step to the next.

    Likely causes: hyperparameters (learning rate too large, loss scale too large, batch too
    small for the learning rate); weight initialisation far too large; data (outliers,
    inputs not normalised).

    Defaults: growth 10, jump 10, min_delta 1.0, after warmup 3 steps. Megatron calls a loss
    "spiky" at 10x the maximum of its first 100 values; we compare with the running minimum
    instead, so a run that first learns and then blows up is caught as early.

    Fix: lower the learning rate (by 10x to start), add warm-up or gradient clipping,
    normalise the inputs, check the initialisation scale.
    """
    steps, loss = _training_loss(rank)
    finite = np.isfinite(loss)
    warm = int(settings["warmup"])
    if finite.sum() <= warm:
        return []
    run_min = np.minimum.accumulate(np.where(finite, np.abs(loss), np.inf))
    base = np.maximum(run_min, 1e-12)
    prev = np.concatenate([[np.nan], np.abs(loss[:-1])])
    with np.errstate(invalid="ignore", over="ignore"):
        grown = (np.abs(loss) > settings["growth"] * base) & (np.abs(loss) - run_min > settings["min_delta"])
        jumped = (np.abs(loss) > settings["jump"] * prev) & (np.abs(loss) - prev > settings["min_delta"])
    bad = finite & (grown | jumped)
    bad[:warm] = False
    if not bad.any():
        return []
    i = int(np.argmax(bad))
    return [finding("loss_diverging", int(steps[i]), [rank.rank], [],
                    f"The loss ran away at step {int(steps[i])}: {loss[i]:.4g}, against a running minimum "
                    f"of {run_min[i]:.4g} (threshold {settings['growth']:g}x) and {prev[i]:.4g} at the previous "
                    "recorded step. Lower the learning rate, or add warm-up or gradient clipping.")]


@rule("loss_not_decreasing", Severity.WARNING, "loss", "no meaningful decrease of the loss over the run")
def loss_not_decreasing(rank: RankData, settings: dict):
    """
    Phenomenon: the loss does not go down. The mean loss of the last ``window`` recorded steps
    is not at least ``min_decrease`` (a fraction) below the mean of the first ``window``.

    Likely causes: hyperparameters (learning rate far too small, or 0); weights that are not
    updated (frozen by accident, not in the optimizer); vanishing gradients; saturated or dead
    activations; data (labels shuffled apart from inputs, wrong loss function).

    Defaults: window 10 steps (smdebug LossNotDecreasing: num_steps 10), min_decrease 0.01.
    smdebug asks for a 0.1% decrease every 10 steps; over a whole run we ask for 1%, which
    is less sensitive to minibatch noise. Runs shorter than 2 windows are not judged.

    Fix: check the learning rate and that every layer's weights change (weights_not_updated,
    update_ratio_small), then the gradients (grad_vanishing) and the data.
    """
    steps, loss = _training_loss(rank)
    loss = loss[np.isfinite(loss)]
    w = int(settings["window"])
    if len(loss) < 2 * w:
        return []
    first, last = float(np.mean(loss[:w])), float(np.mean(loss[-w:]))
    if last <= first - settings["min_decrease"] * abs(first):
        return []
    return [finding("loss_not_decreasing", int(steps[-1]), [rank.rank], [],
                    f"The loss did not decrease: mean {first:.4g} over the first {w} recorded steps, "
                    f"{last:.4g} over the last {w} (needed a decrease of {settings['min_decrease']:.0%}). "
                    "Check the learning rate and that the weights are updated.")]


@rule("loss_zero", Severity.WARNING, "loss", "the loss is exactly 0")
def loss_zero(rank: RankData, settings: dict):
    """
    Phenomenon: the loss is exactly 0.0, which real training almost never reaches.

    Likely causes: API misuse (a loss on the wrong outputs or labels, e.g. labels that all
    equal the prediction, a mask that drops every element, a reduction over an empty
    tensor); data (a label leaked into the inputs); algorithm (a loss clipped or multiplied
    by 0).

    Threshold: any recorded loss that is exactly 0.

    Fix: check what the loss function receives at that step: shapes, labels, masks.
    """
    steps, loss = _training_loss(rank)
    zero = np.flatnonzero(loss == 0.0)
    if not len(zero):
        return []
    i = int(zero[0])
    return [finding("loss_zero", int(steps[i]), [rank.rank], [],
                    f"The loss is exactly 0 at step {int(steps[i])} ({len(zero)} recorded step(s) in all). "
                    "Check the inputs of the loss function: labels, masks and reductions.")]
