"""Rules on the post-reduce gradients."""
from __future__ import annotations


import numpy as np

from distcheck.findings import Severity, name_list
from distcheck.rules.rankdata import RankData, row_nanmedians, windows
from distcheck.rules.registry import finding, rule


def _with_grads(rank: RankData, matrices_only: bool = False) -> np.ndarray:
    """Columns of trainable parameters with a recorded gradient (optionally only 2-D or more)."""
    return np.array([i for i, p in enumerate(rank.params)
                     if p.trainable and p.has_grad and (len(p.shape) >= 2 or not matrices_only)], int)


@rule("grad_vanishing", Severity.WARNING, "grad", "per parameter: the gradient is vanishingly small")
def grad_vanishing(rank: RankData, settings: dict):
    """
    Phenomenon: a parameter's gradient is so small that it barely learns, typically the first
    layers of a deep stack of saturating activations (sigmoid, tanh).

    Measure: the root-mean-square of the gradient, ``L2 / sqrt(size)`` (from the stored L2
    norm), its median over the recorded steps, for weight matrices (2 or more dimensions).
    RMS >= mean |g|, so this flags a subset of what a mean-|g| rule flags, never more.
    Biases are left out: a bias followed by BatchNorm rightly gets a gradient near 0.

    Likely causes: model structure (deep stacks of sigmoid/tanh, no normalisation, no
    residual connections); weight initialisation too small; saturated activations;
    hyperparameters (a loss scale that underflows in float16).

    Defaults: flagged when the median RMS is below ``absolute`` 1e-7 (smdebug
    VanishingGradient: mean |g| < 1e-7; MindInsight: 1e-9), or below ``relative`` 1e-3 times
    the largest median RMS of any parameter: a layer learning a thousand times slower than
    the fastest one. The relative test is ours: small networks rarely reach 1e-7, and the
    symptom that matters is the gap between layers.

    Fix: use ReLU-like activations, normalisation layers or residual connections; a He or
    Xavier initialisation; check the loss scale.
    """
    cols = _with_grads(rank, matrices_only=True)
    mask = rank.grad_mask & rank.training
    if not len(cols) or not mask.any():
        return []
    rms = rank.column("grad", "l2")[mask][:, cols] / np.sqrt(rank.sizes[cols])
    median = row_nanmedians(np.where(np.isfinite(rms), rms, np.nan).T)
    if np.all(np.isnan(median)):
        return []
    top = float(np.nanmax(median))
    low = (median < settings["absolute"]) | (median < settings["relative"] * top)
    low &= ~np.isnan(median)
    if not low.any():
        return []
    names = [rank.name(c) for c in cols[low]]
    worst = ", ".join(f"{rank.name(c)} {m:.2g}" for c, m in zip(cols[low], median[low]))
    return [finding("grad_vanishing", None, [rank.rank], names,
                    f"Vanishing gradients in {len(names)} parameter(s): median gradient RMS {worst}, against "
                    f"{top:.2g} for the parameter that learns fastest. Layers this far behind hardly learn: "
                    "use ReLU-like activations, normalisation or residual connections.")]


def _levels(norm: np.ndarray, window: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """Per step i: the median of the finite norms among the ``window`` before the last
    ``span`` (NaN if none), and the median of the last ``span`` (NaN unless all finite)."""
    n = len(norm)
    level = np.full(n, np.nan)
    recent = np.full(n, np.nan)
    if n < span:
        return level, recent
    finite = np.where(np.isfinite(norm), norm, np.nan)
    history = windows(np.concatenate([np.full(window, np.nan), finite]), window)  # row j: norm[j-window:j]
    last = windows(norm, span)  # row j: norm[j:j+span]
    level[span - 1:] = row_nanmedians(history[:n - span + 1])
    ok = np.isfinite(last).all(axis=1)
    recent[span - 1:] = np.where(ok, row_nanmedians(np.where(ok[:, None], last, 0.0)), np.nan)
    level[span - 1:][~ok] = np.nan
    return level, recent


@rule("grad_exploding", Severity.ERROR, "grad", "the gradient norm jumps far above its running level, or turns non-finite")
def grad_exploding(rank: RankData, settings: dict):
    """
    Phenomenon: the global gradient norm (over every recorded gradient) stays above
    ``factor`` times its running median: the median of the last ``span`` recorded norms
    exceeds ``factor`` times the median of the ``window`` before them. Or a gradient holds
    NaN or Inf (at once).

    A single spike, common in long runs with small batches, moves a median of three not at
    all; a gradient that explodes stays high, and is caught one step later.

    Likely causes: hyperparameters (learning rate too large, no gradient clipping, loss
    scale too large); data (an outlier batch); a loss that is already non-finite (then the
    loss is the root cause and this is its symptom).

    Defaults: factor 10, span 3, window 50 recorded steps, after ``warmup`` 3 steps
    (msprobe's monitor flags a statistic 50% above its weighted history, tuned for long LLM
    runs; 10x keeps the normal early decay of small networks quiet).

    Fix: lower the learning rate, clip gradients (e.g. ops.clip_by_global_norm), check the
    batch at that step.
    """
    mask = rank.grad_mask & rank.training
    if not mask.any():
        return []
    cols = _with_grads(rank)
    every = len(cols) == len(rank.params)
    rows = np.flatnonzero(mask)
    # Views rather than copies in the common case: every parameter, the rows after step 0.
    pick = slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows

    def take(stat: str) -> np.ndarray:
        values = rank.column("grad", stat)[pick]
        return values if every else values[:, cols]

    l2 = take("l2")
    steps = rank.steps[mask]
    norm = np.sqrt(np.einsum("ij,ij->i", l2, l2, dtype=np.float64))
    nonfinite = (take("nan") > 0).any(axis=1) | (take("inf") > 0).any(axis=1) | ~np.isfinite(norm)
    warm, window = int(settings["warmup"]), int(settings["window"])
    span = max(1, int(settings["span"]))
    bad = np.flatnonzero(nonfinite)
    end = int(bad[0]) if len(bad) else len(norm)  # a spike is the finding only before the first non-finite step
    level, recent_median = _levels(norm[:end], window, span)
    spikes = np.isfinite(level) & (recent_median > settings["factor"] * np.maximum(level, 1e-30))
    spikes[:warm + span - 1] = False
    i = int(np.argmax(spikes)) if spikes.any() else end
    if i == len(norm):
        return []
    if nonfinite[i]:
        bad_values = (take("nan")[i] + take("inf")[i]) > 0
        names = [rank.name(c) for c in cols[bad_values]] or ["(global norm)"]
        message = (f"Non-finite gradients at step {int(steps[i])} in {name_list(names)}. If the loss was already "
                   "non-finite, that is the root cause; otherwise lower the learning rate or clip gradients.")
        return [finding("grad_exploding", int(steps[i]), [rank.rank], names, message, detail={"nonfinite": True})]
    recent = float(np.median(norm[i - span + 1:i + 1]))
    return [finding("grad_exploding", int(steps[i]), [rank.rank], [],
                    f"The gradient norm stayed high up to step {int(steps[i])}: median {recent:.4g} over the last "
                    f"{span} recorded steps, {recent / level[i]:.0f}x its running median {level[i]:.4g}. Lower the "
                    "learning rate or clip gradients.")]
