"""Tasks of an analysis that run in workers share the run loaded once (see
:mod:`distcheck.analysis.pools` for the engines): forked workers inherit it, workers
started afresh load it again without screening."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from distcheck.analysis.run import Run, load_run
from distcheck.store.open_files import close_open_files


_SHARED: Optional[Run] = None


@contextlib.contextmanager
def sharing(run: Run) -> Iterator[None]:
    """Let tasks mapped inside this block use ``run`` (see :func:`shared_run`). Open files
    are closed first, so that forked workers open their own."""
    global _SHARED
    close_open_files()
    _SHARED = run
    try:
        yield
    finally:
        _SHARED = None


def shared_run(dirs: list[str]) -> Run:
    """The run of the enclosing :func:`sharing` block: the same object in this process or
    a forked worker; loaded again from ``dirs`` in a worker started afresh."""
    global _SHARED
    if _SHARED is None:
        _SHARED = load_run(dirs, screen_files=False)
    return _SHARED
