"""Every readable rank's validated state in a few columnar arrays, not objects per rank.

A run of ten thousand ranks cannot keep a :class:`~distcheck.store.reader.DumpReader`
(its parameter table, metadata, small series, each a handful of Python objects) per
rank: that alone grew the analysis by half a megabyte a rank. :class:`RankTable` keeps
what validation learnt of each rank in growable columns instead:

- numbers (rank, world size, steps recorded, status, signal, last heartbeat, ...) in
  one compact array per field;
- each rank's steps and small per-step series (has, loss, rollups, segment, batch
  digest, time) appended to one byte buffer per series, a rank being a slice of it;
- parameter tables, activation taps, metadata, problems, replica groups and
  attributes stored once per distinct value (ranks of one job share them) with an
  index per rank.

It is a mapping of rank to reader, as ``Run.readers`` always was: a reader is built
on demand from its row (a few microseconds), and the last few are kept so that a rank
read repeatedly keeps its open file.
"""
from __future__ import annotations

import json
from array import array
from collections import OrderedDict
from typing import Any, Hashable, Iterator, MutableMapping

import numpy as np

from distcheck.store.reader import DumpReader
from distcheck.store.schema import Status

#: Readers built from rows and kept, most recently used last (the pool of open files
#: keeps at most 64 open).
KEPT_READERS = 128

_NUMBERS = {"version": "b", "rank": "q", "world_size": "q", "n_steps": "q", "status": "b", "status_signal": "q",
            "n_stacks": "q", "pid": "q", "beat_len": "b"}


class _Distinct:
    """Values stored once each, with the index of a value's first copy."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._index: dict[Hashable, int] = {}

    def index(self, key: Hashable, value: Any) -> int:
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.values)
            self.values.append(value)
        return i


class RankTable(MutableMapping[int, DumpReader]):
    """rank -> :class:`DumpReader`, stored as columns (see the module's docstring)."""

    def __init__(self) -> None:
        self._rows: dict[int, int] = {}  # rank -> row, in the order ranks were added
        self.paths: list[str] = []
        self._numbers = {name: array(code) for name, code in _NUMBERS.items()}
        self._first = array("q")  # row -> offset of its first step in the per-step buffers
        self._beats = array("d")  # 4 per row
        self._steps = bytearray()  # int64, every row's steps end to end
        #: series path -> (dtype, row shape, bytes of every row that has it with that layout)
        self._series: dict[str, tuple[np.dtype, tuple[int, ...], bytearray]] = {}
        self._series_first: dict[str, array] = {}  # path -> per row, its first row in _series, -1 if not there
        self._odd: dict[int, dict[str, np.ndarray]] = {}  # rows whose series have another layout
        self._objects = {name: _Distinct() for name in ("params", "activations", "meta", "problems", "attrs",
                                                         "status_message", "replicas")}
        self._object_rows = {name: array("i") for name in self._objects}
        self._kept: "OrderedDict[int, DumpReader]" = OrderedDict()

    # -- filling -----------------------------------------------------------------
    def add(self, path: str, state: dict) -> None:
        """Keep rank ``state["rank"]`` (a validated reader's state, see
        :meth:`DumpReader.state`) read from ``path``, in place of any earlier row."""
        row = len(self.paths)
        self.paths.append(path)
        attrs = dict(state["_attrs"])
        pid = attrs.pop("pid", None)
        beat = state["_last_beat"]
        numbers = {"version": state["version"], "rank": state["rank"], "world_size": state["world_size"],
                   "n_steps": state["n_steps"], "status": int(state["status"]),
                   "status_signal": state["status_signal"], "n_stacks": state["_n_stacks"],
                   "pid": -1 if pid is None else int(pid), "beat_len": -1 if beat is None else len(beat)}
        for name, value in numbers.items():
            self._numbers[name].append(int(value))
        beat = np.zeros(4) if beat is None else np.asarray(beat, np.float64)
        self._beats.extend(np.resize(beat, 4).tolist())
        n = int(state["n_steps"])
        self._first.append(len(self._steps) // 8)
        steps = np.asarray(state["steps"], np.int64)
        if len(steps) != n:
            raise ValueError(f"{path}: {len(steps)} steps for {n} rows")
        self._steps += steps.tobytes()
        for first in self._series_first.values():
            first.append(-1)
        for key, values in state["_series"].items():
            self._add_series(row, key, np.asarray(values), n)
        objects = {"params": (tuple(state["params"]), state["params"]),
                   "activations": (tuple(state["activations"]), state["activations"]),
                   "meta": (json.dumps(state["meta"], sort_keys=True), state["meta"]),
                   "problems": (tuple(state["problems"]), tuple(state["problems"])),
                   "attrs": (json.dumps(attrs, sort_keys=True), attrs),
                   "status_message": (state["status_message"], state["status_message"]),
                   "replicas": _replicas_key(state.get("_replicas"))}
        for name, (key, value) in objects.items():
            self._object_rows[name].append(self._objects[name].index(key, value))
        self._kept.pop(state["rank"], None)
        self._rows[state["rank"]] = row

    def _add_series(self, row: int, key: str, values: np.ndarray, n: int) -> None:
        stored = self._series.get(key)
        if stored is None and len(values) == n:
            stored = self._series[key] = (values.dtype, values.shape[1:], bytearray())
            self._series_first[key] = array("q", [-1] * (row + 1))
        if stored is not None and len(values) == n and (values.dtype, values.shape[1:]) == stored[:2]:
            width = values.dtype.itemsize * int(np.prod(values.shape[1:], dtype=np.int64))
            self._series_first[key][row] = len(stored[2]) // width if width else 0
            stored[2].extend(np.ascontiguousarray(values).tobytes())
        else:  # another dtype or row shape than the first rank's: kept as it is
            self._odd.setdefault(row, {})[key] = values

    def without_series(self) -> "RankTable":
        """A copy without the per-step series (an index of the ranks: how each ended, its
        steps, its parameter table); its readers read their series from their files."""
        index = RankTable.__new__(RankTable)
        index.__dict__.update(self.__dict__)
        index._series, index._series_first, index._odd = {}, {}, {}
        index._kept = OrderedDict()
        return index

    def select(self, kept: dict[int, str]) -> None:
        """Keep only the ranks of ``kept``, each from the first row read from its path."""
        rows: dict[int, int] = {}
        for row, path in enumerate(self.paths):
            rank = self._numbers["rank"][row]
            if kept.get(rank) == path and rank not in rows:
                rows[rank] = row
        self._rows = rows
        self.close()
        self._kept.clear()

    # -- reading -----------------------------------------------------------------
    def row_of(self, rank: int) -> int:
        return self._rows[rank]

    def number(self, name: str, rank: int) -> int:
        """One of the numbers kept of ``rank`` (``n_steps``, ``status``, ``world_size``, ...)."""
        return self._numbers[name][self._rows[rank]]

    def distinct(self, name: str) -> list[tuple[Any, list[int]]]:
        """Each distinct ``params``, ``meta``, ``activations`` or ``replicas`` value of
        the ranks kept, with those ranks (in the order they were added)."""
        groups: dict[int, list[int]] = {}
        column = self._object_rows[name]
        for rank, row in self._rows.items():
            groups.setdefault(column[row], []).append(rank)
        return [(self._objects[name].values[i], ranks) for i, ranks in groups.items()]

    def shared(self, name: str, rank: int) -> Any:
        """``rank``'s ``params``, ``meta``, ``activations`` or ``replicas``: the same
        object for every rank that holds an equal value."""
        return self._objects[name].values[self._object_rows[name][self._rows[rank]]]

    def steps_of(self, rank: int) -> np.ndarray:
        row = self._rows[rank]
        return self._slice(self._steps, np.dtype(np.int64), (), row, self._first[row])

    def state(self, row: int) -> dict:
        """The state of row ``row``, as :meth:`DumpReader.validated` takes it."""
        numbers = {name: column[row] for name, column in self._numbers.items()}
        value = {name: self._objects[name].values[rows[row]] for name, rows in self._object_rows.items()}
        series = {key: self._slice(data, dtype, shape, row, self._series_first[key][row])
                  for key, (dtype, shape, data) in self._series.items() if self._series_first[key][row] >= 0}
        series.update(self._odd.get(row, {}))
        attrs = dict(value["attrs"])
        if numbers["pid"] >= 0:
            attrs["pid"] = numbers["pid"]
        beat = None
        if numbers["beat_len"] >= 0:
            beat = np.array(self._beats[4 * row:4 * row + numbers["beat_len"]], np.float64)
        state = {"version": numbers["version"], "rank": numbers["rank"], "world_size": numbers["world_size"],
                 "meta": value["meta"], "n_steps": numbers["n_steps"],
                 "steps": self._slice(self._steps, np.dtype(np.int64), (), row, self._first[row]),
                 "problems": list(value["problems"]),
                 "params": value["params"], "activations": value["activations"],
                 "status": Status(numbers["status"]), "status_message": value["status_message"],
                 "status_signal": numbers["status_signal"], "_attrs": attrs, "_last_beat": beat,
                 "_n_stacks": numbers["n_stacks"], "_series": series}
        if value["replicas"] is not None:
            state["_replicas"] = value["replicas"]
        return state

    def _slice(self, data: bytearray, dtype: np.dtype, shape: tuple, row: int, first: int) -> np.ndarray:
        """Row ``row``'s part of a per-step buffer (a copy), starting at step ``first``."""
        width = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        n = self._numbers["n_steps"][row]
        return np.frombuffer(data[first * width:(first + n) * width], dtype).reshape((n, *shape))

    # -- the mapping -------------------------------------------------------------
    def __getitem__(self, rank: int) -> DumpReader:
        reader = self._kept.get(rank)
        if reader is not None:
            self._kept.move_to_end(rank)
            return reader
        row = self._rows[rank]
        reader = DumpReader.validated(self.paths[row], self.state(row))
        self._kept[rank] = reader
        while len(self._kept) > KEPT_READERS:
            self._kept.popitem(last=False)
        return reader

    def __setitem__(self, rank: int, reader: DumpReader) -> None:
        if reader.rank != rank:
            raise ValueError(f"reader of rank {reader.rank} given for rank {rank}")
        self.add(reader.path, reader.state())

    def __delitem__(self, rank: int) -> None:
        del self._rows[rank]  # the row's bytes stay, unreachable: ranks are left out rarely
        self._kept.pop(rank, None)

    def __contains__(self, rank: object) -> bool:
        return rank in self._rows

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        """Close the files of the readers kept."""
        while self._kept:
            self._kept.popitem(last=False)[1].close()

    def kept_bytes(self) -> int:
        """Bytes the columns hold (the readers kept and the shared values aside)."""
        arrays = [*self._numbers.values(), self._first, self._beats, *self._series_first.values(),
                  *self._object_rows.values()]
        return (sum(a.itemsize * len(a) for a in arrays) + len(self._steps)
                + sum(len(data) for _, _, data in self._series.values()))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_kept": OrderedDict()}


def _replicas_key(replicas: Any) -> tuple[Hashable, Any]:
    if replicas is None:
        return None, None
    return tuple((name, a.dtype.str, a.shape, a.tobytes()) for name, a in sorted(replicas.items())), replicas
