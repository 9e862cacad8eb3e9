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
    two runs by more than the envelope: the drift a noise run measured (``--noise``),
    times 100, or the default per dtype (64 ulps at step 0, doubling every 10 steps), or
    ``atol + rtol * |loss|`` with ``--rtol``/``--atol``. See ``distcheck.reference.envelope``.

    Likely causes: the data differ (order, sharding, augmentation), or the weights parted
    earlier (see diff_param), or a numerical change (dtype, kernel, reduction order).
    """, scope="two runs")
document("diff_grad", Severity.ERROR, "grad", "the two runs' gradients part beyond tolerance", """
    Phenomenon: at this step the gradient norm of the listed parameters (or the global
    norm) differs between the two runs by more than the envelope (see diff_loss).

    Likely causes: different data or loss scaling; a missing or different gradient
    reduction (a sum where the other run averages); a changed backward.
    """, scope="two runs")
document("diff_param", Severity.ERROR, "param", "the two runs' parameters part beyond tolerance", """
    Phenomenon: at this step the listed parameters' L2 norm, mean or update norm differ
    between the two runs by more than the envelope (see diff_loss); the first such step is
    reported, and how many times the envelope the difference is.

    Likely causes: different initial weights (step 0: seeds, checkpoints), a different
    optimizer setting (learning rate, weight decay, schedule), or gradients that parted.
    """, scope="two runs")
document("diff_factor", Severity.ERROR, "grad", "the gradients differ from the reference's by one factor", """
    Phenomenon: at the first step both runs recorded gradients (the weights are still
    those of step 0), every parameter's gradient L2 norm is the reference's times one
    common factor (all within 1e-3 of it). The message gives the factor, how long it
    holds, and the loss ratio at that step.

    Likely causes, when the factor is the ratio of the world sizes (2 for 2 ranks
    against 1 device): gradients summed over the ranks instead of averaged
    (``gradients_mean=False``, a ``DistributedGradReducer`` with ``mean=False``) when the
    loss agrees with the reference's; a loss multiplied by the world size when the loss is
    scaled by the same factor. Its inverse: gradients divided by the world size twice.
    Another factor: a loss scale not undone, a sum over the batch where a mean was meant,
    gradient accumulation dividing by the wrong count.

    Threshold: all parameters' ratios within 1e-3 of their median, which is at least 1%
    away from 1. Fix: average the gradients over the ranks exactly once.
    """, scope="two runs")
document("diff_batch", Severity.ERROR, "data", "the two runs did not see the same global batch", """
    Phenomenon: at the first step both runs recorded a batch, the union of the run's
    ranks' batches differs from the reference's global batch, by its statistics (input
    minimum, maximum, mean, standard deviation, NaN and Inf counts and size, mean label;
    batch digests cannot be combined across ranks). The message names the kind: ranks
    that read identical batches (the data are not split), global batches of another size,
    the same data over the run in another order (equal label histograms), or other data
    (shards that overlap, rows never read).

    Threshold: a relative difference of 1e-5 (the statistics are float32).
    Fix: give every rank its own shard of each global batch (``num_shards``/``shard_id``,
    a ``DistributedSampler``) and a per-rank batch of the global batch / world size.
    """, scope="two runs")
document("diff_batchnorm", Severity.WARNING, "param", "BatchNorm over the local batch explains the difference", """
    Phenomenon: the runs differ beyond the envelope, the network has BatchNorm that
    normalises over the batch without synchronisation, and the runs' ranks hold batches
    of different sizes (one device against N ranks). Each BatchNorm's statistics then
    span a different set of rows, so the forward pass differs from the first step.

    Confirm: use ``nn.SyncBatchNorm`` in the data-parallel run, or compare with BatchNorm
    in eval mode (``use_batch_statistics=False``); the runs should then agree.
    """, scope="two runs")
