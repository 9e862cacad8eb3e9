"""`distcheck.world.World` over MindSpore's own communication (the ranks of `msrun`).

`mindspore.communication.comm_func` does not work on CPU, so this uses the
`ops.AllGather` primitive, called eagerly (it runs outside any compiled graph, also
under GRAPH_MODE). Arrays travel as raw bytes packed into int32 words, which makes the
exchange bit-exact for every dtype (uint64 digests, float NaN payloads, bfloat16 bits)
whatever dtypes the collective supports on the device.
"""

from __future__ import annotations

import os

import numpy as np
from mindspore import Tensor, ops
from mindspore.communication import GlobalComm, get_group_size, get_rank

_WORD = np.dtype(np.int32)


def communication_ready() -> bool:
    """True when `mindspore.communication.init()` has run in this process."""
    return bool(GlobalComm.INITED)


def rank_hint() -> str:
    """This process's rank as text, for log lines written before a World exists."""
    if communication_ready():
        try:
            return str(get_rank())
        except Exception:  # fall back to what the launcher says
            pass
    return os.environ.get("RANK_ID", "0")


class MindSporeWorld:
    """The ranks of the MindSpore world group. Requires `init()` to have run."""

    name = "mindspore"

    def __init__(self) -> None:
        if not communication_ready():
            raise RuntimeError("MindSpore communication is not initialised: call mindspore.communication.init() first")
        self.rank: int = get_rank()
        self.size: int = get_group_size()
        self._gather = ops.AllGather()

    def allgather(self, array: np.ndarray) -> np.ndarray:
        """Every rank's `array`, stacked as shape `(size, *array.shape)`; all ranks must call it."""
        array = np.asarray(array)  # not ascontiguousarray: it turns a 0-d array into 1-d
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        words = -(-raw.size // _WORD.itemsize) or 1  # ceil, and at least one word
        padded = np.zeros(words * _WORD.itemsize, np.uint8)
        padded[: raw.size] = raw
        send = Tensor(padded.view(_WORD).reshape(1, words))
        received = self._gather(send).asnumpy()  # (size, words): rank r's row is row r
        rows = np.ascontiguousarray(received).view(np.uint8).reshape(self.size, -1)[:, : raw.size]
        return rows.copy().view(array.dtype).reshape((self.size, *array.shape))
