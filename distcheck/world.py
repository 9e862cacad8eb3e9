"""How ranks find each other: rank, world size, and an all-gather of small arrays.

The probes need only this much communication (digests for the online check), so it
sits behind a small interface with one implementation per launcher:

- :class:`SingleWorld`: one process;
- :class:`MpiWorld`: mpi4py, under ``mpirun``;
- :class:`FakeWorld`: N ranks as threads of one process, for fast tests;
- ``distcheck.mindspore.world.MindSporeWorld``: MindSpore's ``AllGather`` under ``msrun``.

Every rank must call :meth:`World.allgather` the same number of times with arrays of
the same shape and dtype; callers keep that promise by deciding collectively.
"""
from __future__ import annotations

import threading
from typing import Protocol

import numpy as np


class World(Protocol):
    name: str
    rank: int
    size: int

    def allgather(self, array: np.ndarray) -> np.ndarray:
        """Return every rank's ``array`` stacked as shape ``(size, *array.shape)``."""
        ...


class SingleWorld:
    name = "single"

    def __init__(self, rank: int = 0, size: int = 1) -> None:
        self.rank, self.size = rank, size

    def allgather(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)[None, ...].copy()


class MpiWorld:
    """mpi4py's ``COMM_WORLD`` (or a given communicator)."""

    name = "mpi"

    def __init__(self, comm=None) -> None:
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def allgather(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array)
        send = np.ascontiguousarray(array).reshape(-1)
        recv = np.empty((self.size, send.size), dtype=send.dtype)
        # Raw bytes: bit-exact for any dtype, including ones MPI has no type for.
        self.comm.Allgather(send.view(np.uint8), recv.view(np.uint8).reshape(self.size, -1))
        return recv.reshape(self.size, *array.shape)


class FakeWorld:
    """``size`` ranks living in threads of one process (tests only).

    Build the ranks with :meth:`create`, then run one thread per rank.
    """

    name = "fake"

    def __init__(self, rank: int, size: int, shared: "_Shared") -> None:
        self.rank, self.size, self._shared = rank, size, shared

    @classmethod
    def create(cls, size: int) -> list["FakeWorld"]:
        shared = _Shared(size)
        return [cls(r, size, shared) for r in range(size)]

    def allgather(self, array: np.ndarray) -> np.ndarray:
        shared = self._shared
        shared.slots[self.rank] = np.array(array, copy=True)
        shared.barrier.wait(timeout=60)
        out = np.stack(shared.slots)
        shared.barrier.wait(timeout=60)
        return out


class _Shared:
    def __init__(self, size: int) -> None:
        self.barrier = threading.Barrier(size)
        self.slots: list = [None] * size
