"""The engines that spread an analysis over workers: ones that exist already.

A :class:`Pool` maps a module-level function over picklable tasks and returns the
results in task order, on every caller:

- :class:`SerialPool`: here, one after the other;
- :class:`ProcessPool`: ``--workers K`` local processes (``concurrent.futures``);
- :class:`MpiPool`: every process of ``mpirun -n K distcheck analyze ...`` takes the
  tasks ``i`` with ``i % K == its rank``; the results are all-gathered, so every process
  goes on with the same data and only rank 0 writes the report.

A task that fails fails the whole map, on every caller alike: the exception of the
first failing task, in task order. The analysis then leaves out the rank whose damaged
file raised it and maps again; under mpirun every process must do so together, or one
would wait in a collective the others skipped.

The analysis splits its heaviest work, the votes over every recorded step, by parameter
(each worker reads its columns of every rank file) and the health rules by rank.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Protocol, Sequence

from distcheck.store.errors import DumpError


class Pool(Protocol):
    size: int
    writes: bool  # whether this process writes the report

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        ...


class SerialPool:
    size = 1
    writes = True

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        return [fn(t) for t in tasks]


class ProcessPool:
    writes = True

    def __init__(self, size: int) -> None:
        self.size = size

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        if len(tasks) < 2:
            return [fn(t) for t in tasks]
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
        with ProcessPoolExecutor(max_workers=min(self.size, len(tasks)), mp_context=context) as pool:
            return list(pool.map(fn, tasks))


class MpiPool:
    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.writes = self.rank == 0

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        mine: dict[int, Any] = {}
        failure: Optional[tuple[int, Exception]] = None
        for i in range(self.rank, len(tasks), self.size):
            try:
                mine[i] = fn(tasks[i])
            except Exception as exc:  # every process must reach the all-gather, and hear of it
                failure = (i, exc)
                break
        parts = self.comm.allgather((mine, _portable(failure)))
        failures = sorted((f for _, f in parts if f is not None), key=lambda f: f[0])
        if failures:
            first, fields = failures[0]
            if failure is not None and failure[0] == first:
                raise failure[1]  # this process's own, with its traceback
            raise _rebuilt(fields)
        merged: dict[int, Any] = {}
        for part, _ in parts:
            merged.update(part)
        return [merged[i] for i in range(len(tasks))]


def _portable(failure: Optional[tuple[int, Exception]]) -> Optional[tuple[int, tuple[str, ...]]]:
    """``failure`` as plain strings, to travel to the other MPI processes: a damaged dump
    as its path, problem and hint, anything else as a message."""
    if failure is None:
        return None
    index, exc = failure
    if isinstance(exc, DumpError):
        return index, (exc.path, exc.problem, exc.hint)
    return index, (f"analysis task {index} failed: {type(exc).__name__}: {exc}",)


def _rebuilt(fields: tuple[str, ...]) -> Exception:
    """The exception :func:`_portable` described."""
    return DumpError(*fields) if len(fields) == 3 else RuntimeError(fields[0])


def chunks(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` cut into at most ``parts`` contiguous, nearly equal, non-empty pieces."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(items[start:stop]))
        start = stop
    return out


def make_pool(workers: int) -> Pool:
    """The pool for ``--workers K``: MPI when this process runs under mpirun with more
    than one process, local processes for K > 1, else serial."""
    comm = _mpi_world()
    if comm is not None:
        return MpiPool(comm)
    return ProcessPool(workers) if workers > 1 else SerialPool()


def _mpi_world() -> Any:
    launched = any(k in os.environ for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID"))
    if not launched:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None
