"""The heartbeat thread: progress, flushes and stacks reach the dump on time.

Every ``period`` seconds it writes a heartbeat (last completed step, phase, when that
step completed) and flushes buffered rows, also while the training thread is stuck in
a collective or in the script's own code; rows are written sooner, half a second
after the last completed step, when training pauses. When no step has completed for
``stall_seconds`` it keeps the main thread's Python stack, and again after 2x, 4x,
... that long, so a long stall leaves a few stacks, not thousands.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from distcheck.recording.faults import plant
from distcheck.recording.lifecycle import main_thread_stack
from distcheck.recording.current_step import Progress
from distcheck.store.schema import Phase
from distcheck.store.writer import DumpWriter


#: Seconds between two looks at the training thread.
TICK = 0.25
#: Buffered rows are written once no step has completed for this long: a rank that
#: waits for a dead peer (and may be killed next) has its rows on disk by then.
IDLE_FLUSH = 0.5


class HeartbeatThread(threading.Thread):
    def __init__(self, writer: DumpWriter, progress: Progress, period: float, stall_seconds: float,
                 rank: int, on_failure: Callable[[str], None]) -> None:
        super().__init__(name="distcheck-heartbeat", daemon=True)
        self.writer, self.progress = writer, progress
        self.period, self.stall_seconds, self.rank = period, stall_seconds, rank
        self.on_failure = on_failure
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        since, next_stack = None, self.stall_seconds
        next_beat = time.monotonic() + self.period
        first = True
        while not self._stop_event.wait(min(TICK, self.period)):
            snap = self.progress.snapshot
            idle = time.time() - snap.since
            try:
                if time.monotonic() >= next_beat:
                    next_beat += self.period
                    if first:
                        plant("flush", self.rank)
                        first = False
                    self.writer.beat(snap.step, snap.phase, snap.since)
                elif idle >= IDLE_FLUSH and self.writer.pending:
                    self.writer.flush()
                if snap.since != since:
                    since, next_stack = snap.since, self.stall_seconds
                if snap.phase != Phase.FINISHED and idle >= next_stack:
                    self.writer.add_stack(snap.step, snap.phase, main_thread_stack())
                    next_stack *= 2
            except Exception as exc:  # a full disk, a vanished file: say so once, stop beating
                if not self.writer.closed:
                    self.on_failure(f"writing the dump failed: {type(exc).__name__}: {exc}")
                return
