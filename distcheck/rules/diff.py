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
document("diff_update_factor", Severity.ERROR, "param", "the updates differ from the reference's by one factor",
         """
    Phenomenon: at the first step both runs recorded gradients and updates, the gradients
    agree with the reference's (every parameter's L2 norm within 1e-3), but every
    parameter's update norm (the L2 norm of its change over the step) is the reference's
    times one common factor. The optimizer was handed the same gradients and moved the
    weights by a different amount: the learning rate differs by that factor.

    Likely causes: the learning rate scaled by the world size (the linear scaling rule)
    although the global batch is the reference's, or scaled twice (in the script and again
    by a scheduler or wrapper: the factor is then the square of the world-size ratio);
    another momentum, weight decay or loss scale in the update.

    Threshold: gradients within 1e-3 of the reference's; all update ratios within 1e-3 of
    their median, which is at least 1% away from 1. Fix: give both runs the same
    optimizer settings for the same global batch.
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
document("diff_shard", Severity.ERROR, "grad",
         "a sharded parameter's gradient differs by a factor, in one shard or all", """
    Phenomenon: the run holds a parameter in shards (model or tensor parallel, its replica
    groups declared or taken from the layout) and the reference holds it whole. At the
    first step both recorded gradients, the shards do not rebuild the reference's
    gradient: one shard is a factor times its true piece while the others agree, or every
    shard is scaled by one factor. The story is checked against the L2 norm, mean,
    minimum and maximum together (see ``distcheck.reference.pieces``). The message names
    the parameters, the shard (the ranks of its replica group) and the factor.

    Likely causes: a factor equal to the shard's replica-group size: that shard's
    gradients summed over its data-parallel group instead of averaged; its inverse:
    divided twice; a factor equal to the number of shards: the backward of the AllReduce
    that combines the shards' outputs sums the identical output gradients of a
    model-parallel set. Every rank of the group does the same, so the replicas agree and
    only a reference sees it.

    Threshold: every statistic rebuilt within 1e-3 of the tensor's scale; a factor at
    least 1% away from 1. Fix: reduce each shard's gradients over its own replica group,
    divided by that group's size, exactly once.
    """, scope="two runs")
document("diff_activation", Severity.ERROR, "activation",
         "the first layer whose output differs from the reference's", """
    Phenomenon: with ``--activations`` on both runs, at this step an activation cell's
    output (its mean, or its largest absolute value, over the global batch) differs from
    the reference's by more than the envelope (see diff_loss), no later than the loss
    and the gradients part. The message names the first such cell in the model's order
    (the forward order when cells are defined in the order they are called), the cells
    before it that agree, and the others that differ at that step. When the forward pass
    still agrees where the gradients part, a note says so instead: the difference is in
    the backward pass, the gradient reduction or the update.

    Likely causes: the layer just before the named cell computes something else on this
    run: different data (every layer from the first), BatchNorm over another batch (the
    cell after the BatchNorm), a model-parallel layer combined wrongly, another dtype or
    kernel. See ``distcheck.reference.layers``.
    """, scope="two runs")
