"""The update norms: what the probe keeps of the parameters to measure how far each
moved since the last recorded step (the last column of a step's statistics)."""
from __future__ import annotations

import threading
from typing import Optional, Sequence

import numpy as np

from distcheck.store.schema import ParamInfo


#: Floating parameters of at least this many bytes take turns at having their update
#: measured (see :class:`Previous`); smaller ones are measured at every recorded step.
TURN_BYTES = 1 << 20


class Previous:
    """What the probe keeps of the parameters to measure each update: the L2 norm of a
    parameter's change since the last recorded step (the last column of a step's
    statistics), computed in float32 at least (float16 differences would round;
    bfloat16 arrives as bits).

    Floating parameters under :data:`TURN_BYTES` are kept whole and measured at every
    recorded step. Larger ones take turns: they are dealt into ``turns`` groups of about
    equal bytes, and recorded step r measures group r mod ``turns`` against the copy
    taken at step r - 1, after which group r + 1 is copied into the same buffer. So the
    host keeps about 1/``turns`` of the large parameters (at least the largest one) and
    moves 1/``turns`` of their bytes, rather than a copy of every parameter; a large
    parameter's update norm is NaN (unknown) at the steps that are not its turn. Each
    index is touched by one thread at a time.
    """

    def __init__(self, turns: int = 1) -> None:
        self.turns = max(1, int(turns))
        self.row = 0  # recorded steps seen
        self._plan: tuple = ()  # (shape, dtype) of each array the buffers were laid out for
        self._group: dict[int, int] = {}  # large parameter -> its turn; small ones are always measured
        self._buffer: dict[int, np.ndarray] = {}  # parameter -> where its copy is kept
        self._copied: dict[int, int] = {}  # parameter -> the row its copy was taken at
        self._measured: set[int] = set()  # parameters measured (and their copy refreshed) this row
        self._groups = 1
        self._local = threading.local()

    def begin(self, params: Sequence[ParamInfo], arrays: Sequence[Optional[np.ndarray]]) -> None:
        """Start a recorded step; lays the buffers out again if the parameters changed."""
        plan = tuple(None if a is None else (a.shape, a.dtype.str, p.dtype) for p, a in zip(params, arrays))
        if plan != self._plan:
            self._lay_out(params, arrays)
            self._plan = plan
        self._measured = set()

    def kept(self, i: int) -> Optional[np.ndarray]:
        """The copy of parameter ``i`` to measure this step's update against, then to
        refresh in place; None if its update is not measured at this step."""
        buffer = self._buffer.get(i)
        if buffer is None or not self._due(i, self.row) or self._copied.get(i) != self.row - 1:
            return None
        self._measured.add(i)
        return buffer

    def change(self, kept: np.ndarray, now: np.ndarray, dtype: str) -> float:
        """The norm of ``now - kept`` (the numpy path); then ``kept`` holds ``now``."""
        change = self._difference(now, kept, dtype == "bfloat16")
        np.copyto(kept, now)
        return float(np.sqrt(np.dot(change, change)))

    def finish(self, arrays: Sequence[Optional[np.ndarray]]) -> None:
        """End the step: copy what the next recorded step will measure."""
        for i, buffer in self._buffer.items():
            if not self._due(i, self.row + 1) or arrays[i] is None:
                continue
            if i not in self._measured:  # (a measured copy was refreshed in place)
                np.copyto(buffer, arrays[i])
            self._copied[i] = self.row
        self.row += 1

    def _due(self, i: int, row: int) -> bool:
        group = self._group.get(i)
        return group is None or group == row % self._groups

    def _lay_out(self, params: Sequence[ParamInfo], arrays: Sequence[Optional[np.ndarray]]) -> None:
        floating = [i for i, (p, a) in enumerate(zip(params, arrays))
                    if a is not None and (a.dtype.kind == "f" or p.dtype == "bfloat16")]
        large = sorted((i for i in floating if arrays[i].nbytes >= TURN_BYTES), key=lambda i: -arrays[i].nbytes)
        self._groups = max(1, min(self.turns, len(large)))
        loads = [0] * self._groups
        offsets: dict[int, int] = {}
        self._group = {}
        for i in large:  # the largest first, each to the lightest group
            g = loads.index(min(loads))
            self._group[i], offsets[i] = g, loads[g]
            loads[g] += -(-arrays[i].nbytes // 64) * 64
        arena = np.empty(max(loads, default=0), np.uint8)  # the groups share it, one turn at a time
        self._buffer = {i: np.empty_like(arrays[i], order="C") for i in floating if i not in self._group}
        for i in large:
            a = arrays[i]
            self._buffer[i] = arena[offsets[i]:offsets[i] + a.nbytes].view(a.dtype).reshape(a.shape)
        self._copied = {}

    def _difference(self, now: np.ndarray, before: np.ndarray, bf16: bool) -> np.ndarray:
        if bf16:  # rare: widen with temporaries
            return (_float(now, True) - _float(before, True)).ravel()
        dtype = np.dtype(np.float64) if now.dtype == np.float64 else np.dtype(np.float32)
        scratch = self._local.__dict__.setdefault("scratch", {})
        buffer = scratch.get(dtype)
        if buffer is None or buffer.size < now.size:
            buffer = scratch[dtype] = np.empty(now.size, dtype)
        out = buffer[:now.size]
        np.subtract(now.reshape(-1), before.reshape(-1), out=out, dtype=dtype)
        return out


def _float(array: np.ndarray, bf16: bool) -> np.ndarray:
    if bf16:  # the bits of bfloat16 are the high half of a float32's
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array if array.dtype.itemsize >= 4 else array.astype(np.float32)
