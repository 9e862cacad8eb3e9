"""The cross-rank codes. Their logic lives in :mod:`distcheck.analysis`; this registers
their documentation for ``distcheck rules`` and ``distcheck explain``."""
from distcheck.findings import Severity
from distcheck.rules.registry import document

document("init_mismatch", Severity.ERROR, "init", "trainable parameters differ across replicas at step 0", """
    Phenomenon: before the first update, replicas of a data-parallel group hold different
    values of trainable parameters. Every later step is then computed from different
    weights; the gradient all-reduce hides it from the loss curve.

    Likely causes: weight initialisation (``set_seed`` missing or rank-dependent, so each rank
    draws its own initial weights; a checkpoint loaded on some ranks only; parameter
    broadcast off).

    Detection: bit-exact digests of every parameter at step 0, compared by majority vote
    within each replica group; the ranks outside the majority are named (every rank of the
    group when there is no majority, e.g. 2 ranks).

    Fix: call ``mindspore.set_seed(same value)`` on every rank before the network is built,
    or load the same checkpoint everywhere.
    """)

document("grad_divergence", Severity.ERROR, "grad", "post-reduce gradients differ across replicas", """
    Phenomenon: the gradients the optimizer applies at step s (after the all-reduce) differ
    between replicas. Reported at the first step of each episode.

    Likely causes: the reduction is missing (parallel_mode left at STAND_ALONE, a custom loop
    without DistributedGradReducer), partial (some parameters excluded), or over the wrong
    group; non-deterministic reduction order across ranks; corrupted data in flight.

    Detection: digests of the captured post-reduce gradients, by majority vote.

    Fix: set parallel_mode=DATA_PARALLEL (Model.train) or reduce the gradients with
    nn.DistributedGradReducer over the right group (custom loops).
    """)

document("param_divergence", Severity.ERROR, "param", "parameters agreed, then differ after an update", """
    Phenomenon: replicas held equal parameters at the previous recorded step and differ after
    the update of step s. The message says whether the gradients of step s agreed: if they
    did, the update itself was inconsistent; if not, grad_divergence explains it (and the
    finding names it in ``caused_by``).

    Likely causes when the gradients agreed: optimizer settings that differ by rank (learning
    rate, weight decay, loss scale), optimizer state that differs (a restored state on some
    ranks), a write to the parameters outside the optimizer, a bit flip in memory.

    Detection: digests by majority vote; only parameters that newly disagree are named.

    Fix: make the optimizer configuration rank-independent; look for code that writes to
    parameters on some ranks.
    """)

document("buffer_divergence", Severity.WARNING, "buffer", "non-trainable parameters differ across replicas", """
    Phenomenon: non-trainable parameters, typically BatchNorm's moving_mean and
    moving_variance, differ across replicas. Each rank updates them from its own batches.

    Likely causes: BatchNorm without synchronisation. This is expected and does not affect the
    trained weights, but evaluation and saved checkpoints differ by rank.

    Fix: use nn.SyncBatchNorm if every rank must agree, or save and evaluate from one rank.
    """)

document("data_not_sharded", Severity.WARNING, "data", "replicas received identical batches at the same step", """
    Phenomenon: two or more replicas read exactly the same batch at the same step, so the job
    spends N devices on one device's worth of data.

    Likely causes: data processing (the data set is not sharded: num_shards/shard_id missing,
    or every rank uses the same shard id or the same seed for sampling).

    Detection: a digest of each step's batch tensors, compared across ranks.

    Fix: pass num_shards=get_group_size() and shard_id=get_rank() to the data set.
    """)

document("rank_missing", Severity.ERROR, "run", "a rank's dump is absent or unreadable", """
    Phenomenon: the run's world size says rank r exists, but its dump is missing or cannot be
    read.

    Likely causes: the rank crashed before training began; a node's run directory was not
    given to ``distcheck analyze``; the file was damaged (the input error names it).

    Fix: look at that rank's log (``RUN_DIR/logs``); give every node's run directory.
    """)

document("rank_stopped", Severity.ERROR, "run", "a rank's dump ends before the others (crash or hang)", """
    Phenomenon: a rank did not finish cleanly while others did, or stopped recording at an
    earlier step than the others. When heartbeats show one rank fell silent clearly before
    the rest, it is named as the one that died first.

    Likely causes: a crash (out of memory, a killed process, a Python exception), a hang in
    a collective, a node failure.

    Fix: read the named rank's log around the last recorded step.
    """)

document("structure_mismatch", Severity.ERROR, "init", "parameter names, shapes or dtypes differ across replicas", """
    Phenomenon: replicas do not hold the same parameters: names, shapes or dtypes differ.

    Likely causes: rank-dependent model code or configuration, different library versions.

    Fix: build the same network on every rank. Those ranks are left out of value comparisons.
    """)

document("replica_groups_unknown", Severity.WARNING, "run", "parallel mode shards parameters: replica groups needed", """
    Phenomenon: the job ran in a parallel mode that shards parameters (semi_auto_parallel,
    auto_parallel, hybrid), so distcheck cannot know which ranks hold replicas of each other,
    and made no cross-rank comparison.

    Fix: list the replica groups in a config file (``replica_groups: [[0, 2], [1, 3]]``) and
    pass it with ``--config``.
    """)
