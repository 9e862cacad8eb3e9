"""Which ranks must hold identical copies of each parameter: its *replica group*.

Under pure data parallelism every rank replicates every parameter. Sharded and hybrid
jobs (tensor, pipeline and optimizer parallelism) hold different shards by design, and
only the ranks holding the same shard must agree bit for bit. A group is a sorted tuple
of ranks; a group of one has no replica to compare with.

Groups come from, in this order of precedence:

1. a :class:`Declaration` (the config's ``replica_groups``, or the probe's argument):
   entries of a glob over parameter names and a list of groups; the first entry whose
   glob matches a name decides. The old form, a bare list of groups, means every
   parameter. A rank listed in none of an entry's groups holds its own copy;
2. MindSpore's layout of each parameter (``distcheck.layout``), in semi/auto parallel;
3. the parallel mode: every rank under data parallel or stand-alone.

numpy only: the probe, the analyzer and the config share it.
"""
from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

Group = tuple[int, ...]

#: Parallel modes in which every rank holds a full replica of every parameter (None:
#: not recorded, as in single-process runs).
REPLICATED_MODES = frozenset({"data_parallel", "stand_alone", None})


class Source(enum.IntEnum):
    """Where a parameter's replica group came from (recorded per group in the dump)."""

    UNKNOWN = 0
    DECLARED = 1
    LAYOUT = 2
    DATA_PARALLEL = 3

    @property
    def label(self) -> str:
        return {0: "unknown", 1: "declared", 2: "MindSpore layout", 3: "data parallel"}[int(self)]


class DeclarationError(ValueError):
    """A declaration that cannot be used; the message names the entry."""


@dataclass(frozen=True)
class Entry:
    params: str  # a glob over parameter names, fnmatch style
    groups: tuple[Group, ...]

    def describe(self, index: int) -> str:
        return f"replica_groups entry {index + 1} (params: {self.params!r})"


@dataclass(frozen=True)
class Declaration:
    entries: tuple[Entry, ...]

    @classmethod
    def parse(cls, value: Any) -> Optional["Declaration"]:
        """A declaration from its config or JSON form; None for ``None``. Raises
        :class:`DeclarationError` for a malformed one, naming the entry."""
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise DeclarationError("'replica_groups' must be a list: of groups ([[0, 2], [1, 3]]) or of "
                                   "entries ({params: GLOB, groups: [[...]]})")
        if value and all(isinstance(v, dict) for v in value):
            entries = tuple(_entry(v, i) for i, v in enumerate(value))
        else:
            entries = (Entry("*", _groups(value, "'replica_groups'")),)
        return cls(entries)

    def to_json(self) -> list[dict]:
        return [{"params": e.params, "groups": [list(g) for g in e.groups]} for e in self.entries]

    def check_ranks(self, world_size: int) -> None:
        """Raise :class:`DeclarationError` for a rank outside ``0 .. world_size - 1``."""
        for i, entry in enumerate(self.entries):
            bad = sorted({r for g in entry.groups for r in g if r >= world_size})
            if bad:
                raise DeclarationError(f"{entry.describe(i)}: rank(s) {', '.join(map(str, bad))} do not exist in "
                                       f"a job of {world_size} rank(s)")

    def unmatched(self, names: Iterable[str]) -> list[str]:
        """The entries whose glob matches none of ``names``, described."""
        names = list(names)
        return [e.describe(i) for i, e in enumerate(self.entries)
                if not any(fnmatch.fnmatchcase(n, e.params) for n in names)]

    def group_of(self, name: str, rank: int) -> Optional[Group]:
        """``rank``'s group for parameter ``name``: from the first matching entry (a
        group of one if the entry does not list ``rank``), None if no entry matches."""
        for entry in self.entries:
            if fnmatch.fnmatchcase(name, entry.params):
                for group in entry.groups:
                    if rank in group:
                        return group
                return (rank,)
        return None


def _entry(value: dict, index: int) -> Entry:
    where = f"replica_groups entry {index + 1}"
    unknown = set(value) - {"params", "groups"}
    if unknown:
        raise DeclarationError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                               "an entry has 'params' (a glob) and 'groups'")
    params = value.get("params")
    if not isinstance(params, str) or not params:
        raise DeclarationError(f"{where}: 'params' must be a glob over parameter names, such as \"mid.*\"")
    return Entry(params, _groups(value.get("groups"), f"{where} (params: {params!r})"))


def _groups(value: Any, where: str) -> tuple[Group, ...]:
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(g, (list, tuple)) and g and all(isinstance(r, int) and not isinstance(r, bool) and r >= 0
                                                   for r in g) for g in value)
    if not ok:
        raise DeclarationError(f"{where}: 'groups' must be a list of lists of rank numbers, e.g. [[0, 2], [1, 3]]")
    seen: set[int] = set()
    for group in value:
        for rank in group:
            if rank in seen:
                raise DeclarationError(f"{where}: rank {rank} is in more than one group")
            seen.add(rank)
    return tuple(tuple(sorted(g)) for g in value)


def resolve(names: Sequence[str], rank: int, size: int, declaration: Optional[Declaration] = None,
            layouts: Optional[dict[str, Group]] = None,
            replicated: bool = True) -> tuple[list[Optional[Group]], list[Source]]:
    """Each parameter's replica group on ``rank`` of ``size``, and where it came from: the
    declaration, then ``layouts`` (name -> group), then every rank if the parallel mode
    replicates every parameter (``replicated``); else unknown (None)."""
    groups: list[Optional[Group]] = []
    sources: list[Source] = []
    for name in names:
        group = declaration.group_of(name, rank) if declaration is not None else None
        if group is not None:
            groups.append(group)
            sources.append(Source.DECLARED)
        elif layouts and name in layouts:
            groups.append(tuple(sorted(layouts[name])))
            sources.append(Source.LAYOUT)
        elif replicated:
            groups.append(tuple(range(size)))
            sources.append(Source.DATA_PARALLEL)
        else:
            groups.append(None)
            sources.append(Source.UNKNOWN)
    return groups, sources


def leaders(groups: Sequence[Optional[Group]]) -> list[int]:
    """Each group's lowest rank (-1 for unknown): two ranks are replicas of a parameter
    exactly when they report the same leader for it, which lets ranks that each know
    only their own groups agree on everyone's through one all-gather of integers."""
    return [min(g) if g else -1 for g in groups]
