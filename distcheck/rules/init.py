"""Rules on the initial weights (step 0)."""
from __future__ import annotations

import math

import numpy as np

from distcheck.findings import Severity
from distcheck.rules.rankdata import RankData
from distcheck.rules.registry import finding, rule
from distcheck.store.schema import ParamInfo


def _matrices(rank: RankData) -> list[int]:
    """Weight matrices, without adapters meant to start at zero (LoRA's B, named lora_*)."""
    return [i for i, p in enumerate(rank.params)
            if p.trainable and len(p.shape) >= 2 and p.size > 1 and "lora_" not in p.name.lower()]


@rule("init_all_zero", Severity.ERROR, "init", "a weight initialised to all zeros")
def init_all_zero(rank: RankData, settings: dict):
    """
    Phenomenon: a weight matrix (2 or more dimensions) is all zeros before the first update.
    Its units start identical and receive identical updates, so they never tell apart; in
    some layouts the gradient is exactly 0 and the layer never learns.

    Likely causes: weight initialisation (weight_init="zeros", a checkpoint that did not
    load, an init function that returned zeros). Biases and other 1-D parameters are left
    out: zero is their usual start; so are adapters named ``lora_*``, whose B matrix starts
    at zero by design.

    Threshold: every element exactly 0 (smdebug AllZero: 100%).

    Fix: use a random initialiser (HeUniform, XavierUniform, Normal) for weights.
    """
    matrices = _matrices(rank)
    if not matrices or rank.step0 is None:  # nothing to judge: step 0 is left unread
        return []
    zero = ((rank.step0["min"] == 0) & (rank.step0["max"] == 0)).tolist()
    hit = [i for i in matrices if zero[i]]
    if not hit:
        return []
    names = [rank.name(i) for i in hit]
    return [finding("init_all_zero", 0, [rank.rank], names,
                    f"Weight(s) initialised to all zeros: {', '.join(names)}. Use a random initialiser.")]


#: var x fan-in of the standard initialisers: MindSpore's default for Dense and Conv
#: (HeUniform with a = sqrt(5), as PyTorch's) 1/3, LeCun 1, Xavier up to 2, He 2.
HEALTHY_LOW, HEALTHY_HIGH = 1.0 / 3.0, 2.0
#: Parameter names that mark a normalisation layer, which resets the signal's scale.
_NORMALISATION = ("gamma", "beta", "moving_mean", "moving_variance", "norm", "bn", "ln_")
#: Weights whose scale is not a layer's gain: lookup tables, deliberately zero adapters.
_NOT_LAYERS = ("embedding", "lora_")


def _is_norm(name: str) -> bool:
    leaf = name.lower()
    return any(marker in leaf for marker in _NORMALISATION)


def _is_layer(p: ParamInfo) -> bool:
    """A weight matrix whose scale is a layer's gain (see :data:`_NOT_LAYERS`)."""
    return p.trainable and len(p.shape) >= 2 and p.size > 1 and not any(m in p.name.lower() for m in _NOT_LAYERS)


def layer_gains(rank: RankData, s: dict) -> list[tuple[int, float, float]]:
    """(column, var x fan-in, excess amplitude gain) of each weight matrix, in order.

    The excess gain is 1 inside the healthy band of standard initialisers, else the
    factor by which the layer scales its input's amplitude beyond the band's edge:
    sqrt(v / 2) above it, sqrt(v / (1/3)) below it.
    """
    out = []
    low, high, l2, mean = (s[stat].tolist() for stat in ("min", "max", "l2", "mean"))  # Python floats, read fast
    for i, p in enumerate(rank.params):
        if not _is_layer(p):
            continue
        if low[i] == 0 and high[i] == 0:
            continue  # init_all_zero's
        n = float(p.size)
        v = max(l2[i] ** 2 / n - mean[i] ** 2, 0.0) * (n / p.shape[0])
        if not math.isfinite(v) or v <= 0:
            continue
        excess = (math.sqrt(v / HEALTHY_HIGH) if v > HEALTHY_HIGH else
                  math.sqrt(v / HEALTHY_LOW) if v < HEALTHY_LOW else 1.0)
        out.append((i, v, excess))
    return out


def chains(rank: RankData, gains: list[tuple[int, float, float]]) -> list[list[tuple[int, float, float]]]:
    """Runs of consecutive weight matrices with no normalisation layer between them."""
    runs: list[list[tuple[int, float, float]]] = []
    previous = None
    for entry in gains:
        i = entry[0]
        between = range(previous + 1, i) if previous is not None else range(0)
        if not runs or any(_is_norm(rank.params[j].name) for j in between):
            runs.append([])
        runs[-1].append(entry)
        previous = i
    return runs


@rule("init_poor", Severity.WARNING, "init", "initial weights scale the signal far up or down across layers")
def init_poor(rank: RankData, settings: dict):
    """
    Phenomenon: the initial weights multiply the signal layer after layer, so that the first
    forward pass already overflows (an Inf loss at step 1) or fades to nothing.

    Measure: each weight matrix's variance times its fan-in, v (``size / shape[0]``,
    MindSpore's (out, in, ...) layout). Standard initialisers keep v in a band: 1/3
    (MindSpore's own default for Dense and Conv, as PyTorch's), 1 (LeCun, Xavier for equal
    widths), 2 (He, for ReLU). Inside the band a layer is healthy; outside it, it scales the
    amplitude by sqrt(v / 2) above or sqrt(3 v) below, beyond what any standard scheme does.
    Consecutive weight matrices not separated by a normalisation layer (BatchNorm,
    LayerNorm: their parameters sit between) form a chain, and their excess gains multiply.
    A chain of one layer far off is a chain too.

    Flagged when a chain's gain exceeds ``max_gain`` (10, as a signal 10x too large already
    saturates softmax and exp) or falls below ``min_gain`` (1e-3: shrinking is far less
    harmful, and a shallow net with ``weight_init="normal"`` (std 0.01) trains well at
    about 1e-2). Embedding tables and adapters named ``lora_*`` are left out; all-zero
    weights are init_all_zero's.

    Likely causes: weight initialisation (a hand-written Normal with a fixed std that
    ignores the width, e.g. Normal(0, 0.5) in layers of width 64: 2.8x per ReLU layer).

    Fix: initialise with a width-aware scheme (HeNormal for ReLU, XavierUniform for
    tanh/sigmoid), or put normalisation layers between the weights.
    """
    if not any(map(_is_layer, rank.params)) or rank.step0 is None:  # nothing to judge: step 0 is left unread
        return []
    found = []
    for chain in chains(rank, layer_gains(rank, rank.step0)):
        gain = float(np.prod([e for _, _, e in chain]))
        if settings["min_gain"] <= gain <= settings["max_gain"]:
            continue
        names = [rank.name(i) for i, _, e in chain if e != 1.0]
        way = "up" if gain > settings["max_gain"] else "down"
        detail = ", ".join(f"{rank.name(i)} {v:.3g}" for i, v, _ in chain)
        found.append(finding("init_poor", 0, [rank.rank], names,
                             f"The initial weights scale the signal {way} by about {gain:.3g}x over {len(chain)} "
                             f"layer(s) without normalisation between them (variance x fan-in: {detail}; standard "
                             f"initialisers give {HEALTHY_LOW:.2g} to {HEALTHY_HIGH:g}). Initialise with a "
                             "width-aware scheme such as HeNormal, or normalise between layers."))
    if len(found) <= 1:
        return found
    return [finding("init_poor", 0, [rank.rank], [n for f in found for n in f.params],
                    " ".join(f.message for f in found))]
