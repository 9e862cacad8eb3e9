"""Where a rank is: its last completed run step (see :mod:`distcheck.recording.step_numbering`),
the phase its main thread is in, and since when.

The probe updates a :class:`Progress` from the training thread (plain attribute
writes, no lock); the heartbeat thread reads it and writes it into the dump.
"""
from __future__ import annotations

import time
from typing import NamedTuple, Optional

from distcheck.store.progress_file import ProgressFile
from distcheck.store.schema import Phase


class Snapshot(NamedTuple):
    step: int  # last completed run step (-1 before step 0)
    phase: Phase
    since: float  # when that step completed (Unix time)


class Progress:
    """The training thread's progress, mirrored into a :class:`ProgressFile` if given
    (a memory write per change, kept by the kernel even if the process is killed)."""

    def __init__(self, mirror: Optional[ProgressFile] = None) -> None:
        self.mirror = mirror
        self._set(Snapshot(-1, Phase.STARTING, time.time()))

    def completed(self, step: int, phase: Phase) -> None:
        self._set(Snapshot(step, phase, time.time()))

    def enter(self, phase: Phase) -> None:
        s = self.snapshot
        if s.phase != phase:
            self._set(Snapshot(s.step, phase, s.since))

    def _set(self, snap: Snapshot) -> None:
        self.snapshot = snap
        mirror = self.mirror
        if mirror is not None:
            try:
                mirror.write(*snap)
            except (ValueError, OSError):  # closed: the dump was closed first
                self.mirror = None
