"""How steps are numbered: the training loop's step labels mapped to run steps.

Steps are numbered as *run steps*, strictly increasing over the whole process.
Within the first segment a run step is the training loop's own step. When the loop's
counter goes back (a second ``Model.train`` call, whose ``cur_step_num`` restarts at
1, or a custom loop that counts from 1 again each epoch), a new segment begins and
its steps continue from the last one: run step = the previous segment's last run step
+ the number of updates in this segment so far.
"""
from __future__ import annotations

from typing import Optional


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
