"""Rules on activation statistics, from the opt-in taps (``--activations``).

The taps run inside the compiled step (MindSpore drops hooks in GRAPH_MODE), on
activation *cells* such as nn.ReLU, nn.Sigmoid and nn.Tanh; functional activations
(``ops.relu`` in ``construct``) cannot be tapped. Without taps these rules say nothing.
"""
from __future__ import annotations

import numpy as np

from distcheck.findings import Severity
from distcheck.rules.rankdata import RankData
from distcheck.rules.registry import finding, rule
from distcheck.store import schema

_SATURATED, _ZERO = schema.ACT_COLUMNS.index("saturated"), schema.ACT_COLUMNS.index("zero")


def _taps_above(rank: RankData, code: str, kinds: tuple[str, ...], column: int, fraction: float,
                template: str) -> list:
    """One finding naming the taps of ``kinds`` whose median ``column`` exceeds ``fraction``."""
    if not rank.activations:
        return []
    recorded = (rank.has & schema.HAS_ACTS) != 0
    if not recorded.any():
        return []
    median = np.nanmedian(rank.act_stats[recorded][:, :, column].astype(np.float64), axis=0)
    hit = [i for i, (_, kind) in enumerate(rank.activations) if kind in kinds and median[i] > fraction]
    if not hit:
        return []
    names = [rank.activations[i][0] for i in hit]
    values = ", ".join(f"{rank.activations[i][0]} {median[i]:.0%}" for i in hit)
    return [finding(code, None, [rank.rank], names, template.format(values=values))]


@rule("activation_saturated", Severity.WARNING, "activation", "sigmoid/tanh outputs stuck at their limits")
def activation_saturated(rank: RankData, settings: dict):
    """
    Phenomenon: most inputs of a sigmoid or tanh lie where its slope is nearly 0, so little
    gradient flows back through it (a common root of grad_vanishing).

    Measure: per tap, the median over recorded steps of the fraction of saturated inputs:
    |x| > 5 for sigmoid (slope < 0.0066) and |x| > 2.5 for tanh (slope < 0.027). smdebug's
    SaturatedActivation uses the float32 limits (sigmoid x < -23 or > 17, tanh |x| > 9.4),
    which only catch fully pinned units; ours catch units that have stopped learning.

    Likely causes: weight initialisation too large; inputs not normalised; learning rate too
    large; deep stacks without normalisation.

    Default: fraction 0.5.

    Fix: normalise the inputs, scale the initialisation to the width, add BatchNorm or
    LayerNorm, or use ReLU-like activations.
    """
    return _taps_above(rank, "activation_saturated", ("sigmoid", "tanh"), _SATURATED, settings["fraction"],
                       "Saturated activations (median share of inputs in the flat region): {values}. Normalise "
                       "inputs, scale the initialisation, or add normalisation layers.")


@rule("dead_relu", Severity.WARNING, "activation", "ReLU units whose output is almost always 0")
def dead_relu(rank: RankData, settings: dict):
    """
    Phenomenon: a ReLU outputs exactly 0 for nearly every element, so its units pass no
    signal and no gradient: they are dead.

    Measure: per tap, the median over recorded steps of the fraction of outputs equal to 0.
    A healthy ReLU is near one half.

    Likely causes: learning rate too large (a big update pushed the biases negative);
    weight initialisation (negative bias init); inputs not normalised.

    Default: fraction 0.9. MindInsight's watchpoint fires at 99.9% of values; smdebug's
    DeadRelu at 50% of a layer's neurons inactive. 90% of outputs sits between: most of the
    layer no longer contributes.

    Fix: lower the learning rate, use LeakyReLU/GELU, check bias initialisation and input
    scale.
    """
    return _taps_above(rank, "dead_relu", ("relu",), _ZERO, settings["fraction"],
                       "Dead ReLUs (median share of outputs exactly 0): {values}. Lower the learning rate or "
                       "use LeakyReLU.")
