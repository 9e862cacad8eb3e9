"""Where a rank is: its last completed step, its phase, and how steps are numbered.

The probe updates a :class:`Progress` from the training thread (plain attribute
writes, no lock); the heartbeat thread reads it and writes it into the dump.

Steps are numbered as *run steps*, strictly increasing over the whole process.
Within the first segment a run step is the training loop's own step. When the loop's
counter goes back (a second ``Model.train`` call, whose ``cur_step_num`` restarts at
1, or a custom loop that counts from 1 again each epoch), a new segment begins and
its steps continue from the last one: run step = the previous segment's last run step
+ the number of updates in this segment so far.
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


class StepNumbering:
    """Maps the training loop's step labels to run steps, segment by segment."""

    def __init__(self) -> None:
        self.segment = 0
        self._offset = 0
        self._last_label: Optional[int] = None
        self._updates_in_segment = 0
        self._new_call = False
        self.last_run_step = -1

    def begin_segment(self) -> None:
        """A new training call begins, as a new segment. If its labels start again
        (MindSpore's ``cur_step_num``), its first label is the state the last call left;
        if they go on (an update count that kept counting), they keep their numbers."""
        self._new_call = True

    def run_step(self, label: int, update: bool = True) -> int:
        """The run step of ``label``; call once per completed update (``update=True``)
        or once for the state before the first update of a call (``update=False``)."""
        label = int(label)
        if self._new_call and self._last_label is not None:  # every training call is a segment
            self.segment += 1
            self._updates_in_segment = 0
            if label <= self._last_label:  # counting from the start: it begins where the last ended
                self._offset = self.last_run_step - label
        elif self._last_label is not None and label <= self._last_label:
            if self._updates_in_segment:  # the counter went back: a new segment
                self.segment += 1
                self._updates_in_segment = 0
            # else: a loop counting its first update as 0, like the state before it
            self._offset = self.last_run_step + 1 - label
        self._new_call = False
        self._last_label = label
        if update:
            self._updates_in_segment += 1
        self.last_run_step = max(self.last_run_step, self._offset + label)
        return self._offset + label
