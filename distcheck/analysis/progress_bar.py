"""A progress bar on stderr for long analyses: only on a terminal, never in CI logs."""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

#: Fewer items than this finish too fast to need a bar.
MIN_ITEMS = 64


class ProgressBar:
    """``with ProgressBar("reading rank files", n) as bar: ... bar.advance()``. Draws with
    rich when stderr is a terminal and ``CI`` is unset; otherwise does nothing."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self._progress: Optional[Any] = None
        self._task = None

    def __enter__(self) -> "ProgressBar":
        if self.total >= MIN_ITEMS and sys.stderr.isatty() and not os.environ.get("CI"):
            from rich.console import Console
            from rich.progress import Progress

            self._progress = Progress(console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
