"""The engines that spread an analysis over workers: ones that exist already.

A :class:`Pool` maps a module-level function over picklable tasks and returns the
results in task order, on every caller. Task ``i`` runs on worker ``i % size``, always
the same one, and a worker keeps what its tasks leave in it from one map to the next:
so a run can be cut into shares, each held by one worker only (see
:mod:`distcheck.analysis.run`).

- :class:`SerialPool`: here, one after the other;
- :class:`ProcessPool`: ``--workers K`` local processes, forked once;
- :class:`MpiPool`: every process of ``mpirun -n K distcheck analyze ...`` takes the
  tasks ``i`` with ``i % K == its rank``; the results are all-gathered, so every process
  goes on with the same data and only rank 0 writes the report.

A task that fails fails the whole map, on every caller alike: the exception of the
first failing task, in task order. The analysis then leaves out the rank whose damaged
file raised it and maps again; under mpirun every process must do so together, or one
would wait in a collective the others skipped.
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

    def close(self) -> None:
        ...


class SerialPool:
    size = 1
    writes = True

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        return [fn(t) for t in tasks]

    def close(self) -> None:
        pass


class ProcessPool:
    """``--workers K`` local processes, forked at the first map and kept until
    :meth:`close`. Task ``i`` always runs on worker ``i % K``, as under MPI, so what a
    task leaves in its worker (its share of the run, see :mod:`distcheck.analysis.run`)
    is there for the next map. Tasks and results travel pickled between this process
    and its own forks; a failure travels as plain strings (see :func:`_portable`)."""

    writes = True

    def __init__(self, size: int) -> None:
        self.size = size
        self._workers: list[tuple[Any, Any]] = []  # (process, its end of the pipe)

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        if not self._workers:
            self._start()
        results: list[Any] = []
        failure: Optional[tuple[str, ...]] = None
        for first in range(0, len(tasks), self.size):  # a task per worker at a time: no pipe fills up
            batch = list(tasks[first:first + self.size])
            for (_, conn), task in zip(self._workers, batch):
                conn.send((fn, task))
            for i, (process, conn) in enumerate(self._workers[:len(batch)]):
                try:
                    ok, value = conn.recv()
                except EOFError:
                    ok, value = False, (f"analysis worker {i} died (exit code {process.exitcode})",)
                if ok:
                    results.append(value)
                elif failure is None:
                    failure = value
        if failure is not None:
            raise _rebuilt(failure)
        return results

    def _start(self) -> None:
        import multiprocessing

        from distcheck.store.open_files import close_open_files

        close_open_files()  # each worker opens its own
        context = multiprocessing.get_context("fork")
        for _ in range(self.size):
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, mine), daemon=True)
            process.start()
            theirs.close()
            self._workers.append((process, mine))

    def close(self) -> None:
        """Stop the workers (and drop what they hold)."""
        for process, conn in self._workers:
            conn.close()  # the worker reads the end of the pipe and leaves
        for process, _ in self._workers:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        self._workers = []


def _serve(conn: Any, parents_end: Any) -> None:
    """A worker of :class:`ProcessPool`: run each task sent, send back its result."""
    parents_end.close()
    while True:
        try:
            fn, task = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the analysis is over: no cleanup of the parent's objects
        try:
            reply = (True, fn(task))
        except Exception as exc:
            reply = (False, _portable((0, exc))[1])
        conn.send(reply)


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

    def close(self) -> None:
        pass


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


def make_pool(workers: int) -> Pool:
    """The pool for ``--workers K``: MPI when this process runs under mpirun with more
    than one process, local processes for K > 1, else serial."""
    comm = _mpi_world()
    if comm is not None:
        return MpiPool(comm)
    return ProcessPool(workers) if workers > 1 and hasattr(os, "fork") else SerialPool()


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
