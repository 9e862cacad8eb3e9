"""Which replicas of each tensor differ, decided where the tensors live.

The host path digests every tensor on the host, which on Ascend and GPU means copying
the parameters over PCIe at each recorded step. This is the device path's comparison
(design 2 of ``docs/cost-model.md``): each tensor is broadcast from the group's leader,
every rank compares its own copy with the leader's element by element, and the ranks
all-gather one flag per tensor. The host reads back an (R, N) table of booleans.

It is exact for values, not bits, so two things are aside:

- ``-0.0`` and ``0.0`` compare equal;
- NaN: where any replica holds a NaN the answer is "unknown" (the ``nan`` table), as NaN
  equals nothing. The NaN counts of the statistics find those.

Everything else, down to a flip of the lowest mantissa bit of one element on one rank,
is seen, and the rank named (tested on CPU against numpy, bit for bit, under msrun:
``scripts/equality_job.py``). The cost per tensor is one broadcast of its bytes over the
group and one pass to compare, plus one all-gather of 2N flags: it suits the steps the
online check runs on, not every step.

Why a broadcast and not ``AllReduce(MAX)`` against ``AllReduce(MIN)``: the broadcast
moves about half the bytes of one all-reduce in a ring, names the differing ranks
directly, and runs on CPU, whose AllReduce only sums.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.communication import GlobalComm


class ReplicaEquality(nn.Cell):
    """``cell(tensors) -> (R, 2N)`` float32 Tensor, the same on every rank of ``group``,
    for a tuple of N tensors: column i of row r is 1 where rank r's tensor i differs from
    the leader's (rank ``leader``, in ``group``), column N + i is 1 where rank r's holds a
    NaN. All ranks of the group must call it with tensors of the same shapes and dtypes,
    in the same order. Floats are compared as they are (float64 where the device's
    broadcast takes it; CPU's takes float16 and float32); integers of up to 32 bits as two
    exact float32 halves (CPU collectives move floats only)."""

    def __init__(self, leader: int = 0, group: str = GlobalComm.WORLD_COMM_GROUP) -> None:
        super().__init__()
        self.broadcast = ops.Broadcast(leader, group)
        self.gather = ops.AllGather(group)
        self.any = ops.ReduceAny()

    def construct(self, tensors):
        differs = ()
        nan = ()
        for t in tensors:
            if t.dtype in (mstype.float32, mstype.float16, mstype.float64):
                differs += (self._differs(t),)
            else:
                wide = ops.cast(t, mstype.int64)
                high = ops.cast(ops.floor_div(wide, 65536), mstype.float32)
                low = ops.cast(ops.floor_mod(wide, 65536), mstype.float32)
                differs += (ops.logical_or(self._differs(high), self._differs(low)),)
            nan += (self.any(ops.not_equal(t, t)),)  # never for integers
        flags = ops.cast(ops.stack(differs + nan), mstype.float32)
        return self.gather(ops.expand_dims(flags, 0))

    def _differs(self, t):
        leaders = self.broadcast((t,))[0]
        both_nan = ops.logical_and(ops.not_equal(t, t), ops.not_equal(leaders, leaders))
        return self.any(ops.logical_and(ops.not_equal(t, leaders), ops.logical_not(both_nan)))


def compare(cell: ReplicaEquality, tensors: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Run ``cell`` on ``tensors``: (differs, nan), two (R, N) numpy bool tables."""
    if not tensors:
        return np.zeros((0, 0), np.bool_), np.zeros((0, 0), np.bool_)
    table = cell(tuple(tensors)).asnumpy() > 0
    n = len(tensors)
    return table[:, :n], table[:, n:]


def same(differs: np.ndarray, nan: np.ndarray) -> np.ndarray:
    """(N,) whether every replica of each tensor holds the same values (never with a NaN)."""
    return ~differs.any(axis=0) & ~nan.any(axis=0)
