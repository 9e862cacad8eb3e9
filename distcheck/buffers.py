"""Which non-trainable parameters are buffers the network updates itself.

BatchNorm's moving statistics change at every training step on every rank, from each
rank's own batch, so unsynchronised replicas differ by design (a warning at most). A
frozen weight (``requires_grad=False``) must stay identical on every replica. The probe's
online check and the analyzer both tell them apart by name first; the analyzer also
counts as buffers the non-trainable parameters that changed on every rank.
"""
from __future__ import annotations

#: The last part of the names of running statistics (BatchNorm and alike).
RUNNING_STATISTICS = ("moving_mean", "moving_variance", "running_mean", "running_var", "num_batches_tracked")


def is_running_statistic(name: str) -> bool:
    """Whether parameter ``name`` is named like a running statistic (``bn1.moving_mean``)."""
    return name.rsplit(".", 1)[-1] in RUNNING_STATISTICS
