"""Codes of ``distcheck diff`` (computed in :mod:`distcheck.diff`), documented here so that
``distcheck rules`` and ``distcheck explain`` cover them."""
from __future__ import annotations

from distcheck.findings import Severity
from distcheck.rules.registry import document

document("diff_structure", Severity.ERROR, "init", "the two runs hold different parameters", """
    Phenomenon: ``distcheck diff`` found parameters in one run that the other lacks, or
    with another shape or dtype. Only the parameters both hold alike are compared.

    Fix: compare runs of the same model, or rename parameters consistently.
    """, scope="two runs")
document("diff_loss", Severity.ERROR, "loss", "the two runs' losses part beyond tolerance", """
    Phenomenon: at this step the loss (averaged over each run's ranks) differs between the
    two runs by more than ``atol + rtol * |loss|``.

    Likely causes: the data differ (order, sharding, augmentation), or the weights parted
    earlier (see diff_param), or a numerical change (dtype, kernel, reduction order).
    """, scope="two runs")
document("diff_grad", Severity.ERROR, "grad", "the two runs' gradients part beyond tolerance", """
    Phenomenon: at this step the gradient norm of the listed parameters (or the global
    norm) differs between the two runs by more than the tolerance.

    Likely causes: different data or loss scaling; a missing or different gradient
    reduction (a sum where the other run averages); a changed backward.
    """, scope="two runs")
document("diff_param", Severity.ERROR, "param", "the two runs' parameters part beyond tolerance", """
    Phenomenon: at this step the listed parameters' L2 norm, mean or update norm differ
    between the two runs by more than the tolerance; the first such step is reported.

    Likely causes: different initial weights (step 0: seeds, checkpoints), a different
    optimizer setting (learning rate, weight decay, schedule), or gradients that parted.
    """, scope="two runs")
