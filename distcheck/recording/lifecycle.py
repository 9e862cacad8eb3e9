"""How a recording ends when the process does: exit, uncaught exception, or signal.

Hooks are installed once per process, from the main thread, and serve every open
recorder:

- ``atexit`` closes the dump: finished if the last training call ended cleanly and
  no exception escaped (even after a signal the script handled itself), else
  terminated if a signal came, else aborted with the uncaught exception's text.
- ``sys.excepthook`` keeps that text (the hook it replaced still runs).
- SIGTERM and SIGINT get a Python handler that does nothing but note the signal and
  wake a small thread; it takes no lock and does no I/O that could block. The same
  wake-up also comes from C through ``signal.set_wakeup_fd``, so it arrives at once
  even while the main thread is stuck in a collective, where a Python handler would
  not run. The thread then flushes every dump. If distcheck's handler is still the
  installed one and the handler before it was the default (die at once), it closes
  the dumps as terminated and ends the process with that same signal. Otherwise the
  script's own handler decides (one installed before distcheck's is called by it, one
  installed later replaces it), and the dump is closed at exit.

A forked child (``os.fork``, ``multiprocessing`` with fork) inherits all of this.
Right after the fork the child puts back the handlers that were there before
distcheck's, drops the wake-up channel, the atexit hook and the excepthook, and
forgets the open recorders without touching their files (see
:meth:`Recorder.after_fork`). Every action also checks that it runs in the process
that installed it, and on Linux the watcher ignores wake-ups written by any other
process, for a child forked from C, where no at-fork hook runs.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any, Optional, Protocol

SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: ``struct ucred``: pid, uid, gid.
_CREDENTIALS = struct.Struct("iII")


class Closable(Protocol):
    def on_signal(self, signum: int, fatal: bool) -> None: ...

    def at_exit(self, signum: Optional[int], exception: Optional[str]) -> None: ...

    def after_fork(self) -> None: ...


class _WakeChannel:
    """Where a signal wakes the watcher thread: the signal number is written into it
    from C (``set_wakeup_fd``) or by the Python handler, and read with a blocking read
    (any descriptor number works, unlike ``select``).

    On Linux it is a datagram socket pair whose reading end learns each writer's pid
    (``SO_PASSCRED``), so a wake-up written by a forked child that inherited the
    writing end is ignored. Elsewhere it is a pipe."""

    def __init__(self) -> None:
        self._reader: Optional[socket.socket] = None
        self._writer: Optional[socket.socket] = None
        self._pipe: tuple[int, int] = (-1, -1)
        if hasattr(socket, "SO_PASSCRED") and hasattr(socket, "SCM_CREDENTIALS"):
            try:
                self._reader, self._writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._reader.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                self._writer.setblocking(False)
                self.write_fd = self._writer.fileno()
                return
            except OSError:
                self.close()
                self._reader = self._writer = None
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self.write_fd = w

    def receive(self, owner: int) -> bytes:
        """Wait for wake-ups; return the signal numbers that process ``owner`` wrote."""
        if self._reader is None:
            return os.read(self._pipe[0], 64)
        data, ancillary, _, _ = self._reader.recvmsg(64, socket.CMSG_SPACE(_CREDENTIALS.size))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                return data if _CREDENTIALS.unpack_from(payload)[0] == owner else b""
        return data

    def close(self) -> None:
        for sock in (self._reader, self._writer):
            if sock is not None:
                sock.close()
        for fd in self._pipe:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._pipe = (-1, -1)


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.pid = -1  # the process that installed the hooks
        self.recorders: list[Closable] = []
        self.previous: dict[int, Any] = {}  # signal -> the handler before distcheck's
        self.passed_on: set[int] = set()  # signals a script's handler passed on to distcheck's
        self.signal: Optional[int] = None
        self.exception: Optional[str] = None
        self.channel: Optional[_WakeChannel] = None
        self.wakeup_fd_ours = False
        self.excepthook: Any = None  # distcheck's, and the one it replaced
        self.previous_excepthook: Any = None
        self.watcher: Optional[threading.Thread] = None

    @property
    def here(self) -> bool:
        """Whether this is the process that installed the hooks (not a forked child)."""
        return self.installed and os.getpid() == self.pid


_state = _State()


def close_with_process(recorder: Closable) -> None:
    """End ``recorder`` with the process. Installs the hooks on first use."""
    _install()
    if recorder not in _state.recorders:
        _state.recorders.append(recorder)


def forget(recorder: Closable) -> None:
    """Stop ending ``recorder`` with the process (it was closed)."""
    if recorder in _state.recorders:
        _state.recorders.remove(recorder)


def _install() -> None:
    state = _state
    if state.installed:
        return
    state.installed, state.pid = True, os.getpid()
    atexit.register(_at_exit)
    previous_hook = sys.excepthook

    def excepthook(exc_type, exc, tb):
        if state.here:
            state.exception = _describe(exc_type, exc, tb)
        previous_hook(exc_type, exc, tb)

    state.excepthook, state.previous_excepthook = excepthook, previous_hook
    sys.excepthook = excepthook
    if threading.current_thread() is not threading.main_thread():
        return  # signals can only be handled from the main thread; atexit still closes the dumps
    state.channel = _WakeChannel()
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None):
            continue  # ignored on purpose, or set from C: leave it alone
        state.previous[signum] = previous
        signal.signal(signum, _handler)
    try:
        old = signal.set_wakeup_fd(state.channel.write_fd, warn_on_full_buffer=False)
        state.wakeup_fd_ours = old == -1
        if old != -1:
            signal.set_wakeup_fd(old)  # someone else's (asyncio, ...): keep it; our handler still wakes us
    except (ValueError, OSError):
        pass
    state.watcher = threading.Thread(target=_watch_signals, args=(state,), name="distcheck-signals", daemon=True)
    state.watcher.start()


def _handler(signum: int, frame) -> Any:
    """Runs in the main thread between two bytecodes: note, wake, and pass on."""
    state = _state
    here = state.here
    if here:
        state.signal = signum
        if signal.getsignal(signum) is not _handler:
            state.passed_on.add(signum)  # a script's handler called this one: its default is wanted
        if state.channel is not None and (not state.wakeup_fd_ours or signum in state.passed_on):
            try:
                os.write(state.channel.write_fd, bytes([signum]))
            except OSError:
                pass
    previous = state.previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        return previous(signum, frame)
    if not here or state.watcher is None or not state.watcher.is_alive():
        _die(signum)
    return None  # the watcher thread closes the dumps (it may be doing so now), then ends the process


def _watch_signals(state: _State) -> None:
    channel = state.channel
    while True:
        try:
            data = channel.receive(state.pid)
        except InterruptedError:
            continue
        except (OSError, ValueError):
            return
        for signum in data:
            if signum not in state.previous:
                continue
            state.signal = signum
            ours = signal.getsignal(signum) is _handler or signum in state.passed_on
            fatal = ours and not callable(state.previous[signum])
            for recorder in list(state.recorders):
                try:
                    recorder.on_signal(signum, fatal)
                except Exception:  # a dump that cannot be saved must not keep the process alive
                    pass
            if fatal:
                _die(signum)


def _die(signum: int) -> None:
    """End the process with ``signum``'s default action, from any thread."""
    try:
        libc = ctypes.CDLL(None)
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal.restype = ctypes.c_void_p
        libc.signal(signum, None)  # SIG_DFL; Python's own signal.signal works only in the main thread
        os.kill(os.getpid(), signum)
        time.sleep(5)
    finally:
        os._exit(128 + signum)


def _at_exit() -> None:
    state = _state
    if not state.here:
        return
    for recorder in list(state.recorders):
        try:
            recorder.at_exit(state.signal, state.exception)
        except Exception:
            pass


def _after_fork_in_child() -> None:
    """In a forked child: disarm everything distcheck installed in the parent, put back
    what was there before, and start afresh (the child may record on its own)."""
    global _state
    state, _state = _state, _State()
    if not state.installed:
        return
    for recorder in state.recorders:
        try:
            recorder.after_fork()
        except Exception:
            pass
    atexit.unregister(_at_exit)
    if sys.excepthook is state.excepthook:
        sys.excepthook = state.previous_excepthook
    try:
        for signum, previous in state.previous.items():
            if signal.getsignal(signum) is _handler:
                signal.signal(signum, previous)
        if state.wakeup_fd_ours:
            old = signal.set_wakeup_fd(-1)
            if old not in (-1, state.channel.write_fd):
                signal.set_wakeup_fd(old)  # set by the script since: keep it
    except (ValueError, OSError):  # not the main thread: the pid checks still disarm them
        pass
    if state.channel is not None:
        state.channel.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _describe(exc_type, exc, tb) -> str:
    text = "".join(traceback.format_exception_only(exc_type, exc)).strip()
    frames = traceback.extract_tb(tb) if tb is not None else []
    if frames:
        last = frames[-1]
        text += f" (at {last.filename}:{last.lineno} in {last.name})"
    return text


def main_thread_stack(limit: int = 40) -> str:
    """The main thread's Python stack, innermost frame last ("" if it has none)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return ""
    return "".join(traceback.format_stack(frame, limit=limit))

