"""Reads one rank's dump, validating it, in blocks rather than whole.

Any problem with a file (truncated, empty, foreign, of a newer format) becomes a
:class:`DumpError` that names the file and says what to do; never a traceback.
Per-step series that are small (steps, loss, rollups) are read whole; per-parameter
digests and statistics are read by step range.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import json
import os
import select
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import h5py
import numpy as np

from distcheck.store import schema
from distcheck.store.schema import ParamInfo, Phase, Status


#: Runs of at most this many recorded steps have their small per-step series (a few
#: dozen bytes a step) read at open, so that passes over thousands of ranks need not
#: open each file again.
PREFETCH_STEPS = 4096

#: Larger world sizes are taken for damage.
MAX_WORLD_SIZE = 1 << 20


class DumpError(Exception):
    """A dump file that cannot be used. ``str()`` is a complete, actionable message."""

    def __init__(self, path: str, problem: str, hint: str = "") -> None:
        self.path, self.problem, self.hint = path, problem, hint
        super().__init__(f"{path}: {problem}" + (f" ({hint})" if hint else ""))

    def __reduce__(self):  # raised in an analysis worker, re-raised in the parent
        return DumpError, (self.path, self.problem, self.hint)


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
            with Screening([path]) as screening:
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
            self._release()  # opened again on demand

    @classmethod
    def validated(cls, path: str, state: dict) -> "DumpReader":
        """A reader of ``path`` from what a screening child's validation learnt."""
        reader = cls.__new__(cls)
        reader.path, reader._h5 = path, None
        reader.__dict__.update(state)
        return reader

    @property
    def _file(self) -> h5py.File:
        """The open HDF5 file, opened again if the pool of open files closed it."""
        if self._h5 is None:
            self._h5 = _open(self.path)
        _OPEN_FILES.use(self)
        return self._h5

    def _release(self) -> None:
        h5, self._h5 = self._h5, None
        if h5 is not None:
            h5.close()

    # -- validation --------------------------------------------------------------
    def _validate(self) -> None:
        f = self._file
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != schema.FORMAT:
            raise DumpError(self.path, "not a distcheck dump (no 'format' attribute of "
                            f"'{schema.FORMAT}')", "only rank_NNNNN.h5 files written by distcheck belong in a run directory")
        version = int(f.attrs.get("format_version", -1))
        if version > schema.VERSION:
            raise DumpError(self.path, f"format version {version} is newer than this distcheck reads "
                            f"({schema.VERSION})", "upgrade distcheck")
        if version < schema.OLDEST_VERSION:
            raise DumpError(self.path, f"bad format version {version}")
        self.version = version
        self.rank = int(f.attrs["rank"])
        self.world_size = int(f.attrs["world_size"])
        if not 0 <= self.rank < self.world_size <= MAX_WORLD_SIZE:
            raise DumpError(self.path, f"impossible rank {self.rank} of world size {self.world_size}")
        self.meta = json.loads(_text(f.attrs.get("meta", "{}")))
        if not isinstance(self.meta, dict):
            raise DumpError(self.path, "the 'meta' attribute is not a JSON object")
        names = [_text(x) for x in f["params/name"][()]]
        shapes = [tuple(json.loads(_text(x))) for x in f["params/shape"][()]]
        dtypes = [_text(x) for x in f["params/dtype"][()]]
        trainable = f["params/trainable"][()].astype(bool)
        has_grad = f["params/has_grad"][()].astype(bool)
        if not (len(names) == len(shapes) == len(dtypes) == len(trainable) == len(has_grad)):
            raise DumpError(self.path, "parameter tables have different lengths")
        self.params = [ParamInfo(n, s, d, bool(t), bool(g))
                       for n, s, d, t, g in zip(names, shapes, dtypes, trainable, has_grad)]
        self.activations = list(zip((_text(x) for x in f["act/name"][()]), (_text(x) for x in f["act/kind"][()])))
        layout = schema.step_layout(len(self.params), len(self.activations))
        lengths = []
        for path, (tail, _, _) in layout.items():
            if version < 2 and path in schema.ADDED_IN_2 and path not in f:
                continue
            shape = _shape(f, path)
            if tuple(shape[1:]) != tuple(tail):
                raise DumpError(self.path, f"dataset {path} has rows of shape {shape[1:]}, expected {tail}")
            lengths.append(shape[0])
        for path in (schema.LABEL_COUNTS, schema.HEARTBEAT, schema.STATUS, schema.STATUS_MESSAGE):
            if path not in f:
                raise DumpError(self.path, f"dataset {path} is missing")
        # A write cut short by a crash can leave datasets of unequal length: trust the shortest.
        self.n_steps = min(lengths)
        self.steps = f[schema.STEP][: self.n_steps].astype(np.int64)
        backwards = np.flatnonzero(np.diff(self.steps) <= 0)
        if len(backwards):  # only files of older versions: the recorder numbers steps across segments
            i = int(backwards[0]) + 1
            self.problems.append(f"{self.path}: recorded step {int(self.steps[i])} follows step "
                                 f"{int(self.steps[i - 1])}; only the {i} rows before it are analysed")
            self.n_steps, self.steps = i, self.steps[:i]
        code = int(f[schema.STATUS][0])
        self.status = Status(code) if code in Status._value2member_map_ else Status.RUNNING
        self.status_message = _text(f[schema.STATUS_MESSAGE][0]).rstrip("\x00")
        self.status_signal = int(f[schema.STATUS_SIGNAL][0]) if schema.STATUS_SIGNAL in f else 0
        # How the rank ended, read now while the file is open: every analysis asks.
        self._attrs = {key: _plain(f.attrs[key]) for key in _PREFETCHED_ATTRS if key in f.attrs}
        beats = _shape(f, schema.HEARTBEAT)[0]
        self._last_beat = f[schema.HEARTBEAT][beats - 1] if beats else None
        stacks = (schema.STACK_TIME, schema.STACK_STEP, schema.STACK_PHASE, schema.STACK_TEXT)
        try:
            self._n_stacks = min(_shape(f, p)[0] for p in stacks)
        except KeyError:  # a version 1 dump (no stacks), or a damaged one: none to show
            self._n_stacks = 0
        if self.n_steps <= PREFETCH_STEPS:  # small per-step series: read now, while the file is open
            for path in (schema.HAS, schema.LOSS, schema.ROLLUP, schema.SEGMENT, schema.BATCH_DIGEST, schema.TIME):
                self.series(path)

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
            if path in schema.ADDED_IN_2 and path not in self._file:
                self._series[path] = np.full(self.n_steps, schema.ADDED_IN_2[path])
            else:
                self._series[path] = self._read(path, slice(0, self.n_steps))
        return self._series[path]

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
        if schema.REPLICA_GROUP not in self._file:
            return [None] * len(self.params)
        index = self._read(schema.REPLICA_GROUP, ())
        members = self._read(schema.REPLICA_MEMBERS, ())
        sources = self._read(schema.REPLICA_SOURCE, ())
        rows = {int(i): (tuple(int(r) for r in np.flatnonzero(np.unpackbits(members[i]))), int(sources[i]))
                for i in np.unique(index) if 0 <= i < len(members) and sources[i]}
        return [rows.get(int(i)) for i in index]

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

    def _read(self, path: str, selection):
        """Read from a dataset; damage found only now becomes a :class:`DumpError`."""
        try:
            return self._file[path][selection]
        except Exception as exc:
            raise DumpError(self.path, f"damaged data in {path}: {exc}",
                            "this rank was left out of the analysis; re-run the job") from None

    def close(self) -> None:
        _OPEN_FILES.forget(self)
        self._release()

    def __enter__(self) -> "DumpReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _OpenFiles:
    """The readers whose files are open, at most ``limit`` at once: a run of thousands of
    ranks keeps a bounded number of HDF5 files (and their caches) open, closing the least
    recently used first. A reader opens its file again when it next needs it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._readers: "OrderedDict[int, DumpReader]" = OrderedDict()

    def use(self, reader: "DumpReader") -> None:
        key = id(reader)
        if key in self._readers:
            self._readers.move_to_end(key)
            return
        self._readers[key] = reader
        while len(self._readers) > self.limit:
            _, oldest = self._readers.popitem(last=False)
            oldest._release()

    def forget(self, reader: "DumpReader") -> None:
        self._readers.pop(id(reader), None)

    def close_all(self) -> None:
        while self._readers:
            _, reader = self._readers.popitem(last=False)
            reader._release()


_OPEN_FILES = _OpenFiles(limit=64)


def close_open_files() -> None:
    """Close every file readers hold open (they open them again when needed), e.g.
    before forking workers that must open their own."""
    _OPEN_FILES.close_all()


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
            return _open_swmr(path)
        except Exception as exc:
            first = f"{first}; as a live or crashed writer's file: {exc}"
    what = "truncated file" if "truncated" in first else "not a readable HDF5 file"
    raise DumpError(path, what, f"the file was cut short or damaged, or is not a distcheck dump: {first}")


#: Seconds a file may take to open and validate before it is declared unreadable.
OPEN_TIMEOUT = 15.0


class Screening:
    """Validate files in one forked child, which hands the parent what it learnt.

    Some damage sends HDF5 itself into an endless loop (seen: a zeroed block under an
    attribute heap), which no exception or signal in this process can stop, and some
    crashes it. A child validates the files one after the other and sends each result
    (the reader's state, or its :class:`DumpError`) through a pipe; the parent never
    validates a file itself. A child silent for ``OPEN_TIMEOUT`` on one file is killed, a
    child that dies is reaped; that file is reported and a new child goes on with the
    next. So a run of a thousand ranks costs one fork and one validation per file.
    Without fork, files are validated here.

    Use as a context manager: the child is reaped on exit.
    """

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)
        self.received = 0  # results received, in order
        self._results: dict[int, bytes] = {}
        self._pid, self._fd = 0, -1
        self._buffer = b""
        if hasattr(os, "fork") and self.paths:
            self._start()

    def reader(self, index: int) -> "DumpReader":
        """The validated reader of file ``index``; raises its :class:`DumpError`."""
        if not hasattr(os, "fork"):
            return DumpReader(self.paths[index], check_hangs=False)
        return DumpReader.validated(self.paths[index], self.state(index))

    def state(self, index: int) -> dict:
        return decode_state(self.message(index))

    def message(self, index: int) -> bytes:
        """What the child learnt of file ``index``, encoded (see :func:`decode_state`)."""
        while index not in self._results:
            self._receive()
        return self._results.pop(index)

    def _start(self) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: validate, send, exit at once without cleanup
            os.close(read_end)
            for path in self.paths[self.received:]:
                try:
                    message = _encode_state(DumpReader(path, check_hangs=False))
                except DumpError as exc:
                    message = _encode_error(exc)
                except BaseException as exc:
                    message = _encode_error(DumpError(path, f"damaged dump: {exc}"))
                _write_all(write_end, len(message).to_bytes(8, "little") + message)
            os._exit(0)
        os.close(write_end)
        self._pid, self._fd, self._buffer = pid, read_end, b""

    def _receive(self) -> None:
        """Take the next result from the child; on a hang or a crash, report that file."""
        if not self._pid:
            raise DumpError(self.paths[self.received], "not validated (the screening child is gone)")
        deadline = time.monotonic() + OPEN_TIMEOUT
        while True:
            if len(self._buffer) >= 8:
                size = int.from_bytes(self._buffer[:8], "little")
                if len(self._buffer) >= 8 + size:
                    self._results[self.received] = self._buffer[8:8 + size]
                    self._buffer = self._buffer[8 + size:]
                    self.received += 1
                    if self.received == len(self.paths):
                        self._stop(kill=False)
                    return
            ready, _, _ = select.select([self._fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._fd, 1 << 20) if ready else b""
            if chunk:
                self._buffer += chunk
                continue
            path = self.paths[self.received]
            if ready:  # end of file: the child died on this file
                error = DumpError(path, "opening the file crashed the reader",
                                  "its HDF5 structures are damaged; re-run the job, or leave this rank's file out")
            else:
                error = DumpError(path, f"opening the file did not finish in {OPEN_TIMEOUT:g} s",
                                  "its HDF5 structures are damaged; re-run the job, or leave this rank's file out")
            self._stop(kill=True)
            self._results[self.received] = _encode_error(error)
            self.received += 1
            if self.received < len(self.paths):
                self._start()
            return

    def _stop(self, kill: bool) -> None:
        if not self._pid:
            return
        if kill:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.close(self._fd)
        os.waitpid(self._pid, 0)
        self._pid, self._fd = 0, -1

    def __enter__(self) -> "Screening":
        return self

    def __exit__(self, *exc) -> None:
        self._stop(kill=True)


def screen(paths: list[str]) -> list[bytes]:
    """Validate ``paths`` in a screening child: each file's encoded state or error, for
    :func:`decode_state` in this or another process. Analysis workers each screen a
    share of a run's files with it."""
    with Screening(paths) as screening:
        return [screening.message(i) for i in range(len(paths))]


# What a screening child hands over: a JSON header, then the arrays' raw bytes, which the
# header describes by plain numeric dtype and shape. Data, never code, even from a file
# built to attack the reader.
def _encode_state(reader: "DumpReader") -> bytes:
    arrays = {"steps": reader.steps, **reader._series}
    if reader._last_beat is not None:
        arrays["last_heartbeat"] = reader._last_beat
    header = {"version": reader.version, "rank": reader.rank, "world_size": reader.world_size, "meta": reader.meta,
              "params": [[p.name, list(p.shape), p.dtype, p.trainable, p.has_grad] for p in reader.params],
              "activations": [list(a) for a in reader.activations], "n_steps": reader.n_steps,
              "problems": reader.problems, "status": int(reader.status), "status_message": reader.status_message,
              "status_signal": reader.status_signal, "attrs": reader._attrs, "n_stacks": reader._n_stacks,
              "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]}
    text = json.dumps(header).encode()
    return b"".join([len(text).to_bytes(8, "little"), text,
                     *(np.ascontiguousarray(a).tobytes() for a in arrays.values())])


def _encode_error(error: DumpError) -> bytes:
    text = json.dumps({"error": [error.path, error.problem, error.hint]}).encode()
    return len(text).to_bytes(8, "little") + text


def decode_state(message: bytes) -> dict:
    """A reader's state (see :meth:`DumpReader.validated`); raises the file's
    :class:`DumpError` if it had one."""
    size = int.from_bytes(message[:8], "little")
    header = json.loads(message[8:8 + size])
    if "error" in header:
        raise DumpError(*header["error"])
    arrays, offset = {}, 8 + size
    for name, dtype, shape in header["arrays"]:
        dtype = np.dtype(dtype)
        if dtype.kind not in "biuf":
            raise ValueError(f"unexpected dtype {dtype} in a screening result")
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(message, dtype, count, offset).reshape(shape).copy()
        offset += count * dtype.itemsize
    steps, last_beat = arrays.pop("steps"), arrays.pop("last_heartbeat", None)
    return {"version": header["version"], "rank": header["rank"], "world_size": header["world_size"],
            "meta": header["meta"], "n_steps": header["n_steps"], "steps": steps, "problems": header["problems"],
            "params": [ParamInfo(n, tuple(shape), d, t, g) for n, shape, d, t, g in header["params"]],
            "activations": [tuple(a) for a in header["activations"]], "status": Status(header["status"]),
            "status_message": header["status_message"], "status_signal": header["status_signal"],
            "_attrs": header["attrs"], "_last_beat": last_beat, "_n_stacks": header["n_stacks"], "_series": arrays}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


#: Metadata read attempts of an SWMR reader. HDF5's default (100, with back-off) makes a
#: damaged file look like a hang; a live writer's torn reads need only a few.
SWMR_READ_ATTEMPTS = 10


def _open_swmr(path: str) -> h5py.File:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    lib = _hdf5_library()
    if lib is not None:
        lib.H5Pset_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(SWMR_READ_ATTEMPTS))
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    return h5py.File(fid)


@functools.lru_cache(maxsize=1)
def _hdf5_library() -> Optional[ctypes.CDLL]:
    """The HDF5 library h5py runs on, for the one setting h5py does not expose."""
    here = os.path.dirname(h5py.__file__)
    candidates = glob.glob(os.path.join(here, "..", "h5py.libs", "libhdf5-*.so*")) + \
        glob.glob(os.path.join(here, ".dylibs", "libhdf5.*.dylib"))
    candidates = [c for c in candidates if "_hl" not in os.path.basename(c)]
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            lib.H5Pset_metadata_read_attempts.argtypes = [ctypes.c_int64, ctypes.c_uint]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _heartbeat(row: np.ndarray) -> Heartbeat:
    if len(row) < len(schema.HEARTBEAT_COLUMNS):  # version 1: (time, last recorded step)
        return Heartbeat(float(row[0]), int(row[1]), Phase.UNKNOWN, float("nan"))
    t, step, phase, since = row[:4]
    return Heartbeat(float(t), int(step), _phase(phase), float(since))


#: Attributes read at open (see :meth:`DumpReader.attr`).
_PREFETCHED_ATTRS = ("hostname", "pid")


def _shape(f: h5py.File, path: str) -> tuple[int, ...]:
    """A dataset's shape, without h5py's high-level object: validating a thousand files
    asks for tens of thousands of shapes."""
    return h5py.h5d.open(f.id, path.encode()).shape


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
