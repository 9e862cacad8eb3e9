"""Rules on the loss curve: the first thing to look at, and the last symptom of most causes."""
from __future__ import annotations

import numpy as np

from distcheck.findings import Note, Severity
from distcheck.rules.rankdata import RankData, median, row_nanmedians, windows
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


document("input_nonfinite", Severity.ERROR, "data", "a batch held NaN or Inf: the first step and the rank(s)", """
    Phenomenon: the input batch (its first floating tensor) held NaN or +/-Inf values.
    Reported once, at the first step where any rank's batch did, naming only those ranks:
    the non-finite loss, gradients and weights that follow on every rank (through the
    gradient all-reduce) are its symptoms. On CPU a NaN input can be masked by a ReLU, so
    the loss may stay finite while the gradients do not.

    Likely causes: a corrupt sample or file in that rank's shard, a division by zero in
    preprocessing (normalising by a zero standard deviation), an overflow in a cast.

    Threshold: none; any non-finite input value (counted exactly, ``steps/input_counts``).

    Fix: find the sample (that rank, that step) and clean or filter it; guard the
    preprocessing.
    """)


def rolling_median(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing median over ``window`` finite values (fewer at the start)."""
    if not len(values):
        return np.zeros(0)
    padded = np.concatenate([np.full(window - 1, np.nan), np.asarray(values, np.float64)])
    return row_nanmedians(windows(padded, window))


@rule("loss_diverging", Severity.ERROR, "loss", "the smoothed loss runs away from its running minimum")
def loss_diverging(rank: RankData, settings: dict):
    """
    Phenomenon: the loss runs away: its trailing median over ``window`` recorded steps climbs
    to more than ``growth`` times the lowest that median has been (and by more than
    ``min_delta`` in absolute terms). The loss is judged with its sign: a loss that may go
    below zero (a Gaussian negative log-likelihood, a loss with an offset) runs away when
    its median rises above its lowest by more than ``growth - 1`` times that lowest's
    magnitude (the same rule, for a positive loss), so a healthy loss that crosses zero is
    not a divergence.

    Judging a median, not single values, keeps the per-rank minibatch noise of small batches
    quiet (a healthy run with batch 8 swings from 0.001 to 1 between steps); a real
    divergence raises the median within half a window. A loss that turns NaN or Inf is
    loss_nonfinite's, at once.

    Likely causes: hyperparameters (learning rate too large, loss scale too large, batch too
    small for the learning rate); weight initialisation far too large; data (outliers,
    inputs not normalised).

    Defaults: window 20, growth 10, min_delta 1.0; runs shorter than 4 windows use a window
    of a quarter of their length. Megatron calls a loss "spiky" at 10x the maximum of its
    first 100 values; we compare a median with its running minimum, so a run that first
    learns and then blows up is caught as early.

    Fix: lower the learning rate (by 10x to start), add warm-up or gradient clipping,
    normalise the inputs, check the initialisation scale.
    """
    steps, loss = rank.training_loss
    finite = np.isfinite(loss)
    steps, loss = steps[finite], loss[finite]
    if len(loss) < 4:
        return []
    window = max(1, min(int(settings["window"]), len(loss) // 4))
    if loss.max() - loss.min() <= settings["min_delta"]:  # medians lie within the values: none can rise more
        return []
    smooth = rolling_median(loss, window)
    run_min = np.minimum.accumulate(smooth)
    rise = smooth - run_min
    # For a positive minimum, rise > (growth - 1) * minimum is smooth > growth * minimum.
    bad = (rise > (settings["growth"] - 1) * np.abs(run_min)) & (rise > settings["min_delta"])
    bad[:window - 1] = False
    if not bad.any():
        return []
    i = int(np.argmax(bad))
    how_far = (f"{smooth[i] / run_min[i]:.0f}x its lowest, {run_min[i]:.4g} (threshold {settings['growth']:g}x)"
               if run_min[i] > 0 else f"{rise[i]:.4g} above its lowest, {run_min[i]:.4g} (threshold "
               f"{settings['growth'] - 1:g} times the lowest's magnitude, and {settings['min_delta']:g})")
    return [finding("loss_diverging", int(steps[i]), [rank.rank], [],
                    f"The loss ran away at step {int(steps[i])}: its median over the last {window} recorded "
                    f"step(s) reached {smooth[i]:.4g}, {how_far}. Lower the learning rate, or add warm-up or "
                    "gradient clipping.")]


@rule("loss_not_decreasing", Severity.WARNING, "loss", "no meaningful decrease of the loss over the run")
def loss_not_decreasing(rank: RankData, settings: dict):
    """
    Phenomenon: the loss does not go down. The median loss of the last ``window`` recorded
    steps (a tenth of the run, if more) is not at least ``min_decrease`` (a fraction) below
    the median of the first.

    Likely causes: hyperparameters (learning rate far too small, or 0); weights that are not
    updated (frozen by accident, not in the optimizer); vanishing gradients; saturated or dead
    activations; data (labels shuffled apart from inputs, wrong loss function).

    Defaults: window 10 steps (smdebug LossNotDecreasing: num_steps 10), min_decrease 0.01,
    min_steps 50. smdebug asks for a 0.1% decrease every 10 steps; over a whole run we ask
    for 1% between medians, which minibatch noise does not fake. A run with fewer than
    ``min_steps`` recorded losses is too short to judge a trend: the report says so in a
    note instead.

    Fix: check the learning rate and that every layer's weights change (weights_not_updated,
    update_ratio_small), then the gradients (grad_vanishing) and the data.
    """
    steps, loss = rank.training_loss
    if not len(loss):  # no loss recorded here (a non-last pipeline stage, a probe that failed)
        return []
    loss = loss[np.isfinite(loss)]
    if len(loss) < int(settings["min_steps"]):
        return [Note("loss_not_decreasing", (rank.rank,),
                     f"loss trend not judged: {len(loss)} finite recorded loss(es), {int(settings['min_steps'])} are "
                     "needed (rules.loss_not_decreasing.min_steps)")]
    w = max(int(settings["window"]), len(loss) // 10)
    first, last = median(loss[:w]), median(loss[-w:])
    if last <= first - settings["min_decrease"] * abs(first):
        return []
    return [finding("loss_not_decreasing", int(steps[-1]), [rank.rank], [],
                    f"The loss did not decrease: median {first:.4g} over the first {w} recorded steps, "
                    f"{last:.4g} over the last {w} (needed a decrease of {settings['min_decrease']:.0%}). "
                    "Check the learning rate and that the weights are updated.")]


@rule("loss_zero", Severity.WARNING, "loss", "the loss is exactly 0, often or for several steps in a row")
def loss_zero(rank: RankData, settings: dict):
    """
    Phenomenon: the loss is exactly 0.0 on many steps, or on several in a row, which real
    training does not reach. A rare exact 0 on a batch the model fits well is float32
    underflow (exp(-104) rounds to 0), not a bug, and is left alone.

    Likely causes: API misuse (a loss on the wrong outputs or labels, e.g. labels that all
    equal the prediction, a mask that drops every element, a reduction over an empty
    tensor); data (a label leaked into the inputs); algorithm (a loss clipped or multiplied
    by 0).

    Defaults: flagged when at least ``min_share`` 5% of the recorded losses are exactly 0, or
    ``min_run`` 3 recorded losses in a row are.

    Fix: check what the loss function receives at that step: shapes, labels, masks.
    """
    steps, loss = rank.training_loss
    zero = loss == 0.0
    if not zero.any():
        return []
    longest, run, end = 0, 0, 0
    for i, z in enumerate(zero):
        run = run + 1 if z else 0
        if run > longest:
            longest, end = run, i
    share = float(zero.mean())
    if share < settings["min_share"] and longest < int(settings["min_run"]):
        return []
    i = int(np.flatnonzero(zero)[0]) if share >= settings["min_share"] else end - longest + 1
    return [finding("loss_zero", int(steps[i]), [rank.rank], [],
                    f"The loss is exactly 0 at step {int(steps[i])}: {int(zero.sum())} of {len(zero)} recorded "
                    f"losses ({share:.0%}), {longest} in a row at most. Check the inputs of the loss function: "
                    "labels, masks and reductions.")]
