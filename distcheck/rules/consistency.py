"""The cross-rank codes. Their logic lives in :mod:`distcheck.analysis`; this registers
their documentation for ``distcheck rules`` and ``distcheck explain``."""
from distcheck.findings import Severity
from distcheck.rules.registry import document

document("init_mismatch", Severity.ERROR, "init", "weights differ across replicas at step 0", """
    Phenomenon: before the first update, replicas of a data-parallel group hold different
    weights: trainable parameters, or frozen ones (``requires_grad=False`` and not a buffer
    the network updates itself: a frozen pretrained backbone, the embeddings of a
    fine-tune). Every
    later step is then computed from different weights; the gradient all-reduce hides it
    from the loss curve.

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
    ranks), a write to the parameters outside the optimizer, a bit flip in memory. For a
    frozen weight (``requires_grad=False``), which no update changes: weights loaded, or
    code that writes to it, on some ranks only.

    Detection: digests by majority vote; only parameters that newly disagree are named.

    Fix: make the optimizer configuration rank-independent; look for code that writes to
    parameters on some ranks.
    """)

document("buffer_divergence", Severity.WARNING, "buffer", "buffers the network updates itself differ across replicas", """
    Phenomenon: buffers, the non-trainable parameters the network updates itself, differ
    across replicas. Each rank updates them from its own batches. A non-trainable parameter
    is a buffer when it is named like a running statistic (BatchNorm's moving_mean and
    moving_variance, running_mean, running_var, num_batches_tracked) or changed during the
    run on every rank. Any other non-trainable parameter is a frozen weight, including one
    that changed on some ranks only (something wrote to it there): a difference there is
    init_mismatch or param_divergence, an error.

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

document("rank_stopped", Severity.ERROR, "run", "a rank crashed or was killed first; the others followed", """
    Phenomenon: the job did not finish, and one rank ended first: an exception, a signal (a
    SIGKILL from the out-of-memory killer, a segfault), or an exit before training ended.
    The other ranks then waited for it in a collective and were stopped by the launcher or
    by a timeout; they are named in the message as waiting, not blamed.

    Detection: each rank's end is known from its dump (closed as finished, aborted with the
    exception's text, or terminated by a signal), from its supervisor (the real exit code or
    signal, even after SIGKILL) and from its progress file (its true last completed step,
    written at every step). The rank blamed is the one with the fewest completed steps; among
    equals, one outside the training step (in its callbacks, the data pipeline or distcheck)
    rather than inside it, where ranks wait for each other's collectives; then the one that
    ended clearly first (5 s margin).

    Likely causes: out of memory, a bug that raises on one rank only, a node failure.

    Fix: read the named rank's log (``RUN_DIR/logs``) around the step named.
    """)

document("rank_stalled", Severity.ERROR, "run", "a rank stopped making progress; the others waited for it", """
    Phenomenon: a rank stayed alive but completed no step, while the others waited for it in
    a collective, until a timeout or ``distcheck launch --stall-timeout`` ended the job.
    MindSpore and msrun then usually blame a *waiting* rank ("worker 0 is the first one timed
    out"); distcheck names the rank that stalled, its last completed step, and where its main
    thread was: the file, line and function from the Python stack its heartbeat thread kept.

    Detection: as for rank_stopped (fewest completed steps, then outside the training step),
    with a rank counted as stalled when its heartbeat thread kept a stack at its last
    completed step (it does after ``stall_seconds``, 10 s, without progress; less under
    ``--stall-timeout``) and it did not end by itself.

    Likely causes: a data loader or callback that never returns (a lock, a network read, an
    ``input()``), a rank-dependent branch that skips a collective, a deadlock in user code.

    Fix: look at the named file and line.
    """)

document("job_stopped", Severity.INFO, "run", "the job was stopped on purpose: from outside, or by --fail-fast", """
    Phenomenon: the job was stopped by a signal from outside (SIGTERM or SIGINT to
    ``distcheck launch``, a scheduler's preemption, a Ctrl-C) before training ended, or
    the online check stopped it on every rank at once because replicas differed and
    ``--fail-fast`` asked for that. Every rank closed its dump with the steps it completed;
    no rank is to blame for the stop (the consistency findings name the culprit of a
    fail-fast stop).

    Fix: nothing, unless the stop was not expected.
    """)

document("probe_failed", Severity.WARNING, "run", "distcheck's recording stopped on a rank; training went on", """
    Phenomenon: the probe met an error on a rank (an unwritable run directory, a full disk,
    a failure setting up its communication, a bug) and stopped recording there; training went
    on as it would have without distcheck. Steps after that are compared across the other
    ranks only.

    Fix: the message says what failed. ``distcheck launch --strict`` makes such errors stop
    the job instead, for CI.
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
