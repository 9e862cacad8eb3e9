"""Whether the replicas of each tensor hold the same bits, decided where the tensors live.

The host path digests every tensor on the host, which on Ascend and GPU means copying
the parameters over PCIe at each recorded step. This is the device path's comparison
(design 2 of ``docs/cost-model.md``): for each tensor, ``AllReduce(MAX)`` and
``AllReduce(MIN)`` over its replica group are equal element by element exactly when
every replica holds the same values. Two things are aside, as the comparison is of
values, not bits:

- ``-0.0`` and ``0.0`` compare equal;
- NaN: where any replica holds a NaN the answer is "unknown" (the ``nan`` flag), since
  MAX and MIN of NaN differ between kernels. The NaN counts of the statistics find those.

Everything else, down to a flip of the lowest mantissa bit of one element on one
replica, is seen (tested on CPU against numpy, bit for bit: ``scripts/equality_job.py``).
The host reads back two booleans a tensor. The cost is two all-reduces of the tensors'
bytes over the group, so it suits the steps the online check runs on, not every step;
finding which replica differs then takes the host digests of the unequal tensors only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.communication import GlobalComm


class ReplicaEquality(nn.Cell):
    """``cell(tensors) -> (same, nan)``: two bool Tensors of shape (N,) for a tuple of N
    tensors, the same on every rank of ``group``. ``same[i]`` says every replica of
    tensor i holds the same values (see the module notes); ``nan[i]`` says some replica
    holds a NaN, which makes ``same[i]`` False. All ranks of the group must call it with
    tensors of the same shapes and dtypes, in the same order."""

    def __init__(self, group: str = GlobalComm.WORLD_COMM_GROUP) -> None:
        super().__init__()
        self.highest = ops.AllReduce(ops.ReduceOp.MAX, group)
        self.lowest = ops.AllReduce(ops.ReduceOp.MIN, group)
        self.any_rank = ops.AllReduce(ops.ReduceOp.MAX, group)

    def construct(self, tensors):
        equal = ()
        local_nan = ()
        for t in tensors:
            equal += (ops.reduce_all(ops.equal(self.highest(t), self.lowest(t))),)
            local_nan += (ops.reduce_any(ops.isnan(t)),)
        nan = self.any_rank(ops.cast(ops.stack(local_nan), mstype.int32)) > 0
        same = ops.logical_and(ops.stack(equal), ops.logical_not(nan))
        return same, nan


def compare(cell: ReplicaEquality, tensors: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Run ``cell`` on ``tensors``: (same, nan) as numpy bool arrays."""
    if not tensors:
        return np.zeros(0, np.bool_), np.zeros(0, np.bool_)
    same, nan = cell(tuple(tensors))
    return same.asnumpy().astype(np.bool_), nan.asnumpy().astype(np.bool_)
