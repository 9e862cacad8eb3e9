"""A run: every rank's dump found in one or more run directories.

Several directories (one per node of a multi-node job) merge into one run. Problems
with the input (a missing directory, a damaged file, a rank written twice) are kept
as :class:`InputError`\\ s so the readable ranks can still be analysed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from distcheck.analysis.pools import Pool
from distcheck.analysis.progress import ProgressBar
from distcheck.store import schema
from distcheck.store.reader import DumpError, DumpReader, Screening, decode_state, screen


@dataclass(frozen=True)
class InputError:
    path: str
    message: str
    rank: Optional[int] = None

    def __str__(self) -> str:
        return self.message


@dataclass
class Run:
    dirs: list[str]
    readers: dict[int, DumpReader] = field(default_factory=dict)
    errors: list[InputError] = field(default_factory=list)
    unreadable_ranks: dict[int, str] = field(default_factory=dict)

    @property
    def ranks(self) -> list[int]:
        return sorted(self.readers)

    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def world_size(self) -> int:
        if "world_size" not in self._cache:
            sizes = [r.world_size for r in self.readers.values()]
            known = max(sizes) if sizes else 0
            highest = max([*self.readers, *self.unreadable_ranks], default=-1) + 1
            self._cache["world_size"] = max(known, highest)
        return self._cache["world_size"]

    def meta(self, key: str, default=None):
        """A metadata value as most ranks recorded it."""
        cached = ("meta", key, repr(default))
        if cached not in self._cache:
            counts: dict[str, list] = {}
            for r in self.readers.values():
                value = r.meta.get(key, default)
                counts.setdefault(repr(value), [0, value])[0] += 1
            self._cache[cached] = max(counts.values(), key=lambda c: c[0])[1] if counts else default
        return self._cache[cached]

    def drop(self, error: DumpError) -> None:
        """Leave out the rank whose file raised ``error``, and say so as an input error."""
        rank = next((r for r, reader in self.readers.items() if reader.path == error.path), None)
        if rank is None:
            raise error  # not one of ours: a bug, not damage
        self.readers.pop(rank).close()
        self._cache.clear()
        self.errors.append(InputError(error.path, str(error), rank))
        self.unreadable_ranks[rank] = error.problem

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


def load_run(dirs: list[str], screen_files: bool = True, pool: Optional[Pool] = None) -> Run:
    """Every rank file of ``dirs``. With ``screen_files``, forked children first check
    that none of them hangs HDF5 (one child per worker of ``pool``, each screening a
    share of the files; see ``Screening``)."""
    run = Run(dirs=list(dirs))
    files: list[tuple[str, int]] = []  # (path, rank from its name)
    for directory in dirs:
        if not os.path.isdir(directory):
            run.errors.append(InputError(directory, f"{directory}: no such run directory"))
            continue
        names = sorted(n for n in os.listdir(directory) if schema.FILE_PATTERN.match(n))
        if not names:
            run.errors.append(InputError(directory, f"{directory}: no rank files (rank_NNNNN.h5) found; "
                                         "is this the directory printed by 'distcheck launch'?"))
            continue
        files.extend((os.path.join(directory, n), int(schema.FILE_PATTERN.match(n).group(1))) for n in names)
    paths = [path for path, _ in files]
    with ProgressBar(f"reading {len(files)} rank files", len(files)) as bar:
        if not screen_files or not hasattr(os, "fork"):
            for path, rank in files:
                _load_file(run, path, rank, lambda: DumpReader(path, check_hangs=False))
                bar.advance()
        elif pool is not None and pool.size > 1 and len(files) > 1:
            shares = [paths[i::pool.size] for i in range(pool.size)]
            messages: dict[int, bytes] = {}
            for i, share in enumerate(pool.map(screen, shares)):
                messages.update(zip(range(i, len(paths), pool.size), share))
            for i, (path, rank) in enumerate(files):
                _load_file(run, path, rank, lambda: DumpReader.validated(path, decode_state(messages.pop(i))))
                bar.advance()
        else:
            with Screening(paths) as screening:
                for i, (path, rank) in enumerate(files):
                    _load_file(run, path, rank, lambda: screening.reader(i))
                    bar.advance()
    return run


def _load_file(run: Run, path: str, rank_from_name: int, open_reader: Callable[[], DumpReader]) -> None:
    try:
        reader = open_reader()
    except DumpError as exc:
        run.errors.append(InputError(path, str(exc), rank_from_name))
        run.unreadable_ranks[rank_from_name] = exc.problem
        return
    if reader.rank != rank_from_name:
        run.errors.append(InputError(path, f"{path}: file name says rank {rank_from_name} but the dump "
                                     f"says rank {reader.rank}; rename or remove it", rank_from_name))
        reader.close()
        return
    if reader.rank in run.readers:
        other = run.readers[reader.rank].path
        run.errors.append(InputError(path, f"{path}: rank {reader.rank} is also in {other}; give each "
                                     "node's run directory once, and one run per directory", reader.rank))
        reader.close()
        return
    run.readers[reader.rank] = reader
    run._cache.clear()
    run.errors.extend(InputError(path, problem, reader.rank) for problem in reader.problems)
