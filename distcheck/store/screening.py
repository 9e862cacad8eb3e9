"""Validating dump files in a forked child, and the message format of what it hands over.

Some damage sends HDF5 itself into an endless loop (seen: a zeroed block under an
attribute heap), which no exception or signal in the validating process can stop, and
some crashes it. So files are validated in a child; the parent only reads the results.
What the child learns of a file travels as bytes in the format of :func:`encode_state`
and :func:`decode_state`: data, never code, even from a file built to attack the reader.
"""
from __future__ import annotations

import json
import os
import select
import signal
import time
from typing import Callable

import numpy as np

from distcheck.store.errors import DumpError
from distcheck.store.schema import ParamInfo, Status

#: Validates one file here and returns what was learnt of it (the state of
#: :meth:`distcheck.store.reader.DumpReader.validated`), or raises its :class:`DumpError`.
Validate = Callable[[str], dict]


#: Seconds a file may take to open and validate before it is declared unreadable.
OPEN_TIMEOUT = 15.0


class Screening:
    """Validate files in one forked child, which hands the parent what it learnt.

    A child validates the files one after the other with ``validate`` and sends each
    result (the reader's state, or its :class:`DumpError`) through a pipe; the parent
    never validates a file itself. A child silent for ``OPEN_TIMEOUT`` on one file is killed, a
    child that dies is reaped; that file is reported and a new child goes on with the
    next. So a run of a thousand ranks costs one fork and one validation per file.
    Without fork, files are validated here, one at a time, when asked for.

    Use as a context manager: the child is reaped on exit.
    """

    def __init__(self, paths: list[str], validate: Validate) -> None:
        self.paths = list(paths)
        self.validate = validate
        self.received = 0  # results received, in order
        self._results: dict[int, bytes] = {}
        self._pid, self._fd = 0, -1
        self._buffer = b""
        if hasattr(os, "fork") and self.paths:
            self._start()

    def state(self, index: int) -> dict:
        """What the child learnt of file ``index``; raises its :class:`DumpError`."""
        return decode_state(self.message(index))

    def message(self, index: int) -> bytes:
        """What the child learnt of file ``index``, encoded (see :func:`decode_state`)."""
        if not hasattr(os, "fork"):
            try:
                return encode_state(self.validate(self.paths[index]))
            except DumpError as exc:
                return encode_error(exc)
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
                    message = encode_state(self.validate(path))
                except DumpError as exc:
                    message = encode_error(exc)
                except BaseException as exc:
                    message = encode_error(DumpError(path, f"damaged dump: {exc}"))
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
            self._results[self.received] = encode_error(error)
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


# What a screening child hands over: a JSON header, then the arrays' raw bytes, which the
# header describes by plain numeric dtype and shape. Data, never code, even from a file
# built to attack the reader.
def encode_state(state: dict) -> bytes:
    """A validated reader's state (as :func:`decode_state` returns it) as bytes."""
    arrays = {"steps": state["steps"], **state["_series"]}
    if state["_last_beat"] is not None:
        arrays["last_heartbeat"] = state["_last_beat"]
    replicas = state.get("_replicas")
    arrays.update({f"replicas:{name}": a for name, a in (replicas or {}).items()})
    header = {"version": state["version"], "rank": state["rank"], "world_size": state["world_size"],
              "meta": state["meta"],
              "params": [[p.name, list(p.shape), p.dtype, p.trainable, p.has_grad] for p in state["params"]],
              "activations": [list(a) for a in state["activations"]], "n_steps": state["n_steps"],
              "problems": state["problems"], "status": int(state["status"]), "status_message": state["status_message"],
              "status_signal": state["status_signal"], "attrs": state["_attrs"], "n_stacks": state["_n_stacks"],
              "replicas": replicas is not None,
              "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]}
    text = json.dumps(header).encode()
    return b"".join([len(text).to_bytes(8, "little"), text,
                     *(np.ascontiguousarray(a).tobytes() for a in arrays.values())])


def encode_error(error: DumpError) -> bytes:
    """A file's :class:`DumpError` as bytes; :func:`decode_state` raises it again."""
    text = json.dumps({"error": [error.path, error.problem, error.hint]}).encode()
    return len(text).to_bytes(8, "little") + text


def decode_state(message: bytes) -> dict:
    """A reader's state (see :meth:`distcheck.store.reader.DumpReader.validated`);
    raises the file's :class:`DumpError` if it had one."""
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
    replicas = {name[len("replicas:"):]: arrays.pop(name) for name in list(arrays) if name.startswith("replicas:")}
    return {"version": header["version"], "rank": header["rank"], "world_size": header["world_size"],
            "meta": header["meta"], "n_steps": header["n_steps"], "steps": steps, "problems": header["problems"],
            "params": [ParamInfo(n, tuple(shape), d, t, g) for n, shape, d, t, g in header["params"]],
            "activations": [tuple(a) for a in header["activations"]], "status": Status(header["status"]),
            "status_message": header["status_message"], "status_signal": header["status_signal"],
            "_attrs": header["attrs"], "_last_beat": last_beat, "_n_stacks": header["n_stacks"], "_series": arrays,
            "_replicas": replicas if header.get("replicas") else None}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
