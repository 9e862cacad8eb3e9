"""Rules on how the weights move: not at all, too little, too much."""
from __future__ import annotations

import numpy as np

from distcheck.findings import Note, Severity, name_list
from distcheck.rules.rankdata import RankData, row_nanmedians
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
    updates = int(np.count_nonzero(rank.training))
    if updates < settings["min_steps"]:
        return []
    still = [i for i, p in enumerate(rank.params) if p.trainable and not rank.changed[i]]
    if not still:
        return []
    names = [rank.name(i) for i in still]
    which = "Every trainable parameter" if len(still) == sum(p.trainable for p in rank.params) else \
        f"{len(names)} trainable parameter(s)"
    lr = ((rank.static or {}).get("optimizer") or {}).get("learning_rate")
    why = "The optimizer's learning rate is 0." if lr == 0 else \
        "Is the learning rate 0, or are they missing from the optimizer?"
    return [finding("weights_not_updated", int(rank.steps[-1]), [rank.rank], names,
                    f"{which} never changed over {updates} recorded update(s): {name_list(names, 10)}. {why}")]


@rule("updates_skipped", Severity.WARNING, "param", "most training steps skip their update: loss-scale overflows")
def updates_skipped(rank: RankData, settings: dict):
    """
    Phenomenon: with dynamic loss scaling, a step whose gradients overflow (Inf or NaN)
    skips its update and lowers the loss scale. A few skips at the start, while the scale
    settles, and one every ``scale_window`` steps after that are how it works. Most steps
    skipping means the gradients are non-finite whatever the scale: the model has quietly
    stopped learning while the loss curve looks flat.

    Skipped steps are recorded as skipped, never as updates, so weights_not_updated and
    the update-ratio rules do not count them. Any skip gets a note with the count.

    Likely causes: a NaN or Inf born in the forward or backward pass (a log or division of
    zero, an overflowing float16 activation); a loss scale that cannot go low enough (a
    minimum scale set too high); data (an Inf in an input).

    Defaults: flagged when more than ``max_share`` 25% of the training steps after the
    first ``warmup`` 20 skipped, and at least ``min_skips`` 10 did. MindSpore's
    DynamicLossScaleManager starts at 2^24 and halves on each overflow, so the first
    steps of a healthy float32 run may all skip; after that, skips are rare.

    Fix: find where the first non-finite value appears (loss_nonfinite, grad statistics
    of the skipped steps' neighbours), and guard it; lower the initial loss scale.
    """
    skipped = rank.skipped
    if not len(skipped):
        return []
    first = int(skipped[0])
    note = Note("updates_skipped", (rank.rank,),
                f"{len(skipped)} training step(s) skipped their update (loss-scale overflow), the first after "
                f"update {first}; they are not counted as updates")
    warmup = int(settings["warmup"])
    at = skipped + np.arange(1, len(skipped) + 1)  # training step of each skip: updates and skips before it
    total = (int(rank.steps[-1]) if len(rank.steps) else 0) + len(skipped) - warmup
    late = skipped[at > warmup]
    if len(late) < int(settings["min_skips"]) or total <= 0 or len(late) / total <= settings["max_share"]:
        return [note]
    return [finding("updates_skipped", int(late[0]), [rank.rank], [],
                    f"{len(late)} of {total} training steps after the first {warmup} ({len(late) / total:.0%}) skipped "
                    f"their update because the loss-scaled gradients overflowed, the first after update "
                    f"{int(late[0])}. The model is hardly learning: the gradients are non-finite whatever the "
                    "scale. Find where the first NaN or Inf appears and guard it.")]


@rule("update_ratio_small", Severity.WARNING, "param", "|dw|/|w| per step is tiny: weights change too little")
def update_ratio_small(rank: RankData, settings: dict):
    """
    Phenomenon: weights change too little per step to learn in reasonable time. Measured per
    weight matrix (parameters of 2 or more dimensions) as the median over recorded steps of
    ``|w_s - w_prev| / |w_prev|`` (L2 norms; with --every K, per K steps). Weights of
    1 MiB or more are measured in turn, each at every 4th recorded step
    (--update-norm-every), so their median is over a quarter of the steps.

    Likely causes: hyperparameters (learning rate too small, weight decay dominating);
    vanishing gradients; a learning-rate schedule that decayed too early.

    Default: threshold 1e-6. MindInsight warns below 1e-4 and smdebug below 1e-8; healthy
    small networks here sit between 1e-4 and 1e-2 per step, and adaptive optimizers late in
    training below 1e-4, so 1e-6 flags only weights that effectively stand still.

    Fix: raise the learning rate, check the schedule, check grad_vanishing.
    """
    _, ratio, cols = rank.update_ratios
    known = ~np.isnan(ratio).all(axis=0) if len(ratio) else np.zeros(len(cols), bool)
    if not known.any():
        return []
    median = np.full(len(cols), np.nan)
    median[known] = row_nanmedians(ratio[:, known].T)
    # Exactly 0 is weights_not_updated's finding, stated more precisely there.
    hit = known & (median < settings["threshold"]) & (median > 0)  # NaN compares false
    if not hit.any():
        return []
    names = [rank.name(c) for c in cols[hit]]
    values = ", ".join(f"{rank.name(c)} {r:.2g}" for c, r in zip(cols[hit], median[hit]))
    return [finding("update_ratio_small", None, [rank.rank], names,
                    f"Median update ratio |dw|/|w| per recorded step below {settings['threshold']:g}: {values}. "
                    "The learning rate may be too small, or these layers receive vanishing gradients.")]


@rule("update_ratio_large", Severity.WARNING, "param", "|dw|/|w| of one update is large: weights jump")
def update_ratio_large(rank: RankData, settings: dict):
    """
    Phenomenon: an update changes weights by a large fraction of their size, so training
    jumps around instead of converging. Same ratio as update_ratio_small, reported at the
    first step where any weight matrix exceeds the threshold. Weights of 1 MiB or more are
    measured at their turn only (every 4th recorded step, --update-norm-every): a learning
    rate that is too large is seen within 4 recorded steps, a single jump between turns
    may not be (use --update-norm-every 1 to measure every update).

    Likely causes: hyperparameters (learning rate too large, no warm-up); exploding
    gradients; inputs not normalised.

    Default: threshold 0.5. MindInsight warns above 1 and smdebug above 10; a weight that
    moves by half its norm in one step is already far outside healthy training (1e-4 to
    1e-2 per step; at most 0.05 in the first, momentum-free steps of our examples).

    Fix: lower the learning rate, add warm-up or gradient clipping.
    """
    steps, ratio, cols = rank.update_ratios
    if not ratio.size:
        return []
    hit = np.nan_to_num(ratio, nan=0.0) > settings["threshold"]
    if not hit.any():
        return []
    i = int(np.flatnonzero(hit.any(axis=1))[0])
    names = [rank.name(c) for c in cols[hit[i]]]
    values = ", ".join(f"{rank.name(c)} {r:.2g}" for c, r in zip(cols[hit[i]], ratio[i][hit[i]]))
    return [finding("update_ratio_large", int(steps[i]), [rank.rank], names,
                    f"The update of step {int(steps[i])} changed weights by more than {settings['threshold']:g} of "
                    f"their norm (|dw|/|w|): {values}. The learning rate is probably too large.")]
