"""The framework-free half of a probe: one rank's recording, from open to close.

A framework adapter (``distcheck.mindspore``) hands the recorder numpy arrays in a
fixed parameter order; the recorder turns them into dump rows (``summaries``), joins
the cross-rank check (``online``), keeps the heartbeat going (``heartbeat``) and
closes the dump however the process ends (``lifecycle``).

It never takes the job down: a failure logs one line, closes the dump as
"recording stopped" and turns recording off on this rank, which still answers the
online checks with "nothing from me" so that no rank waits for it. Two exceptions
are asked for by the user: ``fail_fast`` raises :class:`ConsistencyError` on every
rank at once (decided from all-gathered data), and ``strict`` re-raises the error.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import threading
import time
from typing import Optional, Sequence

import numpy as np

from distcheck import __version__
from distcheck.recording.faults import plant
from distcheck.recording.lifecycle import close_with_process, forget
from distcheck.recording.rendezvous import all_ready, announce
from distcheck.recording.heartbeat import HeartbeatThread
from distcheck.recording.online import ConsistencyError, OnlineCheck
from distcheck.recording.options import ProbeOptions, log
from distcheck.recording.current_step import Progress
from distcheck.recording.step_numbering import StepNumbering
from distcheck.recording.summaries import step_row
from distcheck.recording.summary_threads import warm_up
from distcheck.recording.update_norms import Previous
from distcheck.replicas import REPLICATED_MODES, DeclarationError, Group, resolve
from distcheck.store import schema
from distcheck.store.schema import ParamInfo, Phase, Status
from distcheck.store.progress_file import ProgressFile, progress_path
from distcheck.store.sidecars import signal_name
from distcheck.store.writer import DumpWriter
from distcheck.world import World

__all__ = ["ConsistencyError", "ProbeError", "Recorder"]

#: Open recorders by dump path: a second training call in a process continues the
#: same dump as a new segment instead of overwriting it.
_OPEN: dict[str, "Recorder"] = {}
_OPEN_LOCK = threading.Lock()
#: In a forked child, the parent's writers: kept, never closed, so no h5py object of
#: theirs is ever freed (and closed) here.
_INHERITED: list[DumpWriter] = []


class ProbeError(RuntimeError):
    """A probe failure re-raised because the user asked for ``strict``."""


class Recorder:
    def __init__(self, writer: Optional[DumpWriter], world: Optional[World], params: list[ParamInfo],
                 options: ProbeOptions) -> None:
        self.writer, self.world, self.params, self.options = writer, world, params, options
        self.rank = world.rank if world is not None else -1
        self.enabled = writer is not None
        self.progress = Progress()
        self.numbering = StepNumbering()
        self.online = OnlineCheck(world, params, options.every, options.online_every, options.fail_fast)
        self._previous = Previous(options.update_norm_every)  # to measure each update
        self._last_written = -1
        self._clean = False  # the last training call ended cleanly
        self._failure: Optional[str] = None  # set by the heartbeat thread
        self._heartbeat: Optional[HeartbeatThread] = None
        self._pid = os.getpid()  # the process whose dump this is (not a forked child)

    @classmethod
    def open(cls, run_dir: str, world: World, params: Sequence[ParamInfo], meta: dict,
             options: Optional[ProbeOptions] = None, activations: Sequence[tuple[str, str]] = (),
             layouts: Optional[dict[str, Group]] = None) -> "Recorder":
        """This rank's recorder for ``run_dir``. The first call creates the dump; a
        later call in the same process (a second training call) continues it as a
        new segment if the parameters are the same, and records nothing otherwise.

        Each parameter's replica group comes from the options' declaration, then
        ``layouts`` (name -> group of ranks), then the parallel mode in ``meta``
        (see :mod:`distcheck.replicas`)."""
        options = options or ProbeOptions.from_env()
        params = list(params)
        path = os.path.join(run_dir, schema.file_name(world.rank))
        with _OPEN_LOCK:
            existing = _OPEN.get(os.path.abspath(path))
        if existing is not None:
            return existing._continue(params)
        writer = None
        try:
            plant("open", world.rank)
            os.makedirs(run_dir, exist_ok=True)
            writer = DumpWriter(path, params, _attrs(world, meta, options), activations=activations,
                                full_steps=options.full_steps, flush_seconds=options.flush_seconds)
        except Exception as exc:  # never take the job down
            log(f"recording disabled on rank {world.rank}: cannot write to {run_dir}: {type(exc).__name__}: {exc}")
            if options.strict:
                raise ProbeError(f"cannot write to {run_dir}: {exc}") from exc
        rec = cls(writer, world, params, options)
        rec.set_replicas(layouts, meta.get("parallel_mode"))
        if writer is not None:
            try:
                rec.progress.mirror = ProgressFile(progress_path(run_dir, world.rank))
            except OSError as exc:  # the dump alone still works
                log(f"rank {world.rank}: progress file not written: {exc}")
            with _OPEN_LOCK:
                _OPEN[os.path.abspath(path)] = rec
            rec._start()
        rec._agree_ready(run_dir, ok=True)
        return rec

    @classmethod
    def offline(cls, world: Optional[World], options: Optional[ProbeOptions] = None, run_dir: Optional[str] = None,
                why: str = "") -> "Recorder":
        """A recorder that writes nothing but still joins the online checks (if it
        has a world). With ``run_dir``, it tells the other ranks it has no probe."""
        rec = cls(None, world, [], options or ProbeOptions.from_env())
        if run_dir is not None:
            rec._agree_ready(run_dir, ok=False, why=why)
        return rec

    @classmethod
    def stopped(cls, run_dir: str, world: World, params: Sequence[ParamInfo], meta: dict, options: ProbeOptions,
                why: str) -> None:
        """Leave a dump that says why this rank records nothing (closed at once)."""
        path = os.path.join(run_dir, schema.file_name(world.rank))
        os.makedirs(run_dir, exist_ok=True)
        DumpWriter(path, list(params), _attrs(world, meta, options)).close(Status.RECORDING_STOPPED,
                                                                         f"probe error: {why}")

    def set_replicas(self, layouts: Optional[dict[str, Group]], parallel_mode: Optional[str]) -> None:
        """Decide and record each parameter's replica group (again, once a compiled
        layout is known), and tell the online check. A bad declaration is logged and
        left out (re-raised with ``strict``)."""
        if self.world is None or not self.params:
            return
        declaration = None
        try:
            declaration = self.options.declaration()
            if declaration is not None:
                declaration.check_ranks(self.world.size)
                unmatched = declaration.unmatched(p.name for p in self.params)
                if unmatched and self.rank == 0:
                    log(f"{'; '.join(unmatched)} match(es) no parameter of this network")
        except DeclarationError as exc:
            log(f"replica groups not used: {exc}")
            if self.options.strict:
                raise ProbeError(str(exc)) from exc
            declaration = None
        replicated = parallel_mode in REPLICATED_MODES
        groups, sources = resolve([p.name for p in self.params], self.world.rank, self.world.size, declaration,
                                  layouts, replicated)
        self.online.set_groups(groups)
        if self.writer is not None:
            try:
                left_out = self.writer.set_replicas(groups, [int(s) for s in sources])
                if left_out:
                    log(f"rank {self.rank}: {left_out} parameter(s) have replica groups beyond the "
                        f"{schema.MAX_GROUPS} distinct ones a dump records; they are not compared")
            except Exception as exc:
                self.disable(f"cannot record replica groups: {type(exc).__name__}: {exc}")

    def _start(self) -> None:
        close_with_process(self)
        warm_up()
        period = self.options.flush_seconds if 0 < self.options.flush_seconds < 2.0 else 2.0
        self._heartbeat = HeartbeatThread(self.writer, self.progress, period, self.options.stall_seconds,
                                          self.rank, self._heartbeat_failed)
        self._heartbeat.start()

    def _continue(self, params: list[ParamInfo]) -> "Recorder":
        if [(p.name, p.shape, p.dtype) for p in params] != [(p.name, p.shape, p.dtype) for p in self.params]:
            log(f"rank {self.rank}: this training call has other parameters than the first one recorded "
                "in this process; it is not recorded")
            return Recorder.offline(self.world, self.options)
        self.numbering.begin_segment()
        self._clean = False
        return self

    def _agree_ready(self, run_dir: str, ok: bool, why: str = "") -> None:
        """Tell the ranks of this run directory whether this probe works, and learn
        whether theirs do, before any collective (see :mod:`rendezvous`)."""
        expected = self.options.local_world
        if expected <= 1:
            return
        try:
            announce(run_dir, ok, why)
            if ok and self.online.on:
                agreed, why = all_ready(run_dir, expected)
                if not agreed:
                    self.online.off(f"not every rank's probe is working: {why}")
        except OSError as exc:
            self.online.on = False
            log(f"online check off on rank {self.rank}: cannot use {run_dir}: {exc}")

    # -- progress ------------------------------------------------------------------
    def step_done(self, label: int, update: bool = True) -> int:
        """A step completed: returns its run step (see :mod:`progress`). Call it once
        per update, and once at the start of a training call (``update=False``)."""
        run_step = self.numbering.run_step(label, update)
        self.progress.completed(run_step, Phase.PROBE)
        return run_step

    def enter(self, phase: Phase) -> None:
        self.progress.enter(phase)

    def still_alive(self) -> None:
        """A training step ended without an update (a micro-step): progress, not a new step."""
        snap = self.progress.snapshot
        self.progress.completed(snap.step, Phase.PROBE)

    def skipped(self) -> None:
        """A training step's update was skipped (a loss-scale overflow): noted in the dump,
        after the last completed update. Call it after :meth:`still_alive`."""
        if self.enabled and self.writer is not None:
            self.writer.skip(self.progress.snapshot.step)

    # -- per step ----------------------------------------------------------------
    def wants(self, step: int) -> bool:
        """Whether run step ``step`` is recorded (step 0 always, then every ``every``-th)."""
        return self.enabled and step > self._last_written and (step == 0 or step % self.options.every == 0)

    def online_due(self, step: int) -> bool:
        return self.online.due(step)

    def record(self, step: int, params: Optional[Sequence[np.ndarray]] = None,
               grads: Optional[Sequence[Optional[np.ndarray]]] = None,
               loss: Optional[float] = None, batch: Optional[Sequence[np.ndarray]] = None,
               activations: Optional[Sequence[np.ndarray]] = None) -> None:
        """Record run step ``step``, and join the online check if one is due.

        Arrays are in the order given to :meth:`open`; they may be views of live
        memory, as the recorder copies what it keeps. With ``params=None`` (a probe
        with nothing to give) it only joins the check.
        """
        if self._failure is not None and self.enabled:
            self.disable(self._failure)
        rows = None
        if params is not None and self.wants(step):
            try:
                plant("record", self.rank, step)
                rows = self._write(step, params, grads, loss, batch, activations)
            except Exception as exc:
                self.disable(f"step {step}: {type(exc).__name__}: {exc}")
                if self.options.strict:
                    raise ProbeError(f"rank {self.rank}, step {step}: {exc}") from exc
        if self.online.due(step):
            self.online.run(step, rows, on_mismatch=self._stop_on_mismatch, tensors=params)

    def _stop_on_mismatch(self, why: str, difference: Optional[dict]) -> None:
        """The online check stops the job (``fail_fast``): keep what it learnt, close."""
        if difference is not None and self.writer is not None:
            try:
                self.writer.note_difference(difference)
            except Exception as exc:  # the message still says it
                log(f"rank {self.rank}: could not keep the kind of difference: {type(exc).__name__}: {exc}")
        self.close(clean=False, message=why)

    def _write(self, step, params, grads, loss, batch, activations) -> np.ndarray:
        writer = self.writer
        full = writer.write_full if step in self.options.full_steps else None
        row = step_row(self.params, params, self._previous, grads, loss, batch, activations,
                       len(writer.activations), writer.label_counts,
                       None if full is None else (lambda kind, i, a: full(step, kind, i, a)),
                       labels=self.options.labels)
        row[schema.SEGMENT] = self.numbering.segment
        writer.append(step, row)
        self._last_written = step
        return row[schema.digests_path("param")]

    # -- end ---------------------------------------------------------------------
    def end_segment(self) -> None:
        """The training call ended cleanly; the dump stays open for a next one and is
        closed as finished when the process exits (or by :meth:`close`)."""
        self._clean = True
        self.progress.enter(Phase.FINISHED)
        if self.writer is not None:
            try:
                self.writer.flush()
            except Exception as exc:
                self.disable(f"flush failed: {type(exc).__name__}: {exc}")

    def disable(self, why: str) -> None:
        """Stop recording after a local failure; the dump is closed as "recording
        stopped". The recorder still joins online checks (saying it has nothing)."""
        self._failure = None
        if not self.enabled:
            return
        log(f"probe disabled on rank {self.rank}: {why}")
        self.enabled = False
        self._close_writer(Status.RECORDING_STOPPED, f"probe error: {why}")

    def close(self, clean: bool = True, message: str = "") -> None:
        self.enabled = False
        self._close_writer(Status.FINISHED if clean else Status.ABORTED, message)

    def on_signal(self, signum: int, fatal: bool) -> None:
        """From the lifecycle thread: flush, and close as terminated if the signal ends the process."""
        writer = self.writer
        if writer is None:
            return
        if fatal:
            self.enabled = False
            self._close_writer(Status.TERMINATED, f"terminated by {signal_name(signum)} "
                                                  f"{self._where()}", signum)
        else:
            writer.flush()

    def at_exit(self, signum: Optional[int], exception: Optional[str]) -> None:
        if self.writer is None:
            return
        if self._clean and exception is None:  # also after a signal the script's own handler dealt with
            status, message, signum = Status.FINISHED, "", None
        elif signum is not None:
            status, message = Status.TERMINATED, f"terminated by {signal_name(signum)} {self._where()}"
        elif exception is not None:
            status, message = Status.ABORTED, exception
        else:
            status, message = Status.ABORTED, f"the process exited {self._where()}, before training ended"
        self.enabled = False
        self._close_writer(status, message, signum or 0)

    def _where(self) -> str:
        snap = self.progress.snapshot
        return f"after step {snap.step}, {snap.phase.label}"

    def _heartbeat_failed(self, why: str) -> None:
        # From the heartbeat thread: the training thread disables the probe at its next step.
        self._failure = why
        log(f"rank {self.rank}: {why}; recording stops at the next step")

    def after_fork(self) -> None:
        """In a forked child: let go of this recording without writing anything. The
        parent's dump, progress file and online checks stay the parent's alone."""
        self.enabled = False
        self.online.on = False
        writer, self.writer = self.writer, None
        self._heartbeat = None  # its thread did not survive the fork (and its lock may be held)
        mirror, self.progress.mirror = self.progress.mirror, None
        if mirror is not None:
            mirror.close()  # unmaps the child's view only
        _OPEN.clear()  # no lock: the child has one thread, and the lock may have been held at the fork
        if writer is not None:
            writer.detach_in_forked_child()
            _INHERITED.append(writer)

    def _close_writer(self, status: Status, message: str, signum: int = 0) -> None:
        if os.getpid() != self._pid:  # a child forked where no at-fork hook ran (from C)
            self.after_fork()
            return
        writer, self.writer = self.writer, None
        if self._heartbeat is not None:
            self._heartbeat.stop()
        with _OPEN_LOCK:
            for key in [k for k, v in _OPEN.items() if v is self]:
                del _OPEN[key]
        if writer is not None:
            snap = self.progress.snapshot
            try:
                writer.close(status, message, signum, progress=(snap.step, snap.phase, snap.since))
            except Exception as exc:
                log(f"could not close the dump of rank {self.rank}: {type(exc).__name__}: {exc}")
        forget(self)


def _attrs(world: World, meta: dict, options: ProbeOptions) -> dict:
    return {
        "rank": world.rank,
        "world_size": world.size,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "start_time": time.time(),
        "distcheck_version": __version__,
        "job_id": options.job_id,  # "" when no launcher gave one (see ProbeOptions.job_id)
        "meta": json.dumps({**meta, "python": platform.python_version(), "numpy": np.__version__,
                            "comm": world.name, "every": options.every, "labels": options.labels}),
    }
