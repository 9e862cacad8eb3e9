"""``distcheck watch RUN_DIR``: each rank's progress while the job runs (or after it).

One row per rank file: its status, last completed step, steps per second, phase (where
its main thread is), seconds since its last sign of life, and a flag, the first that
applies to a rank whose dump is still open ("running"):

- ``silent``: no heartbeat nor progress for more than 10 s (the process is dead or frozen);
- ``stalled``: no step completed for more than ``stall_seconds`` (default 30);
- ``straggler``: behind the furthest rank by more than max(2, 10% of its step).

It reads what :func:`distcheck.store.live.look` reads (the dumps' heartbeats, written
every 2 s) plus each rank's progress file (written at every step, so fresher). It needs
numpy, h5py and rich only, never MindSpore, so it runs beside the job on any machine
that sees the run directory.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import NamedTuple, Optional, Sequence

from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from distcheck.exits import ExitCode
from distcheck.store.live import RankNow, look
from distcheck.store.progress_file import ProgressRecord, read_progress
from distcheck.store.schema import Phase, Status
from distcheck.store.sidecars import read_job

SILENT_SECONDS = 10.0
STRAGGLER_STEPS = 2
STRAGGLER_FRACTION = 0.1
RUNNING = Status.RUNNING.label
_FLAG_STYLES = {"straggler": "yellow", "stalled": "red", "silent": "bold red"}
_STATUS_STYLES = {RUNNING: "green", Status.FINISHED.label: "blue", Status.RECORDING_STOPPED.label: "yellow"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One rank as one snapshot saw it. ``None`` means unknown (or no step yet)."""

    rank: int
    world_size: int
    status: str  #: :attr:`Status.label`; "running" while the dump is open (or its process died unseen)
    step: Optional[int]  #: last completed step
    rate: Optional[float]  #: steps per second
    phase: str  #: :attr:`Phase.label`, or why the file could not be read
    age: Optional[float]  #: seconds since the last sign of life
    since: Optional[float]  #: Unix time the last step completed
    at: float  #: Unix time of the snapshot
    flag: str = ""
    problem: str = ""

    @property
    def running(self) -> bool:
        return self.status == RUNNING


class _Sign(NamedTuple):
    """A sign of life from a heartbeat or the progress file."""

    time: float
    step: int
    phase: Phase
    since: float


def snapshot(run_dir: str, previous: Optional[Sequence[Row]] = None, stall_seconds: float = 30.0,
             now: Optional[float] = None) -> list[Row]:
    """Every rank of ``run_dir`` now, by rank; ``previous`` (the last snapshot) gives rates."""
    now = time.time() if now is None else now
    before = {row.rank: row for row in previous or ()}
    rows = [_row(r, read_progress(run_dir, r.rank), before.get(r.rank), now) for r in look(run_dir)]
    furthest = max((r.step for r in rows if r.step is not None), default=None)
    return [dataclasses.replace(r, flag=_flag(r, furthest, stall_seconds, now)) for r in rows]


def _row(rank: RankNow, progress: Optional[ProgressRecord], before: Optional[Row], now: float) -> Row:
    b, p = rank.heartbeat, progress
    beat = _Sign(b.time, b.step, b.phase, b.since) if b is not None else None
    mirror = _Sign(p.updated, p.step, p.phase, p.since) if p is not None else None
    signs = [s for s in (beat, mirror) if s is not None]
    latest = max(signs, key=lambda s: s.time, default=None)
    steps = [s.step for s in signs] + ([rank.last_recorded] if rank.last_recorded is not None else [])
    step = max(steps) if steps and max(steps) >= 0 else None
    # The completion time belongs to the latest sign's step; a later recorded row makes it stale.
    since = latest.since if latest and latest.step == step and math.isfinite(latest.since) else None
    status = rank.status.label
    rate = _rate(step, since, now, before, beat, mirror) if status == RUNNING else None
    phase = f"unreadable just now: {rank.problem}" if rank.problem else \
        latest.phase.label if latest else "no heartbeat yet"
    return Row(rank.rank, rank.world_size, status, step, rate, phase,
               max(0.0, now - latest.time) if latest else None, since, now, problem=rank.problem)


def _rate(step: Optional[int], since: Optional[float], now: float, before: Optional[Row],
          beat: Optional[_Sign], mirror: Optional[_Sign]) -> Optional[float]:
    """Steps per second between the previous snapshot's last step and this one's, over
    the time between their completions. While no step completes it keeps the previous
    rate, but never more than one step over the time since the last (a stall shows it
    falling). Without a previous snapshot: the progress file's step against the heartbeat's."""
    if step is None:
        return None
    if before is None or before.step is None:
        if beat is None or mirror is None or mirror.step <= beat.step or not mirror.since > beat.since:
            return None
        return (mirror.step - beat.step) / (mirror.since - beat.since)
    done = step - before.step
    if done < 0:  # a new process replaced the rank's file
        return None
    if done and since is not None and before.since is not None and since > before.since:
        return done / (since - before.since)
    if done:
        return done / (now - before.at) if now > before.at else None
    if before.rate is None or since is None or now <= since:
        return before.rate
    return min(before.rate, 1.0 / (now - since))


def _flag(row: Row, furthest: Optional[int], stall_seconds: float, now: float) -> str:
    if not row.running:
        return ""
    if row.age is not None and row.age > SILENT_SECONDS:
        return "silent"
    if row.since is not None and now - row.since > stall_seconds:
        return "stalled"
    if furthest is None:
        return ""
    behind = furthest - (row.step if row.step is not None else -1)
    return "straggler" if behind > max(STRAGGLER_STEPS, STRAGGLER_FRACTION * furthest) else ""


def render(rows: Sequence[Row], run_dir: str) -> Table:
    """The rows as a table titled with ``run_dir``."""
    world = max((r.world_size for r in rows), default=0)
    running = sum(r.running for r in rows)
    table = Table(title=f"distcheck watch {run_dir}",
                  caption=f"{len(rows)} of {world} rank files, {running} running, "
                          f"at {time.strftime('%H:%M:%S')}")
    for name in ("rank", "status", "step", "steps/s", "phase", "last seen", "flag"):
        table.add_column(name, justify="right" if name in ("rank", "step", "steps/s", "last seen") else "left")
    for r in rows:
        table.add_row(str(r.rank), Text(r.status, style=_STATUS_STYLES.get(r.status, "red")),
                      "-" if r.step is None else str(r.step),
                      "-" if r.rate is None else f"{r.rate:.2f}",
                      Text(r.phase, style="red" if r.problem else ""),
                      "-" if r.age is None else f"{r.age:.1f} s ago",
                      Text(r.flag, style=_FLAG_STYLES.get(r.flag, "")))
    return table


def watch(run_dir: str, interval: float = 1.0, once: bool = False, stall_seconds: float = 30.0) -> int:
    """Show ``run_dir``'s ranks: once (``once``, or stdout not a terminal), else live,
    every ``interval`` seconds, until no rank is running any more or Ctrl-C.
    Returns 2 if a single look finds no rank file, else 0."""
    console = Console(highlight=False)
    if once or not console.is_terminal:
        return _once(run_dir, stall_seconds, console)
    rows: list[Row] = []
    with Live(_view(rows, run_dir), console=console, auto_refresh=False, transient=True) as live:
        try:
            while True:
                rows = snapshot(run_dir, rows, stall_seconds)
                if rows and (not any(r.running for r in rows) or _job_over(run_dir)):
                    break
                live.update(_view(rows, run_dir), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
    console.print(_view(rows, run_dir))
    return ExitCode.OK


def _job_over(run_dir: str) -> bool:
    """``distcheck launch`` wrote the job's end: ranks still "running" were killed unseen."""
    return "end_time" in read_job(run_dir)


def _once(run_dir: str, stall_seconds: float, console: Console) -> int:
    rows = snapshot(run_dir, stall_seconds=stall_seconds)
    if not rows:
        print(f"distcheck: {_nothing(run_dir)}", file=sys.stderr)
        return ExitCode.INPUT
    if not console.is_terminal:  # plain text, wide enough that no cell wraps
        console = Console(highlight=False, width=max(console.width, 160))
    console.print(render(rows, run_dir))
    return ExitCode.OK


def _view(rows: Sequence[Row], run_dir: str) -> RenderableType:
    if rows:
        return render(rows, run_dir)
    missing = "" if os.path.isdir(run_dir) else " (the directory does not exist yet)"
    return Text(f"waiting for rank files in {run_dir}{missing}")


def _nothing(run_dir: str) -> str:
    if not os.path.isdir(run_dir):
        return f"no rank files in {run_dir}: the directory does not exist"
    return f"no rank files (rank_NNNNN.h5) in {run_dir} yet"
