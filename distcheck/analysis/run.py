"""A run: every rank's dump found in one or more run directories.

Several directories (one per node of a multi-node job) merge into one run. Problems
with the input (a missing directory, a damaged file, a rank written twice) are kept
as :class:`InputError`\\ s so the readable ranks can still be analysed. Files of two
different jobs are refused outright (:class:`MixedJobsError`): no analysis of them
could be right.

Loaded over a pool of K workers, a run is cut into K *shares*: worker ``i`` screens the
files ``i, i + K, ...`` and keeps their per-step series (losses, rollups, batch digests,
times: most of what is kept of a rank); the caller keeps an index of every rank (how it
ended, its steps, its parameter table) without them. Whatever needs every rank's series
runs on the shares (:meth:`Run.on_shards`) and sends back findings and small summaries,
so no process holds every rank's series, and the memory of each falls as K grows.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

from distcheck.analysis.pools import Pool
from distcheck.analysis.progress_bar import ProgressBar
from distcheck.analysis.rank_table import RankTable
from distcheck.exits import UsageError
from distcheck.store import schema
from distcheck.store.reader import DumpError, validated_state
from distcheck.store.screening import Screening
from distcheck.store.sidecars import job_ids_beside


@dataclass(frozen=True)
class InputError:
    path: str
    message: str
    rank: Optional[int] = None

    def __str__(self) -> str:
        return self.message


T = TypeVar("T")


@dataclass
class Run:
    dirs: list[str]
    #: rank -> its reader, kept as compact columns (see :class:`RankTable`). Of a run cut
    #: into shares, without the per-step series: a reader reads them from its file.
    readers: RankTable = field(default_factory=RankTable)
    errors: list[InputError] = field(default_factory=list)
    unreadable_ranks: dict[int, str] = field(default_factory=dict)
    #: The pool whose workers each hold a share of the ranks (see the module's
    #: docstring); None when every rank is held here, whole.
    shards: Optional[Pool] = None

    @property
    def ranks(self) -> list[int]:
        return sorted(self.readers)

    _cache: dict = field(default_factory=dict, repr=False)
    #: Every dump opened, kept or not: path -> (its job id, "" if none; its world size).
    _jobs: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)

    @property
    def world_size(self) -> int:
        if "world_size" not in self._cache:
            sizes = [self.readers.number("world_size", r) for r in self.readers]
            known = max(sizes) if sizes else 0
            highest = max([*self.readers, *self.unreadable_ranks], default=-1) + 1
            self._cache["world_size"] = max(known, highest)
        return self._cache["world_size"]

    def meta(self, key: str, default=None):
        """A metadata value as most ranks recorded it."""
        cached = ("meta", key, repr(default))
        if cached not in self._cache:
            counts: dict[str, list] = {}
            for meta, ranks in self.readers.distinct("meta"):  # ranks of one job share their metadata
                value = meta.get(key, default)
                counts.setdefault(repr(value), [0, value])[0] += len(ranks)
            self._cache[cached] = max(counts.values(), key=lambda c: c[0])[1] if counts else default
        return self._cache[cached]

    def on_shards(self, fn: Callable[["Run", Any], T], task: Any = None) -> list[T]:
        """``fn(share, task)`` on every share of the run, in the worker that holds it, or
        ``[fn(self, task)]`` when the run is held here whole. ``fn`` must be a module-level
        function; under mpirun every process gets every share's result."""
        if self.shards is None:
            return [fn(self, task)]
        return self.shards.map(_on_share, [(fn, task)] * self.shards.size)

    def drop(self, error: DumpError) -> None:
        """Leave out the rank whose file raised ``error``, and say so as an input error."""
        rank = next((r for r in self.readers if self.readers.paths[self.readers.row_of(r)] == error.path), None)
        if rank is None:
            raise error  # not one of ours: a bug, not damage
        self.readers.pop(rank).close()
        if self.shards is not None:
            self.on_shards(_drop_from_share, error.path)
        self._cache.clear()
        self.errors.append(InputError(error.path, str(error), rank))
        self.unreadable_ranks[rank] = error.problem

    def close(self) -> None:
        self.readers.close()
        if self.shards is not None:
            self.on_shards(_forget_share)
            self.shards = None


def load_run(dirs: list[str], screen_files: bool = True, pool: Optional[Pool] = None) -> Run:
    """Every rank file of ``dirs``. With ``screen_files``, forked children first check
    that none of them hangs HDF5 (see ``Screening``). With a ``pool`` of several workers,
    the run is cut into shares, one per worker (see the module's docstring)."""
    run = Run(dirs=list(dirs))
    files = _rank_files(run)
    with ProgressBar(f"reading {len(files)} rank files", len(files)) as bar:
        if not screen_files or not hasattr(os, "fork"):
            for path, rank in files:
                _load_file(run, path, rank, lambda: validated_state(path))
                bar.advance()
        elif pool is not None and pool.size > 1 and len(files) > 1:
            shares = pool.map(_load_share, [(run.dirs, files[i::pool.size]) for i in range(pool.size)])
            for i, (path, rank) in enumerate(files):
                index, errors = shares[i % pool.size]
                j = i // pool.size
                _load_file(run, path, rank, lambda: _state_or_error(index, errors, j))
                bar.advance()
            del shares
            kept = {rank: run.readers.paths[run.readers.row_of(rank)] for rank in run.readers}
            pool.map(_keep_in_share, [{r: kept[r] for _, r in files[i::pool.size] if r in kept}
                                      for i in range(pool.size)])
            run.shards = pool
        else:
            with Screening([path for path, _ in files], validated_state) as screening:
                for i, (path, rank) in enumerate(files):
                    _load_file(run, path, rank, lambda: screening.state(i))
                    bar.advance()
    try:
        refuse_mixed_jobs(run)
    except MixedJobsError:
        run.close()
        raise
    return run


def _rank_files(run: Run) -> list[tuple[str, int]]:
    """(path, rank from its name) of every rank file of the run's directories; a
    directory that is missing or holds none is an input error."""
    files: list[tuple[str, int]] = []
    for directory in run.dirs:
        if not os.path.isdir(directory):
            run.errors.append(InputError(directory, f"{directory}: no such run directory"))
            continue
        names = sorted(n for n in os.listdir(directory) if schema.FILE_PATTERN.match(n))
        if not names:
            run.errors.append(InputError(directory, f"{directory}: no rank files (rank_NNNNN.h5) found; "
                                         "is this the directory printed by 'distcheck launch'?"))
            continue
        files.extend((os.path.join(directory, n), int(schema.FILE_PATTERN.match(n).group(1))) for n in names)
    return files


# -- a worker's share of the run -------------------------------------------------
#: The share of the run this process holds (see the module's docstring), if any.
_SHARE: Optional[Run] = None


def _load_share(task: tuple[list[str], list[tuple[str, int]]]) -> tuple[RankTable, dict[int, DumpError]]:
    """Screen a share of the files and keep it here; send back its index (its rows
    without their series, in the order of the files, the failed ones left out) and the
    error of each failed file by its position."""
    global _SHARE
    dirs, files = task
    table, errors = screen_share([path for path, _ in files])
    _SHARE = Run(dirs=dirs, readers=table)
    return table.without_series(), errors


def _keep_in_share(kept: dict[int, str]) -> None:
    """Keep only the ranks the caller kept, each from the file it kept."""
    _SHARE.readers.select(kept)


def _drop_from_share(share: Run, path: str) -> None:
    for rank in [r for r in share.readers if share.readers.paths[share.readers.row_of(r)] == path]:
        share.readers.pop(rank).close()


def _forget_share(share: Run, _: Any) -> None:
    global _SHARE
    share.readers.close()
    _SHARE = None


def _on_share(call: tuple[Callable[[Run, Any], Any], Any]) -> Any:
    fn, task = call
    return fn(_SHARE, task)


def screen_share(paths: list[str]) -> tuple[RankTable, dict[int, DumpError]]:
    """Validate ``paths`` in a screening child (see :class:`Screening`), in a worker:
    the states as a :class:`RankTable` (rows in the order of ``paths``, the failed ones
    left out), and the error of each failed file by its position."""
    table, errors = RankTable(), {}
    with Screening(paths, validated_state) as screening:
        for i, path in enumerate(paths):
            try:
                table.add(path, screening.state(i))
            except DumpError as exc:
                errors[i] = exc
    return table, errors


def _state_or_error(table: RankTable, errors: dict[int, DumpError], position: int) -> dict:
    if position in errors:
        raise errors[position]
    return table.state(position - sum(1 for i in errors if i < position))


def _load_file(run: Run, path: str, rank_from_name: int, load_state: Callable[[], dict]) -> None:
    try:
        state = load_state()
    except DumpError as exc:
        run.errors.append(InputError(path, str(exc), rank_from_name))
        run.unreadable_ranks[rank_from_name] = exc.problem
        return
    rank = state["rank"]
    run._jobs[path] = (str(state["_attrs"].get("job_id", "") or ""), state["world_size"])
    if rank != rank_from_name:
        run.errors.append(InputError(path, f"{path}: file name says rank {rank_from_name} but the dump "
                                     f"says rank {rank}; rename or remove it", rank_from_name))
        return
    if rank in run.readers:
        other = run.readers.paths[run.readers.row_of(rank)]
        run.errors.append(InputError(path, f"{path}: rank {rank} is also in {other}; give each "
                                     "node's run directory once, and one run per directory", rank))
        return
    run.readers.add(path, state)
    run._cache.clear()
    run.errors.extend(InputError(path, problem, rank) for problem in state["problems"])


class MixedJobsError(UsageError):
    """The run directories hold files of more than one job (see :func:`refuse_mixed_jobs`)."""


def refuse_mixed_jobs(run: Run) -> None:
    """Raise :class:`MixedJobsError`, naming each job's files, when the files of ``run``
    come from more than one job: dumps, ``job.json`` or ``ends/`` records carrying
    different job ids, or dumps of different world sizes (which also catches dumps
    written without an id, by a probe attached in the user's own launcher). Dumps
    without an id (older versions, no id given) go with any id."""
    by_id: dict[str, list[str]] = {}
    for path, (job_id, _) in run._jobs.items():
        if job_id:
            by_id.setdefault(job_id, []).append(path)
    for directory in run.dirs:
        for path, job_id in job_ids_beside(directory).items():
            by_id.setdefault(job_id, []).append(path)
    if len(by_id) > 1:
        jobs = [f"job {job_id} ({_files(paths, run.dirs)})" for job_id, paths in by_id.items()]
        raise MixedJobsError(_mixed(run.dirs, len(by_id), "", jobs))
    by_size: dict[int, list[str]] = {}
    for path, (_, world_size) in run._jobs.items():
        by_size.setdefault(world_size, []).append(path)
    if len(by_size) > 1:
        jobs = [f"a job of {size} rank(s) ({_files(paths, run.dirs)})" for size, paths in sorted(by_size.items())]
        raise MixedJobsError(_mixed(run.dirs, len(by_size), " (their world sizes differ)", jobs))


def _mixed(dirs: list[str], n_jobs: int, why: str, jobs: list[str]) -> str:
    where = f"{dirs[0]} holds" if len(dirs) == 1 else f"{', '.join(dirs)} hold"
    return (f"{where} files of {n_jobs} different jobs{why}, which cannot be analysed as one: {'; '.join(jobs)}. "
            "Keep one job per run directory: move the other job's files away, and next time give "
            "'distcheck launch' a fresh --out directory (or --overwrite)")


def _files(paths: list[str], dirs: list[str], most: int = 6) -> str:
    """Paths as a message lists them: by file name when there is one directory."""
    names = [os.path.relpath(p, dirs[0]) if len(dirs) == 1 else p for p in sorted(paths)]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
