"""How a recording ends when the process does: exit, uncaught exception, or signal.

Hooks are installed once per process, from the main thread, and serve every open
recorder:

- ``atexit`` closes the dump: finished if the last training call ended cleanly,
  terminated if a signal came first, else aborted with the uncaught exception's text.
- ``sys.excepthook`` keeps that text (the hook it replaced still runs).
- SIGTERM and SIGINT get a Python handler that does nothing but note the signal and
  wake a small thread; it takes no lock and does no I/O that could block. The same
  wake-up also comes from C through ``signal.set_wakeup_fd``, so it arrives at once
  even while the main thread is stuck in a collective, where a Python handler would
  not run. The thread then flushes every dump. If the signal's handler was the
  default (die at once), it closes the dumps as terminated and ends the process with
  that same signal; a handler the script installed itself is called as before, and
  the dump is closed later, at exit.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any, Optional, Protocol

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Closable(Protocol):
    def on_signal(self, signum: int, fatal: bool) -> None: ...

    def at_exit(self, signum: Optional[int], exception: Optional[str]) -> None: ...


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.recorders: list[Closable] = []
        self.previous: dict[int, Any] = {}
        self.signal: Optional[int] = None
        self.exception: Optional[str] = None
        self.wake_r = self.wake_w = -1
        self.watcher: Optional[threading.Thread] = None


_state = _State()


def watch(recorder: Closable) -> None:
    """End ``recorder`` with the process. Installs the hooks on first use."""
    _install()
    if recorder not in _state.recorders:
        _state.recorders.append(recorder)


def unwatch(recorder: Closable) -> None:
    if recorder in _state.recorders:
        _state.recorders.remove(recorder)


def _install() -> None:
    if _state.installed:
        return
    _state.installed = True
    atexit.register(_at_exit)
    previous_hook = sys.excepthook

    def excepthook(exc_type, exc, tb):
        _state.exception = _describe(exc_type, exc, tb)
        previous_hook(exc_type, exc, tb)

    sys.excepthook = excepthook
    if threading.current_thread() is not threading.main_thread():
        return  # signals can only be handled from the main thread; atexit still closes the dumps
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    _state.wake_r, _state.wake_w = r, w
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None):
            continue  # ignored on purpose, or set from C: leave it alone
        _state.previous[signum] = previous
        signal.signal(signum, _handler)
    try:
        old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        if old != -1:
            signal.set_wakeup_fd(old)  # someone else's (asyncio, ...): keep it; our handler still wakes us
    except (ValueError, OSError):
        pass
    _state.watcher = threading.Thread(target=_watch_signals, name="distcheck-signals", daemon=True)
    _state.watcher.start()


def _handler(signum: int, frame) -> Any:
    """Runs in the main thread between two bytecodes: note, wake, and pass on."""
    _state.signal = signum
    try:
        os.write(_state.wake_w, bytes([signum]))
    except OSError:
        pass
    previous = _state.previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        return previous(signum, frame)
    if _state.watcher is None or not _state.watcher.is_alive():
        _die(signum)
    return None  # the watcher thread closes the dumps (it may be doing so now), then ends the process


def _watch_signals() -> None:
    while True:
        try:
            select.select([_state.wake_r], [], [])
            data = os.read(_state.wake_r, 64)
        except InterruptedError:
            continue
        except OSError:
            return
        for signum in data:
            if signum not in _state.previous:
                continue
            _state.signal = signum
            fatal = not callable(_state.previous[signum])
            for recorder in list(_state.recorders):
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
    for recorder in list(_state.recorders):
        try:
            recorder.at_exit(_state.signal, _state.exception)
        except Exception:
            pass


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

