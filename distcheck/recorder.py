"""The framework-free half of a probe: digests, statistics, the dump, the online check.

A framework adapter (``distcheck.mindspore``) hands the recorder numpy arrays in a
fixed parameter order; the recorder does everything else. It never takes the job
down: a failure logs one line and switches recording off, except for the one thing
the user asked for, ``fail_fast``, which raises :class:`ConsistencyError` on every
rank at once (the decision is made from all-gathered data, so all ranks agree).
"""
from __future__ import annotations

import atexit
import json
import os
import platform
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from distcheck import __version__
from distcheck.digest import digest, digest_rows, stats
from distcheck.store import schema
from distcheck.store.schema import ParamInfo, Status
from distcheck.store.writer import DumpWriter
from distcheck.vote import majority
from distcheck.world import World

__all__ = ["ConsistencyError", "ParamInfo", "ProbeOptions", "Recorder", "run_dir_from_env"]

ENV_RUN_DIR = "DISTCHECK_RUN_DIR"


class ConsistencyError(RuntimeError):
    """Raised on every rank by the online check when ``fail_fast`` is set."""


def log(message: str) -> None:
    print(f"distcheck: {message}", file=sys.stderr, flush=True)


def run_dir_from_env() -> Optional[str]:
    return os.environ.get(ENV_RUN_DIR) or None


def _env(name: str, default, parse):
    value = os.environ.get(name, "")
    if not value.strip():
        return default
    try:
        return parse(value)
    except ValueError:
        log(f"ignoring {name}={value!r}: not a valid value; using {default!r}")
        return default


@dataclass(frozen=True)
class ProbeOptions:
    """What to record. ``every``: record steps divisible by it (step 0 always).
    ``full_steps``: steps at which whole tensors are kept too. ``online_every``: run
    the cross-rank check every K recorded steps as well as at step 0 (0: only at 0)."""

    every: int = 1
    full_steps: tuple[int, ...] = ()
    fail_fast: bool = False
    online_every: int = 0
    flush_seconds: float = 2.0
    activations: bool = False

    @classmethod
    def from_env(cls) -> "ProbeOptions":
        """Options from ``DISTCHECK_*`` variables; a malformed value is logged and ignored."""
        env = os.environ
        steps = _env("DISTCHECK_FULL_STEPS", (), lambda v: tuple(int(s) for s in v.split(",") if s.strip()))
        return cls(
            every=max(1, _env("DISTCHECK_EVERY", 1, int)),
            full_steps=steps,
            fail_fast=env.get("DISTCHECK_FAIL_FAST", "0") == "1",
            online_every=max(0, _env("DISTCHECK_ONLINE_EVERY", 0, int)),
            flush_seconds=max(0.0, _env("DISTCHECK_FLUSH_SECONDS", 2.0, float)),
            activations=env.get("DISTCHECK_ACTIVATIONS", "0") == "1",
        )

    def to_env(self) -> dict[str, str]:
        return {
            "DISTCHECK_EVERY": str(self.every),
            "DISTCHECK_FULL_STEPS": ",".join(str(s) for s in self.full_steps),
            "DISTCHECK_FAIL_FAST": "1" if self.fail_fast else "0",
            "DISTCHECK_ONLINE_EVERY": str(self.online_every),
            "DISTCHECK_FLUSH_SECONDS": str(self.flush_seconds),
            "DISTCHECK_ACTIVATIONS": "1" if self.activations else "0",
        }


class Recorder:
    def __init__(self, writer: Optional[DumpWriter], world: World, params: list[ParamInfo],
                 options: ProbeOptions) -> None:
        self.writer, self.world, self.params, self.options = writer, world, params, options
        self.enabled = writer is not None
        self._previous: Optional[Sequence[np.ndarray]] = None  # last recorded parameters, for deltas
        self._online_ok = world.size > 1
        self._online_done: Optional[int] = None

    @classmethod
    def open(cls, run_dir: str, world: World, params: Sequence[ParamInfo], meta: dict,
             options: Optional[ProbeOptions] = None, activations: Sequence[tuple[str, str]] = ()) -> "Recorder":
        """Open this rank's dump in ``run_dir``. ``activations`` names the activation
        taps, as (name, kind) pairs, whose statistics :meth:`record` will be given."""
        options = options or ProbeOptions.from_env()
        params = list(params)
        writer = None
        try:
            os.makedirs(run_dir, exist_ok=True)
            attrs = {
                "rank": world.rank,
                "world_size": world.size,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "start_time": time.time(),
                "distcheck_version": __version__,
                "meta": json.dumps({**meta, "python": platform.python_version(),
                                    "numpy": np.__version__, "comm": world.name,
                                    "every": options.every}),
            }
            writer = DumpWriter(os.path.join(run_dir, schema.file_name(world.rank)), params, attrs,
                                activations=activations, full_steps=options.full_steps,
                                flush_seconds=options.flush_seconds)
        except Exception as exc:  # never take the job down
            log(f"recording disabled on rank {world.rank}: cannot write to {run_dir}: {exc}")
        rec = cls(writer, world, params, options)
        if writer is not None:
            _close_on_exit(rec)
        return rec

    @classmethod
    def offline(cls, world: World, options: Optional[ProbeOptions] = None) -> "Recorder":
        """A recorder that writes nothing but still joins the online checks."""
        return cls(None, world, [], options or ProbeOptions.from_env())

    # -- per step ----------------------------------------------------------------
    def wants(self, step: int) -> bool:
        """Whether ``step`` is recorded here (step 0 always, then every ``every``-th)."""
        return self.enabled and (step == 0 or step % self.options.every == 0)

    def online_due(self, step: int) -> bool:
        """Whether ``step`` has an online check. Depends on the step alone, so every
        rank, recording or not, agrees on it and joins the all-gather."""
        if not self._online_ok or step == self._online_done:
            return False
        if step == 0:
            return True
        k = self.options.online_every * self.options.every
        return k > 0 and step % k == 0

    def record(self, step: int, params: Optional[Sequence[np.ndarray]] = None,
               grads: Optional[Sequence[Optional[np.ndarray]]] = None,
               loss: Optional[float] = None, batch: Optional[Sequence[np.ndarray]] = None,
               activations: Optional[Sequence[np.ndarray]] = None) -> None:
        """Record one step, and join the online check if one is due.

        Arrays are in the order given to :meth:`open` and must not be changed
        afterwards (the previous step's parameters are kept, by reference, to measure
        each update). Call it at every step that :meth:`wants` or :meth:`online_due`;
        with ``params=None`` (a probe with nothing to give) it only joins the check.
        """
        rows = None
        if params is not None and self.wants(step):
            try:
                rows = self._write(step, params, grads, loss, batch, activations)
            except Exception as exc:
                self.disable(f"step {step}: {type(exc).__name__}: {exc}")
        if self.online_due(step):
            self._online_check(step, rows)

    def _write(self, step, params, grads, loss, batch, activations) -> np.ndarray:
        row: dict[str, object] = {}
        has = schema.HAS_PARAMS
        digests, stat_rows = self._summarise(params, step, "param")
        _update_norms(stat_rows, params, self._previous)
        self._previous = params
        row[schema.digests_path("param")], row[schema.stats_path("param")] = digests, stat_rows
        rollups = [digest_rows(digests), (0, 0)]
        if grads is not None:
            grad_digests, row[schema.stats_path("grad")] = self._summarise(grads, step, "grad")
            row[schema.digests_path("grad")] = grad_digests
            rollups[1] = digest_rows(grad_digests)
            has |= schema.HAS_GRADS
        row[schema.ROLLUP] = rollups
        if loss is not None:
            row[schema.LOSS] = float(loss)
            has |= schema.HAS_LOSS
        if batch is not None:
            row[schema.BATCH_DIGEST] = _batch_digest(batch)
            row[schema.INPUT_STATS], row[schema.LABEL_STATS] = _batch_stats(batch, self.writer.label_counts)
            has |= schema.HAS_BATCH
        if activations is not None and len(activations) == len(self.writer.activations):
            row[schema.ACT_STATS] = np.stack([np.asarray(a, np.float32).reshape(-1)[:4] for a in activations]) \
                if len(activations) else np.zeros((0, 4), np.float32)
            has |= schema.HAS_ACTS
        row[schema.HAS] = has
        self.writer.append(step, row)
        return digests

    def _summarise(self, arrays: Sequence[Optional[np.ndarray]], step: int, kind: str):
        p = len(self.params)
        if len(arrays) != p:
            raise ValueError(f"got {len(arrays)} {kind} arrays for {p} parameters")
        rows = np.zeros((p, 2), np.uint64)
        stat_rows = np.full((p, len(schema.STAT_COLUMNS)), np.nan, np.float32)
        full = step in self.options.full_steps
        for i, (info, array) in enumerate(zip(self.params, arrays)):
            if array is None:
                continue
            rows[i] = digest(array)
            stat_rows[i, :-1] = stats(array, info.dtype)
            if full:
                self.writer.write_full(step, kind, i, array)
        return rows, stat_rows

    # -- online check ------------------------------------------------------------
    def _online_check(self, step: int, rows: Optional[np.ndarray]) -> None:
        """Compare this step's parameter digests across ranks, by majority.

        Two rounds keep the common case cheap and every rank in step: first a fixed
        header (ok flag, step, parameter count, rollup digest) from each rank; only if
        the rollups differ, the per-parameter digests. A rank with nothing to give
        sends ok=0, and then all ranks switch the check off together.
        """
        self._online_done = step
        header = np.zeros(5, np.uint64)
        if rows is not None:
            header[:] = (1, step, len(self.params), *digest_rows(rows))
        gathered = self._allgather(header)
        if gathered is None:
            return
        if not (np.all(gathered[:, 0] == 1) and np.all(gathered[:, 1:3] == gathered[0, 1:3])):
            self._online_ok = False
            if self.world.rank == 0:
                log(f"online check off: not every rank recorded the same parameters at step {step}")
            return
        if np.all(gathered[:, 3:] == gathered[0, 3:]):
            return
        digests = self._allgather(rows)
        if digests is None:
            return
        bad_params, bad_ranks = [], set()
        for i, info in enumerate(self.params):
            if not info.trainable:
                continue
            culprits = majority([tuple(d) for d in digests[:, i]]).outliers
            if culprits:
                bad_params.append(info.name)
                bad_ranks.update(culprits)
        if not bad_params:
            return
        ranks = sorted(bad_ranks)
        message = (f"replicas differ at step {step} on rank(s) {ranks} in {len(bad_params)} "
                   f"parameter(s): {', '.join(bad_params[:5])}{' ...' if len(bad_params) > 5 else ''}")
        if self.world.rank == 0 or self.world.rank in ranks:
            log(message)
        if self.options.fail_fast:
            self.close(clean=False, message=f"fail-fast: {message}")
            raise ConsistencyError(message)

    def _allgather(self, array: np.ndarray) -> Optional[np.ndarray]:
        try:
            return self.world.allgather(array)
        except Exception as exc:
            self._online_ok = False
            log(f"online check off on rank {self.world.rank}: all-gather failed: {exc}")
            return None

    # -- end ---------------------------------------------------------------------
    def disable(self, why: str) -> None:
        """Stop recording after a local failure; the dump is closed as aborted. The
        recorder still joins online checks (saying it has nothing), so no rank waits."""
        log(f"recording disabled on rank {self.world.rank}: {why}")
        self.enabled = False
        self._close_writer(Status.ABORTED, f"probe error: {why}")

    def close(self, clean: bool = True, message: str = "") -> None:
        self.enabled = False
        self._close_writer(Status.FINISHED if clean else Status.ABORTED, message)

    def _close_writer(self, status: int, message: str) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close(status, message)
            except Exception as exc:
                log(f"could not close the dump of rank {self.world.rank}: {exc}")


def _batch_digest(batch: Sequence[np.ndarray]) -> tuple[int, int]:
    return digest_rows(np.array([digest(np.asarray(x)) for x in batch], dtype=np.uint64))


def _update_norms(stat_rows: np.ndarray, params: Sequence[np.ndarray],
                  previous: Optional[Sequence[np.ndarray]]) -> None:
    """Fill the last column with the L2 norm of each parameter's change since ``previous``."""
    if previous is None or len(previous) != len(params):
        return
    for i, (now, before) in enumerate(zip(params, previous)):
        if now is None or before is None or now.shape != before.shape or now.dtype.kind != "f":
            continue
        change = (now - before).ravel()
        stat_rows[i, -1] = np.sqrt(np.dot(change, change))


def _batch_stats(batch: Sequence[np.ndarray], label_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of the inputs (the first floating tensor) and the labels (the last
    integer tensor of at most 2 dimensions), and the running class histogram."""
    arrays = [np.asarray(x) for x in batch]
    inputs = next((a for a in arrays if a.dtype.kind == "f" and a.size), None)
    labels = next((a for a in reversed(arrays) if a.dtype.kind in "iu" and a.ndim <= 2 and a.size), None)
    input_row = np.full(len(schema.INPUT_COLUMNS), np.nan, np.float32)
    if inputs is not None:
        lo, hi, mean, l2, nan, inf = stats(inputs)
        n = inputs.size
        std = np.sqrt(max(l2 * l2 / n - mean * mean, 0.0)) if np.isfinite(l2) else np.nan
        input_row[:] = (lo, hi, mean, std, nan, inf, n)
    label_row = np.full(len(schema.LABEL_COLUMNS), np.nan, np.float32)
    if labels is not None:
        flat = labels.ravel().astype(np.int64)
        buckets = np.where(flat < 0, schema.MAX_CLASSES, np.minimum(flat, schema.MAX_CLASSES))
        counts = np.bincount(buckets, minlength=schema.MAX_CLASSES + 1)
        label_counts += counts[: schema.MAX_CLASSES + 1]
        label_row[:] = (flat.min(), flat.max(), flat.mean(), counts.max() / flat.size)
    return input_row, label_row


def _close_on_exit(rec: Recorder) -> None:
    """Flush and mark the dump on interpreter exit and on SIGTERM (msrun's stop signal)."""
    atexit.register(lambda: rec.close(clean=False, message="process exited before training ended"))
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:
        return
    if previous not in (signal.SIG_DFL, None):
        return  # somebody else handles SIGTERM; atexit still covers a normal exit

    def on_term(signum, frame):
        rec.close(clean=False, message="terminated by SIGTERM")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        pass
