"""Rules on the initial weights (step 0)."""
from __future__ import annotations

import numpy as np

from distcheck.findings import Severity
from distcheck.rules.rankdata import RankData
from distcheck.rules.registry import finding, rule


def _step0(rank: RankData):
    zero = np.flatnonzero(rank.steps == 0)
    if not len(zero):
        return None
    i = int(zero[0])
    return {name: rank.column("param", name)[i] for name in ("min", "max", "mean", "l2")}


def _matrices(rank: RankData) -> list[int]:
    return [i for i, p in enumerate(rank.params) if p.trainable and len(p.shape) >= 2 and p.size > 1]


@rule("init_all_zero", Severity.ERROR, "init", "a weight initialised to all zeros")
def init_all_zero(rank: RankData, settings: dict):
    """
    Phenomenon: a weight matrix (2 or more dimensions) is all zeros before the first update.
    Its units start identical and receive identical updates, so they never tell apart; in
    some layouts the gradient is exactly 0 and the layer never learns.

    Likely causes: weight initialisation (weight_init="zeros", a checkpoint that did not
    load, an init function that returned zeros). Biases and other 1-D parameters are left
    out: zero is their usual start.

    Threshold: every element exactly 0 (smdebug AllZero: 100%).

    Fix: use a random initialiser (HeUniform, XavierUniform, Normal) for weights.
    """
    s = _step0(rank)
    if s is None:
        return []
    hit = [i for i in _matrices(rank) if s["min"][i] == 0 and s["max"][i] == 0]
    if not hit:
        return []
    names = [rank.name(i) for i in hit]
    return [finding("init_all_zero", 0, [rank.rank], names,
                    f"Weight(s) initialised to all zeros: {', '.join(names)}. Use a random initialiser.")]


@rule("init_poor", Severity.WARNING, "init", "initial weight scales differ across layers by a large ratio")
def init_poor(rank: RankData, settings: dict):
    """
    Phenomenon: the initial weights of some layers are on another scale than the rest, so
    activations and gradients shrink or grow layer after layer.

    Measure: each weight matrix's variance times its fan-in (``size / shape[0]``, MindSpore's
    (out, in, ...) layout). Standard initialisers (He, Xavier, LeCun) keep that product
    roughly equal across layers whatever their widths; the rule compares the largest with
    the smallest.

    Likely causes: weight initialisation (a hand-written init with a fixed std, a layer left
    at another initialiser, a scale that ignores the width).

    Default: ratio 10 (smdebug PoorWeightInitialization: threshold 10 on the ratio of
    variances). Scaling by fan-in is ours, so layers of different widths do not raise it.
    All-zero weights are init_all_zero's, and are left out.

    Fix: initialise every layer with one scheme that accounts for its width (HeNormal for
    ReLU, XavierUniform for tanh/sigmoid).
    """
    s = _step0(rank)
    if s is None:
        return []
    cols = [i for i in _matrices(rank) if not (s["min"][i] == 0 and s["max"][i] == 0)]
    if len(cols) < 2:
        return []
    scaled = []
    for i in cols:
        p = rank.params[i]
        n = float(p.size)
        var = max(float(s["l2"][i]) ** 2 / n - float(s["mean"][i]) ** 2, 0.0)
        scaled.append(var * (n / p.shape[0]))
    scaled = np.array(scaled)
    if not np.all(np.isfinite(scaled)) or scaled.min() <= 0:
        return []
    ratio = scaled.max() / scaled.min()
    if ratio <= settings["ratio"]:
        return []
    hi, lo = cols[int(np.argmax(scaled))], cols[int(np.argmin(scaled))]
    names = [rank.name(hi), rank.name(lo)]
    return [finding("init_poor", 0, [rank.rank], names,
                    f"Initial weight scales differ {ratio:.0f}x across layers (variance x fan-in): largest in "
                    f"{rank.name(hi)}, smallest in {rank.name(lo)}. Initialise every layer with one width-aware "
                    "scheme.")]
