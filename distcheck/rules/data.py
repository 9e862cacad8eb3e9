"""Rules on the input batches: scale, class balance, order."""
from __future__ import annotations

import numpy as np

from distcheck.findings import Note, Severity
from distcheck.rules.rankdata import RankData, median
from distcheck.rules.registry import finding, rule
from distcheck.store import schema

_IN = {name: i for i, name in enumerate(schema.INPUT_COLUMNS)}
_LB = {name: i for i, name in enumerate(schema.LABEL_COLUMNS)}


def label_source(rank: RankData) -> str:
    """How the probe chose each batch's labels, for messages."""
    choice = str(rank.meta.get("labels", "auto"))
    if choice == "auto":
        return "labels: each batch's last 1-D integer tensor; set `labels` in the config to choose another"
    return f"labels: batch tensor {choice}, as configured"


def _batches(rank: RankData, table: np.ndarray) -> np.ndarray:
    recorded = rank.batch_mask & np.all(np.isfinite(table[:, :3]), axis=1)
    return table[recorded].astype(np.float64)


@rule("input_not_normalized", Severity.WARNING, "data", "input batches far from zero mean and unit scale")
def input_not_normalized(rank: RankData, settings: dict):
    """
    Phenomenon: the inputs (the first floating-point tensor of each batch) are far from zero
    mean and unit scale, e.g. raw pixels in [0, 255] or features in different units.

    Measure: the median over recorded batches of the batch's mean and standard deviation.

    Likely causes: data processing (normalisation missing, applied twice, or with the wrong
    constants; a scaling step left out of the training pipeline).

    Defaults: flagged when |mean| > ``max_abs_mean`` 3, or std > ``max_std`` 10, or
    std < ``min_std`` 0.01. The article asks for data "between -1 and 1, with mean 0"; these
    bounds leave room for standardised data with outliers and flag order-of-magnitude
    mistakes.

    Fix: standardise the inputs ((x - mean) / std over the training set), with the same
    constants at inference.
    """
    if not rank.batch_mask.any():  # no batch recorded: the inputs' statistics are left unread
        return []
    rows = _batches(rank, rank.input_stats)
    if not len(rows):
        return []
    mean, std = median(rows[:, _IN["mean"]]), median(rows[:, _IN["std"]])
    problems = []
    if abs(mean) > settings["max_abs_mean"]:
        problems.append(f"mean {mean:.3g}")
    if std > settings["max_std"]:
        problems.append(f"standard deviation {std:.3g}")
    if std < settings["min_std"]:
        problems.append(f"standard deviation only {std:.3g}")
    if not problems:
        return []
    lo, hi = float(np.min(rows[:, _IN["min"]])), float(np.max(rows[:, _IN["max"]]))
    return [finding("input_not_normalized", None, [rank.rank], [],
                    f"Inputs are not normalised: typical batch {' and '.join(problems)}, values from {lo:.3g} to "
                    f"{hi:.3g}. Standardise them to zero mean and unit variance.")]


@rule("class_imbalance", Severity.WARNING, "data", "labels heavily skewed between classes")
def class_imbalance(rank: RankData, settings: dict):
    """
    Phenomenon: some classes are seen far more often than others, so the model learns to
    predict the common ones. Counted over every recorded batch's labels (class ids
    0..1023): by default the batch's last 1-D integer tensor (or an (N, 1) column), so
    token ids and attention masks are not taken for labels; the config's ``labels`` (an
    index into the batch, or "none") chooses otherwise.

    Likely causes: data set (unbalanced classes, a filtering step that dropped a class);
    data processing (sharding or sampling that skews the classes).

    Classes judged: those that occur in the labels (ids need not start at 0 nor be
    contiguous: labels 1..N, or sparse category ids, are fine). A class that never occurs
    is not known to exist unless ``classes`` declares how many there are (ids
    0..classes-1): then every declared class is judged, and one never seen counts as seen 0
    times.

    Defaults: flagged when the most common class is seen more than ``ratio`` 10 times as
    often as the rarest class judged (smdebug ClassImbalance: threshold_imbalance 10),
    once at least ``min_samples`` 200 labels were seen and at least ``min_per_class`` 50
    per class on average. Fewer are sampling noise, not imbalance: 768 uniform labels of
    64 classes leave some class unseen, and others seen a few times (a note says the
    balance was not judged). ``classes`` is null (not declared).

    Fix: rebalance: oversample rare classes, weight the loss by class, or collect more data.
    """
    counts = rank.label_counts[: schema.MAX_CLASSES]
    total = int(counts.sum())
    if total < settings["min_samples"] or not counts.any():
        return []
    declared = settings.get("classes")
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int) or declared < 2):
        return [Note("class_imbalance", (rank.rank,),
                     f"class balance judged on the classes that occur: rules.class_imbalance.classes must be the "
                     f"number of classes (2 or more), got {declared!r}")]
    occurring = counts > 0
    if declared is not None:
        occurring[: min(declared, schema.MAX_CLASSES)] = True
    classes = np.flatnonzero(occurring)
    if len(classes) < 2:
        return []
    if total < settings["min_per_class"] * len(classes):
        return [Note("class_imbalance", (rank.rank,),
                     f"class balance not judged: {total} labels over {len(classes)} classes, "
                     f"{settings['min_per_class']} per class are needed (rules.class_imbalance.min_per_class)")]
    seen = counts[classes]
    rare, common = int(classes[np.argmin(seen)]), int(classes[np.argmax(seen)])
    ratio = counts[common] / max(counts[rare], 1)
    if ratio <= settings["ratio"]:
        return []
    return [finding("class_imbalance", None, [rank.rank], [],
                    f"Labels are imbalanced: class {common} was seen {int(counts[common])} times, class {rare} "
                    f"{int(counts[rare])} times ({ratio:.0f}x) over {total} labels of {len(classes)} classes "
                    f"({label_source(rank)}). Rebalance the data or weight the loss.")]


@rule("data_not_shuffled", Severity.WARNING, "data", "consecutive batches look ordered by label")
def data_not_shuffled(rank: RankData, settings: dict):
    """
    Phenomenon: batches come ordered by label: each batch holds (almost) one class and the
    classes follow one another, so every update pulls the model towards one class.

    Measure: a batch's purity is the share of its most common label. A shuffled batch of a
    k-class problem has purity near 1/k.

    Likely causes: data processing (the data set is stored sorted by class and
    ``shuffle=False``, or shuffling happens before a sort or with a buffer far smaller than
    the data set).

    Defaults: flagged when at least ``min_share`` 0.5 of the recorded batches have purity
    >= ``purity`` 0.9, over a run that saw at least 2 classes.

    Fix: shuffle the data set (``shuffle=True``, or ``dataset.shuffle(buffer_size)`` with a
    buffer as large as the data set).
    """
    classes = np.count_nonzero(rank.label_counts[: schema.MAX_CLASSES])
    if classes < 2 or np.count_nonzero(rank.batch_mask) < 4:  # the labels' statistics are read only if needed
        return []
    rows = _batches(rank, rank.label_stats)
    if len(rows) < 4:
        return []
    pure = rows[:, _LB["purity"]] >= settings["purity"]
    share = float(np.mean(pure))
    if share < settings["min_share"]:
        return []
    return [finding("data_not_shuffled", None, [rank.rank], [],
                    f"{share:.0%} of the recorded batches hold (almost) a single label out of {classes} classes "
                    f"({label_source(rank)}): the data is ordered by label. Shuffle the data set.")]
