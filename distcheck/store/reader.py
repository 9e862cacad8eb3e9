"""Reads one rank's dump, validating it, in blocks rather than whole.

Any problem with a file (truncated, empty, foreign, of a newer format) becomes a
:class:`DumpError` that names the file and says what to do; never a traceback.
Per-step series that are small (steps, loss, rollups) are read whole; per-parameter
digests and statistics are read by step range.

Beside it: the validation of files in a forked child (:mod:`distcheck.store.screening`),
the pool of open files (:mod:`distcheck.store.open_files`), and the SWMR open with its
setting in libhdf5 (:mod:`distcheck.store.libhdf5`).
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Optional

import h5py
import numpy as np

from distcheck.store import schema
from distcheck.store.errors import DumpError
from distcheck.store.libhdf5 import open_swmr
from distcheck.store.open_files import OPEN_FILES
from distcheck.store.schema import ParamInfo, Phase, Status
from distcheck.store.screening import Screening

__all__ = ["DumpError", "DumpReader", "Heartbeat", "Stack", "validated_state"]


#: Runs of at most this many recorded steps have their small per-step series (a few
#: dozen bytes a step) read at open, so that passes over thousands of ranks need not
#: open each file again.
PREFETCH_STEPS = 4096

#: Larger world sizes are taken for damage.
MAX_WORLD_SIZE = 1 << 20


@dataclass(frozen=True)
class Heartbeat:
    """One sign of life: at ``time`` the rank had completed ``step`` (its latest
    update, recorded or not) at time ``since``, and its main thread was in ``phase``."""

    time: float
    step: int
    phase: Phase
    since: float


@dataclass(frozen=True)
class Stack:
    """The main thread's Python stack, taken while the rank made no progress."""

    time: float
    step: int
    phase: Phase
    text: str


class DumpReader:
    """One rank's dump, validated when constructed.

    With ``check_hangs`` the validation runs in a forked child (see :class:`Screening`),
    so that a file whose damage sends HDF5 into an endless loop costs a timeout, not the
    analysis. The file is opened on demand and may be closed again by the pool of open
    files.
    """


    def __init__(self, path: str, check_hangs: bool = True) -> None:
        self.path = path
        self._series: dict[str, np.ndarray] = {}
        #: Problems that cost data but not the whole file (shown as input errors).
        self.problems: list[str] = []
        self._h5: Optional[h5py.File] = None
        if check_hangs and hasattr(os, "fork"):
            with Screening([path], validated_state) as screening:
                self.__dict__.update(screening.state(0))
            return
        try:
            self._validate()
        except DumpError:
            self.close()
            raise
        except Exception as exc:  # any damage inside an HDF5 file that opened
            self.close()
            raise DumpError(path, f"damaged dump: {exc}", "re-run the job, or leave this rank's file out") from None
        finally:
            self.release()  # opened again on demand

    @classmethod
    def validated(cls, path: str, state: dict) -> "DumpReader":
        """A reader of ``path`` from what a screening child's validation learnt."""
        reader = cls.__new__(cls)
        reader.path, reader._h5 = path, None
        reader.__dict__.update(state)
        return reader

    def state(self) -> dict:
        """What validation learnt of the file, for :meth:`validated` in this or another
        process (see :mod:`distcheck.store.screening`)."""
        return {"version": self.version, "rank": self.rank, "world_size": self.world_size, "meta": self.meta,
                "n_steps": self.n_steps, "steps": self.steps, "problems": self.problems, "params": self.params,
                "activations": self.activations, "status": self.status, "status_message": self.status_message,
                "status_signal": self.status_signal, "_attrs": self._attrs, "_last_beat": self._last_beat,
                "_n_stacks": self._n_stacks, "_series": self._series, "_replicas": self._replicas}

    @property
    def _file(self) -> h5py.File:
        """The open HDF5 file, opened again if the pool of open files closed it."""
        if self._h5 is None:
            self._h5 = _open(self.path)
        OPEN_FILES.use(self)
        return self._h5

    def release(self) -> None:
        """Close the file; it is opened again on demand."""
        h5, self._h5 = self._h5, None
        if h5 is not None:
            h5.close()

    # -- validation --------------------------------------------------------------
    def _validate(self) -> None:
        f = self._file
        datasets = _Datasets(f)  # validation asks several things of most datasets: open each once
        root = f["/"]  # the group of the file's attributes, opened once (each f.attrs opens it)
        fmt = _attr(root, "format", None)
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != schema.FORMAT:
            raise DumpError(self.path, "not a distcheck dump (no 'format' attribute of "
                            f"'{schema.FORMAT}')", "only rank_NNNNN.h5 files written by distcheck belong in a run directory")
        version = int(_attr(root, "format_version", -1))
        if version > schema.VERSION:
            raise DumpError(self.path, f"format version {version} is newer than this distcheck reads "
                            f"({schema.VERSION})", "upgrade distcheck")
        if version < schema.OLDEST_VERSION:
            raise DumpError(self.path, f"bad format version {version}")
        self.version = version
        self.rank = int(_attr(root, "rank"))
        self.world_size = int(_attr(root, "world_size"))
        if not 0 <= self.rank < self.world_size <= MAX_WORLD_SIZE:
            raise DumpError(self.path, f"impossible rank {self.rank} of world size {self.world_size}")
        self.meta = json.loads(_text(_attr(root, "meta", "{}")))
        if not isinstance(self.meta, dict):
            raise DumpError(self.path, "the 'meta' attribute is not a JSON object")
        names = [_text(x) for x in datasets.read("params/name", ())]
        shapes = [_param_shape(_text(x)) for x in datasets.read("params/shape", ())]
        dtypes = [_text(x) for x in datasets.read("params/dtype", ())]
        trainable = datasets.read("params/trainable", ()).astype(bool)
        has_grad = datasets.read("params/has_grad", ()).astype(bool)
        if not (len(names) == len(shapes) == len(dtypes) == len(trainable) == len(has_grad)):
            raise DumpError(self.path, "parameter tables have different lengths")
        self.params = [ParamInfo(n, s, d, bool(t), bool(g))
                       for n, s, d, t, g in zip(names, shapes, dtypes, trainable, has_grad)]
        self.activations = list(zip((_text(x) for x in datasets.read("act/name", ())),
                                    (_text(x) for x in datasets.read("act/kind", ()))))
        layout = schema.step_layout(len(self.params), len(self.activations))
        lengths = []
        for path, (tail, _, _) in layout.items():
            if not datasets.has(path) and (path in schema.OPTIONAL_IN_2 or (version < 2 and path in schema.ADDED_IN_2)):
                continue
            shape = datasets.shape(path)
            if tuple(shape[1:]) != tuple(tail):
                raise DumpError(self.path, f"dataset {path} has rows of shape {shape[1:]}, expected {tail}")
            lengths.append(shape[0])
        for path in (schema.LABEL_COUNTS, schema.HEARTBEAT, schema.STATUS, schema.STATUS_MESSAGE):
            if not datasets.has(path):
                raise DumpError(self.path, f"dataset {path} is missing")
        # A write cut short by a crash can leave datasets of unequal length: trust the shortest.
        self.n_steps = min(lengths)
        self.steps = datasets.read(schema.STEP, slice(0, self.n_steps)).astype(np.int64)
        backwards = np.flatnonzero(np.diff(self.steps) <= 0)
        if len(backwards):  # only files of older versions: the recorder numbers steps across segments
            i = int(backwards[0]) + 1
            self.problems.append(f"{self.path}: recorded step {int(self.steps[i])} follows step "
                                 f"{int(self.steps[i - 1])}; only the {i} rows before it are analysed")
            self.n_steps, self.steps = i, self.steps[:i]
        code = int(datasets.read(schema.STATUS, 0))
        self.status = Status(code) if code in Status._value2member_map_ else Status.RUNNING
        self.status_message = _text(datasets.read(schema.STATUS_MESSAGE, 0)).rstrip("\x00")
        self.status_signal = int(datasets.read(schema.STATUS_SIGNAL, 0)) if datasets.has(schema.STATUS_SIGNAL) else 0
        # How the rank ended, read now while the file is open: every analysis asks.
        self._attrs = {key: _plain(_attr(root, key)) for key in _PREFETCHED_ATTRS
                       if h5py.h5a.exists(root.id, key.encode())}
        beats = datasets.shape(schema.HEARTBEAT)[0]
        self._last_beat = datasets.read(schema.HEARTBEAT, beats - 1) if beats else None
        stacks = (schema.STACK_TIME, schema.STACK_STEP, schema.STACK_PHASE, schema.STACK_TEXT)
        try:
            self._n_stacks = min(datasets.shape(p)[0] for p in stacks)
        except KeyError:  # a version 1 dump (no stacks), or a damaged one: none to show
            self._n_stacks = 0
        self._replicas = self._read_replicas(datasets)  # every analysis asks, a rank at a time
        if self.n_steps <= PREFETCH_STEPS:  # small per-step series: read now, while the file is open
            for path in (schema.HAS, schema.LOSS, schema.ROLLUP, schema.SEGMENT, schema.BATCH_DIGEST, schema.TIME):
                self._series[path] = self._read_series(path, datasets)
            if datasets.has(schema.INPUT_COUNTS):  # whether a batch held NaN or Inf: every analysis asks
                self._series[schema.INPUT_COUNTS] = self._read_series(schema.INPUT_COUNTS, datasets)

    # -- small series ------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED

    @property
    def status_name(self) -> str:
        return self.status.label

    def attr(self, key: str, default=None):
        if key in _PREFETCHED_ATTRS:
            return self._attrs.get(key, default)
        return _plain(self._file.attrs.get(key, default))

    def series(self, path: str) -> np.ndarray:
        """A whole per-step series of scalars or small rows (read once, then cached)."""
        if path not in self._series:
            self._series[path] = self._read_series(path, _Datasets(self._file))
        return self._series[path]

    def _read_series(self, path: str, datasets: _Datasets) -> np.ndarray:
        """A whole per-step series, or its value in dumps older than it."""
        if path in schema.ADDED_IN_2 and not datasets.has(path):
            return np.full(self.n_steps, schema.ADDED_IN_2[path])
        return self._read(path, slice(0, self.n_steps), datasets)

    def segments(self) -> np.ndarray:
        """(N,) the training segment of each row: 0, then 1 after the first restart of
        the step counter (a second ``Model.train`` call, a loop counting from 1 again)."""
        return self.series(schema.SEGMENT)

    def loss(self) -> np.ndarray:
        return self.series(schema.LOSS)

    def has(self) -> np.ndarray:
        return self.series(schema.HAS)

    def times(self) -> np.ndarray:
        return self.series(schema.TIME)

    def batch_digests(self) -> np.ndarray:
        return self.series(schema.BATCH_DIGEST)

    def rollups(self, kind: str) -> np.ndarray:
        return self.series(schema.ROLLUP)[:, schema.KINDS.index(kind)]

    def replica_groups(self) -> list[Optional[tuple[tuple[int, ...], int]]]:
        """Per parameter, (its replica group, the group's source) as the probe recorded
        it, or None where unknown (and in dumps older than this record)."""
        replicas = self.__dict__.get("_replicas")
        if replicas is None:  # a reader from a state that did not carry them
            replicas = self._read_replicas()
        if not replicas:
            return [None] * len(self.params)
        rows = {int(i): (tuple(int(r) for r in np.flatnonzero(np.unpackbits(m))), int(s))
                for i, m, s in zip(replicas["rows"], replicas["members"], replicas["sources"])}
        return [rows.get(int(i)) for i in replicas["index"]]

    def _read_replicas(self, datasets: Optional[_Datasets] = None) -> dict[str, np.ndarray]:
        """The recorded replica groups: each parameter's row (``index``), and the rows it
        uses (``rows``, their ``members`` and ``sources``); empty in dumps without them."""
        datasets = datasets or _Datasets(self._file)
        if not datasets.has(schema.REPLICA_GROUP):
            return {}
        index = self._read(schema.REPLICA_GROUP, (), datasets)
        sources = self._read(schema.REPLICA_SOURCE, (), datasets)
        rows = np.array([i for i in np.unique(index) if 0 <= i < len(sources) and sources[i]], np.int64)
        members = (self._read(schema.REPLICA_MEMBERS, rows, datasets) if len(rows) else
                   np.zeros((0, datasets.high_level_shape(schema.REPLICA_MEMBERS)[1]), np.uint8))
        return {"index": index, "rows": rows, "members": members, "sources": sources[rows]}

    def skipped(self) -> np.ndarray:
        """(K,) for each training step whose update a loss-scale overflow skipped, the
        run step of the last update before it (empty in dumps older than this record)."""
        if schema.SKIPPED not in self._file:
            return np.zeros(0, np.int64)
        return self._read(schema.SKIPPED, ())

    def heartbeats(self) -> list[Heartbeat]:
        return [_heartbeat(row) for row in self._read(schema.HEARTBEAT, ())]

    def last_heartbeat(self) -> Optional[Heartbeat]:
        return _heartbeat(self._last_beat) if self._last_beat is not None else None

    def last_alive(self) -> Optional[float]:
        """The latest sign of life: a heartbeat or a recorded step."""
        beat = self.last_heartbeat()
        last = beat.time if beat is not None else None
        if self.n_steps:
            t = float(self.times()[-1])
            last = t if last is None else max(last, t)
        return last

    def stacks(self) -> list[Stack]:
        """Stacks of the main thread taken while the rank was not progressing, oldest first."""
        n = self._n_stacks  # none in a version 1 dump
        if not n:
            return []
        times, steps, phases, texts = (self._read(p, slice(0, n)) for p in (
            schema.STACK_TIME, schema.STACK_STEP, schema.STACK_PHASE, schema.STACK_TEXT))
        return [Stack(float(t), int(s), _phase(p), _text(x).rstrip("\x00"))
                for t, s, p, x in zip(times, steps, phases, texts)]

    # -- per-parameter blocks ----------------------------------------------------
    def digests(self, kind: str, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """(steps, P, 2) uint64 digests for step indices [start, stop)."""
        stop = self.n_steps if stop is None else min(stop, self.n_steps)
        return self._read(schema.digests_path(kind), slice(start, stop))

    def stats(self, kind: str, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """(steps, P, 7) float32 statistics; columns as :data:`schema.STAT_COLUMNS`."""
        stop = self.n_steps if stop is None else min(stop, self.n_steps)
        return self._read(schema.stats_path(kind), slice(start, stop))

    def counts(self, kind: str, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """(steps, P, 2) int64 NaN and Inf counts, exact (:data:`schema.COUNT_COLUMNS`); from
        the float32 statistics in dumps written before counts were kept as integers."""
        stop = self.n_steps if stop is None else min(stop, self.n_steps)
        if self._has(schema.counts_path(kind)):
            return self._read(schema.counts_path(kind), slice(start, stop))
        columns = [schema.STAT_COLUMNS.index(c) for c in schema.COUNT_COLUMNS]
        return np.nan_to_num(self.stats(kind, start, stop)[:, :, columns]).astype(np.int64)

    def input_counts(self) -> np.ndarray:
        """(N, 3) int64 NaN, Inf and element counts of the batch's inputs, exact
        (:data:`schema.INPUT_COUNT_COLUMNS`)."""
        if schema.INPUT_COUNTS in self._series or self._has(schema.INPUT_COUNTS):
            return self.series(schema.INPUT_COUNTS)
        columns = [schema.INPUT_COLUMNS.index(c) for c in schema.INPUT_COUNT_COLUMNS]
        return np.nan_to_num(self.input_stats()[:, columns]).astype(np.int64)

    def input_stats(self) -> np.ndarray:
        """(N, 7): the batch's inputs, columns as :data:`schema.INPUT_COLUMNS`."""
        return self.series(schema.INPUT_STATS)

    def label_stats(self) -> np.ndarray:
        """(N, 4): the batch's labels, columns as :data:`schema.LABEL_COLUMNS`."""
        return self.series(schema.LABEL_STATS)

    def label_counts(self) -> np.ndarray:
        """Labels seen per class over the run (last entry: negative or too large)."""
        return self._read(schema.LABEL_COUNTS, ())

    def act_stats(self) -> np.ndarray:
        """(N, A, 4): activation taps, columns as :data:`schema.ACT_COLUMNS`."""
        return self.series(schema.ACT_STATS)

    def online_difference(self) -> Optional[dict]:
        """What kind of difference the online check found before it stopped the job
        (step, param, rank and the fields of :class:`distcheck.difference.Difference`),
        or None."""
        if not self._has(schema.ONLINE_DIFFERENCE):
            return None
        text = _text(self._read(schema.ONLINE_DIFFERENCE, 0)).rstrip("\x00")
        try:
            record = json.loads(text) if text else None
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def full(self, kind: str, step: int, index: int) -> Optional[np.ndarray]:
        """The full tensor of parameter ``index`` at ``step``, if it was recorded."""
        group = self._file.get(schema.FULL)
        if group is None:
            return None
        steps = list(group["steps"][()])
        if step not in steps:
            return None
        j = steps.index(step)
        if not group[f"{kind}_written"][j]:
            return None
        return group[f"{kind}/{index}"][j]

    def _length(self, path: str) -> int:
        try:
            return int(self._file[path].shape[0])
        except Exception as exc:
            raise DumpError(self.path, f"damaged data in {path}: {exc}",
                            "this rank was left out of the analysis; re-run the job") from None

    def _has(self, path: str) -> bool:
        """Whether an optional dataset exists; damage found only now becomes a :class:`DumpError`."""
        try:
            return path in self._file
        except Exception as exc:
            raise DumpError(self.path, f"damaged data in {path}: {exc}",
                            "this rank was left out of the analysis; re-run the job") from None

    def _read(self, path: str, selection, datasets: Optional[_Datasets] = None):
        """Read from a dataset (of ``datasets``, those of the open file if not given);
        damage found only now becomes a :class:`DumpError`."""
        try:
            return (datasets or _Datasets(self._file)).read(path, selection)
        except Exception as exc:
            raise DumpError(self.path, f"damaged data in {path}: {exc}",
                            "this rank was left out of the analysis; re-run the job") from None

    def close(self) -> None:
        OPEN_FILES.forget(self)
        self.release()

    def __enter__(self) -> "DumpReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(path: str) -> h5py.File:
    """Open a dump that may be finished, still being written, or left by a killed rank.

    A plain open is tried first because it checks the file's size against what the
    superblock promises; a truncated file opened in SWMR mode instead retries its
    reads for a long time. A file whose writer is alive, or died without closing,
    refuses a plain open and is then opened as an SWMR reader, which is what it is.
    """
    if not os.path.exists(path):
        raise DumpError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise DumpError(path, "empty file", "the rank died before it wrote anything; see its log")
    try:
        return h5py.File(path, "r")
    except Exception as exc:  # h5py raises OSError, RuntimeError, ... for damaged files
        first = str(exc)
    if "already open" in first or "lock" in first:
        try:
            return open_swmr(path)
        except Exception as exc:
            first = f"{first}; as a live or crashed writer's file: {exc}"
    what = "truncated file" if "truncated" in first else "not a readable HDF5 file"
    raise DumpError(path, what, f"the file was cut short or damaged, or is not a distcheck dump: {first}")


def validated_state(path: str) -> dict:
    """Validate ``path`` here: what a screening child hands over (see :meth:`DumpReader.state`)."""
    with DumpReader(path, check_hangs=False) as reader:  # closed: the pool of open files keeps no copy
        return reader.state()


def _heartbeat(row: np.ndarray) -> Heartbeat:
    if len(row) < len(schema.HEARTBEAT_COLUMNS):  # version 1: (time, last recorded step)
        return Heartbeat(float(row[0]), int(row[1]), Phase.UNKNOWN, float("nan"))
    t, step, phase, since = row[:4]
    return Heartbeat(float(t), int(step), _phase(phase), float(since))


#: Attributes read at open (see :meth:`DumpReader.attr`).
_PREFETCHED_ATTRS = ("hostname", "pid", "job_id")


class _Datasets:
    """The datasets of an open file, each opened once and read through h5py's low-level API.

    Validating a file asks some sixty things of about thirty-five datasets; through h5py's
    high-level objects (a Dataset built for each question, ``path in file`` walking the
    path again) that took twice the time HDF5 itself needs. Each method answers as the
    high-level call in its docstring does, errors included: whatever is out of the
    ordinary (a dataset that does not open, a type or selection other than the plain
    ones) is left to that call.
    """

    def __init__(self, f: h5py.File) -> None:
        self._file = f
        self._ids: dict[str, h5py.h5d.DatasetID] = {}

    def open(self, path: str) -> h5py.h5d.DatasetID:
        """The dataset at ``path``, opened on first use; fails as ``h5py.h5d.open``."""
        dsid = self._ids.get(path)
        if dsid is None:
            dsid = self._ids[path] = h5py.h5d.open(self._file.id, path.encode())
        return dsid

    def shape(self, path: str) -> tuple[int, ...]:
        """The dataset's shape, as ``h5py.h5d.open(fid, path).shape``."""
        return self.open(path).shape

    def has(self, path: str) -> bool:
        """``path in file``."""
        return self._try_open(path) is not None or path in self._file

    def high_level_shape(self, path: str) -> tuple[int, ...]:
        """``file[path].shape``."""
        dsid = self._try_open(path)
        return self._file[path].shape if dsid is None else dsid.shape

    def read(self, path: str, selection):
        """``file[path][selection]``."""
        dsid = self._try_open(path)
        if dsid is None:
            return self._file[path][selection]
        value = _read_plain(dsid, selection)
        return h5py.Dataset(dsid, readonly=True)[selection] if value is None else value

    def _try_open(self, path: str) -> Optional[h5py.h5d.DatasetID]:
        """The dataset, or None where it does not open (missing, a group, damaged): then
        the high-level objects find what is there, or fail their own way."""
        try:
            return self.open(path)
        except Exception:
            return None


def _read_plain(dsid: h5py.h5d.DatasetID, selection) -> Optional[np.ndarray]:
    """``selection`` of the dataset as h5py's high-level read gives it, for what the reader
    reads: numbers, booleans or strings, all rows ``()``, a range of rows ``slice(start,
    stop)`` or one row (an int). None for anything else (a scalar or empty dataspace, a
    compound type, another selection), which the high-level read takes."""
    dtype = dsid.dtype
    if dtype.kind not in "biuf" and h5py.check_string_dtype(dtype) is None:
        return None
    space = dsid.get_space()
    shape = space.get_simple_extent_dims()
    if not shape:
        return None
    if isinstance(selection, tuple) and not selection:
        start, stop = 0, shape[0]
    elif (isinstance(selection, slice) and selection.step is None and isinstance(selection.start, int)
          and isinstance(selection.stop, int) and 0 <= selection.start <= selection.stop <= shape[0]):
        start, stop = selection.start, selection.stop
    elif isinstance(selection, int) and 0 <= selection < shape[0]:
        start, stop = selection, selection + 1
    else:
        return None
    count = (stop - start, *shape[1:])
    values = np.zeros(count, dtype)
    # With no elements selected, h5py still asks HDF5 for numbers (its fast path), not for other values.
    if values.size or isinstance(dsid.get_type(), (h5py.h5t.TypeIntegerID, h5py.h5t.TypeFloatID)):
        if count == shape:
            dsid.read(h5py.h5s.ALL, space, values, _memory_type(dtype))
        else:
            space.select_hyperslab((start,) + (0,) * (len(shape) - 1), count)
            dsid.read(h5py.h5s.create_simple(count), space, values, _memory_type(dtype))
    return values[0] if isinstance(selection, int) else values


#: The HDF5 memory types values are read into (see :func:`_memory_type`).
_MEMORY_TYPES: dict = {}


def _memory_type(dtype: np.dtype) -> h5py.h5t.TypeID:
    """The HDF5 type h5py reads ``dtype`` into, built once: building it costs more than
    reading a few hundred numbers. A string's is keyed by its encoding and length, which
    the dtype keeps in metadata that dtypes do not compare."""
    key = dtype if dtype.kind in "biuf" else h5py.check_string_dtype(dtype)
    mtype = _MEMORY_TYPES.get(key)
    if mtype is None:
        mtype = h5py.h5t.py_create(dtype)
        if key is not None:
            _MEMORY_TYPES[key] = mtype
    return mtype


#: ``default`` of :func:`_attr` for an attribute that must be there.
_REQUIRED = object()


def _attr(group: h5py.Group, name: str, default=_REQUIRED):
    """``group.attrs.get(name, default)`` (``group.attrs[name]`` without a default), read
    through h5py.h5a for the scalar numbers and strings a dump holds: half the cost."""
    try:
        attr = h5py.h5a.open(group.id, name.encode())
        if attr.shape != ():
            return group.attrs[name]  # an array, or empty: as h5py makes it
        dtype = attr.dtype
        if dtype.kind not in "biuf" and h5py.check_string_dtype(dtype) is None:
            return group.attrs[name]
        value = np.zeros((), dtype)
        attr.read(value, _memory_type(dtype))
    except KeyError:  # not there (Mapping.get, as h5py's)
        if default is _REQUIRED:
            raise
        return default
    if dtype.kind == "O":  # a variable-length string, which h5py gives as str
        return value[()].decode("utf-8", "surrogateescape")
    return value[()]


@functools.lru_cache(maxsize=4096)
def _param_shape(text: str) -> tuple:
    """A parameter's shape from its JSON text, parsed once: every rank of a run records
    the same few shapes."""
    return tuple(json.loads(text))


def _plain(value):
    """An HDF5 attribute as JSON can carry it: text, or a Python number."""
    if isinstance(value, bytes):
        return _text(value)
    return value.item() if isinstance(value, np.generic) else value


def _phase(value) -> Phase:
    code = int(value) if np.isfinite(value) else -1
    return Phase(code) if code in Phase._value2member_map_ else Phase.UNKNOWN


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
