"""How each rank ended, and which rank the others were waiting for.

Each rank's end is put together from what survives it: its dump (closed as
finished, aborted with the exception's text, terminated by a signal, or left open),
its supervisor's record (the real exit code or signal, known even after SIGKILL),
its progress file (its last completed step and phase, written at every step) and the
Python stacks its heartbeat thread kept while it made no progress.

When the job did not finish, ranks usually end in a cascade: one rank crashes or
stalls, the others wait for it inside the training step's collectives until a
timeout or the launcher stops them. The one to blame is the rank with the fewest
completed steps; among equals, one that was *outside* the training step (a rank
inside it is waiting for the others); then the one that ended clearly first.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from distcheck.analysis.run import Run
from distcheck.findings import Finding, rank_list
from distcheck.rules.registry import finding
from distcheck.store.progress_file import read_progress
from distcheck.store.reader import DumpReader, Stack
from distcheck.store.schema import FAIL_FAST_MESSAGE, Phase, Status
from distcheck.store.sidecars import ProcessEnd, read_end, read_job, signal_name

#: Gaps in time shorter than this (seconds) do not order two ranks' ends.
SILENCE_MARGIN = 5.0


@dataclass(frozen=True)
class RankEnd:
    rank: int
    status: Status
    message: str
    signal: int  # from the dump or the supervisor, 0 if none
    process: Optional[ProcessEnd]
    completed: int  # last completed step (recorded or not), -1 if none
    phase: Phase
    since: float  # when `completed` completed
    last_alive: float
    stack: Optional[Stack]

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED or (
            self.status == Status.RECORDING_STOPPED and self.process is not None and self.process.exit_code == 0)

    @property
    def in_step(self) -> bool:
        return self.phase == Phase.STEP

    @property
    def own_end(self) -> bool:
        """Ended by itself (an exception, an exit, a signal its supervisor saw), not
        stopped from outside nor killed with its supervisor by the launcher's cleanup."""
        if self.status == Status.ABORTED:
            return True
        return self.status != Status.TERMINATED and self.process is not None and bool(
            self.process.signal or self.process.exit_code)

    @property
    def stalled(self) -> bool:
        """Alive without progress: a stack kept at its last step, and no end of its own."""
        return self.stack is not None and not self.own_end

    def how(self) -> str:
        """How the rank ended, in words."""
        if self.status == Status.ABORTED:
            return f"aborted: {self.message}" if self.message else "aborted"
        if self.status == Status.TERMINATED:
            return f"terminated by {signal_name(self.signal)}" if self.signal else "terminated"
        if self.status == Status.FINISHED:
            return "finished"
        if self.process is not None:
            if self.process.signal:
                return f"killed by signal {self.process.signal} ({signal_name(self.process.signal)})"
            if self.status == Status.RECORDING_STOPPED:
                return f"recording stopped, then the process exited with code {self.process.exit_code}"
            return f"exited with code {self.process.exit_code} without closing its dump"
        if self.status == Status.RECORDING_STOPPED:
            return "recording stopped"
        return "killed without warning (its dump was never closed)"

    def where(self) -> str:
        step = f"after step {self.completed}" if self.completed >= 0 else "before step 0"
        text = f"{step}, {self.phase.label}" if self.phase != Phase.UNKNOWN else step
        frame = stack_location(self.stack.text) if self.stack is not None else None
        return f"{text}, at {frame}" if frame else text


def rank_end(reader: DumpReader) -> RankEnd:
    run_dir = os.path.dirname(os.path.abspath(reader.path))
    hostname, pid = str(reader.attr("hostname", "")), int(reader.attr("pid", 0) or 0)
    process = read_end(run_dir, hostname, pid) if hostname and pid else None
    beat = reader.last_heartbeat()
    progress = read_progress(run_dir, reader.rank)
    last_recorded = int(reader.steps[-1]) if reader.n_steps else -1
    completed, phase, since = last_recorded, Phase.UNKNOWN, float("nan")
    for source in (beat, progress):  # the progress file is written last, at every change
        if source is not None and source.step >= completed:
            completed, phase, since = source.step, source.phase, source.since
    times = [t for t in (beat.time if beat else None, progress.updated if progress else None,
                         float(reader.times()[-1]) if reader.n_steps else None) if t is not None]
    stacks = [s for s in reader.stacks() if s.step == completed]
    signum = reader.status_signal or (process.signal if process is not None and process.signal else 0)
    if since != since:  # NaN: version 1 dump
        since = max(times) if times else 0.0
    return RankEnd(reader.rank, reader.status, reader.status_message, signum, process, completed, phase, since,
                   max(times) if times else since, stacks[-1] if stacks else None)


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def stack_location(text: str) -> Optional[str]:
    """``file:line in function`` of the innermost frame of the training script's own
    code (outside the standard library, site-packages and distcheck), else the innermost."""
    frames = _FRAME.findall(text)
    if not frames:
        return None
    own = [f for f in frames if not _library(f[0])]
    path, line, func = (own or frames)[-1]
    return f"{path}:{line} in {func}"


def _library(path: str) -> bool:
    parts = path.replace("\\", "/")
    return ("/site-packages/" in parts or "/dist-packages/" in parts or "/lib/python3" in parts
            or "/distcheck/" in parts or parts.startswith("<"))


def check_ranks(run: Run, ends: dict[int, RankEnd]) -> list[Finding]:
    """Ranks missing, whose probe stopped, and the rank to blame when the job did not
    finish, from how each rank ended (``ends``, see :func:`rank_end`)."""
    findings = _missing(run)
    if not run.readers:
        return findings
    recording = [e.rank for e in ends.values() if e.status != Status.RECORDING_STOPPED]
    for end in ends.values():
        if end.status == Status.RECORDING_STOPPED:
            later = ("later steps are compared across the other ranks only" if recording else
                     "no rank recorded the steps after that")
            findings.append(finding("probe_failed", end.completed if end.completed >= 0 else None, (end.rank,), (),
                                    f"rank {end.rank}: {end.message or 'recording stopped'}. Training went on "
                                    f"without the probe ({end.how()}); {later}."))
    unfinished = [e for e in ends.values() if not e.finished and not _end_unknown(e, ends)]
    if not unfinished:
        return findings
    job = _job(run)
    if all(e.status == Status.ABORTED and e.message.startswith(FAIL_FAST_MESSAGE) for e in unfinished):
        findings.append(_stopped_by_fail_fast(unfinished))
        return findings
    stopped_by = job.get("stopped_by")
    outside = stopped_by in ("SIGTERM", "SIGINT") or (stopped_by is None and len(unfinished) == len(ends) > 1 and
                                                       all(e.status == Status.TERMINATED for e in unfinished))
    if outside:
        stop = job.get("stop_time") or max(e.last_alive for e in unfinished)
        early = [e for e in unfinished if e.status != Status.TERMINATED and e.own_end
                 and e.last_alive < stop - SILENCE_MARGIN]
        if not early:
            findings.append(_stopped_from_outside(unfinished, job))
            return findings
        unfinished = early
    findings.append(_blame(ends, unfinished, job))
    return findings


def _end_unknown(e: RankEnd, ends: dict[int, RankEnd]) -> bool:
    """A rank whose recording stopped (probe_failed says why) and whose process end no
    supervisor recorded: its training is not judged when another rank finished (the job
    ran to its end) or when no rank's end is known either (nothing to judge it by)."""
    if e.status != Status.RECORDING_STOPPED or e.process is not None:
        return False
    known = [o for o in ends.values() if o.status != Status.RECORDING_STOPPED or o.process is not None]
    return not known or any(o.finished for o in known)


def _missing(run: Run) -> list[Finding]:
    missing = [r for r in range(run.world_size) if r not in run.readers]
    if not missing:
        return []
    reasons = [f"rank {r}: {run.unreadable_ranks[r]}" for r in missing if r in run.unreadable_ranks]
    absent = [r for r in missing if r not in run.unreadable_ranks]
    parts = []
    if absent:
        parts.append(f"no dump for rank(s) {rank_list(absent)} of a world of {run.world_size}: "
                     "the rank never reached training (a crash at start-up, or a node's run directory "
                     "was not given)")
    parts.extend(reasons)
    return [finding("rank_missing", None, missing, (), "; ".join(parts) + ".")]


def _consequences(ends: list[RankEnd]) -> str:
    """How each of ``ends`` stopped; ranks that stopped alike are said once together."""
    def what(e: RankEnd) -> tuple[str, str]:
        if e.in_step:
            step = f"step {e.completed + 1}" if e.completed >= 0 else "the first step"
            return f" waited for it in {step} (in the collectives), then ", f" {e.how()}"
        return " ", f" {e.how()}, {e.where()}"

    return "; ".join(_said_of(ranks, *words) for words, ranks in _alike(ends, what))


def _alike(ends: list[RankEnd], text: Callable[[RankEnd], Any]) -> list[tuple[Any, list[int]]]:
    """``text(end)`` of each of ``ends``, with the ranks (in order) of which it is said."""
    alike: dict[Any, list[int]] = {}
    for e in sorted(ends, key=lambda e: e.rank):
        alike.setdefault(text(e), []).append(e.rank)
    return list(alike.items())


def _said_of(ranks: list[int], before: str, after: str) -> str:
    """``rank 3{before}was{after}``, or ``ranks 0..7{before}were{after}``."""
    return f"{_who(ranks)}{before}{'was' if len(ranks) == 1 else 'were'}{after}"


def _who(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {rank_list(ranks)}"


def _job(run: Run) -> dict:
    for directory in run.dirs:
        job = read_job(directory)
        if job:
            return job
    return {}


def _stopped_from_outside(ends: list[RankEnd], job: dict) -> Finding:
    by = job.get("stopped_by")
    who = f"{by} to distcheck launch" if by else f"{signal_name(ends[0].signal) if ends[0].signal else 'a signal'}"
    steps = sorted({e.completed for e in ends})
    span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]}"
    message = (f"The job was stopped from outside ({who}) after {span}; every rank closed its dump with the steps "
               f"it completed, and no rank is to blame. " + "; ".join(
                   f"{_who(ranks)}: {how}" for how, ranks in _alike(ends, lambda e: f"{e.how()}, {e.where()}")))
    return finding("job_stopped", min(steps) if steps[0] >= 0 else None, (), (), message)


def _stopped_by_fail_fast(ends: list[RankEnd]) -> Finding:
    step = min(e.completed for e in ends)
    message = (f"The online check stopped the job after step {step}, as --fail-fast asks: "
               f"{ends[0].message[len(FAIL_FAST_MESSAGE):]}. Every rank stopped together; the consistency "
               "findings name the culprit.")
    return finding("job_stopped", step if step >= 0 else None, (), (), message)


def _blame(ends: dict[int, RankEnd], unfinished: list[RankEnd], job: dict) -> Finding:
    """The rank(s) the others waited for, among ``unfinished``."""
    top = max(e.completed for e in ends.values())

    def key(e: RankEnd) -> tuple:
        return (e.completed, e.in_step, not (e.own_end or e.stalled))

    first = min(key(e) for e in unfinished)
    suspects = [e for e in unfinished if key(e) == first]
    if len(suspects) > 1:  # the one that ended clearly first, if one did
        earliest = min(suspects, key=lambda e: e.last_alive)
        if all(e is earliest or e.last_alive - earliest.last_alive > SILENCE_MARGIN for e in suspects):
            suspects = [earliest]
    culprits = sorted(suspects, key=lambda e: e.rank)
    blamed = {e.rank for e in culprits}
    others = sorted((e for e in ends.values() if e.rank not in blamed), key=lambda e: e.rank)
    stalled = all(e.stalled for e in culprits)
    code = "rank_stalled" if stalled else "rank_stopped"
    parts = []
    for e in culprits:
        if stalled:
            parts.append(f"rank {e.rank} made no progress {e.where()} for {e.last_alive - e.since:.0f} s, then was "
                         f"{e.how()}")
        else:
            parts.append(f"rank {e.rank} was {e.how()}, {e.where()}")
    if len(culprits) > 1 and len(culprits) == len(unfinished):
        parts.append("no rank stands out: they stopped at the same step, in the same phase, at about the same time")
    waiting = [e for e in others if not e.finished]
    if waiting:
        parts.append("the others stopped as a consequence: " + _consequences(waiting))
    done = [e.rank for e in others if e.finished]
    if done:
        parts.append(f"rank(s) {rank_list(done)} finished at step {top}")
    if job.get("stopped_by") == "stall_timeout":
        parts.append(f"distcheck launch stopped the job after {job.get('stall_timeout'):g} s without progress")
    detail = {"ends": {str(e.rank): {"how": e.how(), "completed": e.completed, "phase": e.phase.name.lower(),
                                     "stack": e.stack.text if e.stack else None} for e in ends.values()}}
    step = min(e.completed for e in culprits)
    return finding(code, step if step >= 0 else None, [e.rank for e in culprits], (), "; ".join(parts) + ".",
                   detail=detail)

