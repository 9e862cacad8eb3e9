"""Small synthetic runs written through the real recorder and FakeWorld ranks.

``make_run(path, bug=...)`` plays a tiny SGD job on ``size`` threads, each a rank
with its own HDF5 dump, and plants one bug. The expected findings of each bug are
kept beside it in ``EXPECTED``.
"""
from __future__ import annotations

import threading

import numpy as np

from distcheck.recording import ParamInfo, ProbeOptions, Recorder
from distcheck.world import FakeWorld

PARAMS = [
    ParamInfo("dense1.weight", (8, 4), "float32", True, True),
    ParamInfo("dense1.bias", (8,), "float32", True, True),
    ParamInfo("dense2.weight", (2, 8), "float32", True, True),
    ParamInfo("bn.moving_mean", (8,), "float32", False, False),
]

# bug -> (code, step, ranks, params) for a 3-rank run; the bug rank is the last one.
EXPECTED = {
    "none": None,
    "seed": ("init_mismatch", 0, [2], ["dense1.weight", "dense1.bias", "dense2.weight"]),
    "standalone": ("grad_divergence", 1, [0, 1, 2], ["dense1.weight", "dense1.bias", "dense2.weight"]),
    "lr": ("param_divergence", 1, [2], ["dense1.weight", "dense1.bias", "dense2.weight"]),
    "nudge": ("param_divergence", 5, [2], ["dense2.weight"]),
    "nan": ("loss_nonfinite", 4, [2], []),
    "infbatch": ("input_nonfinite", 3, [2], []),
    "bn": ("buffer_divergence", 1, [0, 1, 2], ["bn.moving_mean"]),
    "unsharded": ("data_not_sharded", 1, [0, 1, 2], []),
    "stop": ("rank_stopped", 6, [2], []),
}


def make_run(path: str, bug: str = "none", size: int = 3, steps: int = 12, every: int = 1,
             full_steps: tuple = (), parallel_mode: str = "data_parallel") -> None:
    worlds = FakeWorld.create(size)
    bug_rank = size - 1
    play(worlds, lambda world: _train(world, path, bug, bug_rank, steps, every, full_steps, parallel_mode))


def play(worlds: list[FakeWorld], rank_main) -> None:
    """Run ``rank_main(world)`` for every rank in a thread of its own; re-raise the first
    failure in the test."""
    errors: list = []

    def guarded(world: FakeWorld) -> None:
        try:
            rank_main(world)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in worlds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _train(world, path, bug, bug_rank, steps, every, full_steps, parallel_mode):
    me = world.rank
    seed = 1 if (bug == "seed" and me == bug_rank) else 0
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(p.shape).astype(np.float32) for p in PARAMS]
    params[3] = np.zeros(8, np.float32)
    options = ProbeOptions(every=every, full_steps=tuple(full_steps), flush_seconds=0.0)
    rec = Recorder.open(path, world, PARAMS, {"parallel_mode": parallel_mode}, options)
    rec.record(0, params)
    # Every rank can draw every rank's batch, so the "all-reduce" needs no communication.
    streams = [np.random.default_rng(100 + (0 if bug == "unsharded" else r)) for r in range(world.size)]
    for step in range(1, steps + 1):
        batches = [s.standard_normal((4, 4)).astype(np.float32) for s in streams]
        if bug == "infbatch" and step == 3:
            batches[bug_rank][1, 2] = np.inf
        local = [_grads(b) for b in batches]
        if bug == "standalone":
            grads = local[me]
        else:
            grads = [np.mean([g[i] for g in local], axis=0).astype(np.float32) for i in range(3)]
        lr = np.float32(0.5 if (bug == "lr" and me == bug_rank) else 0.1)
        for i in range(3):
            params[i] = params[i] - lr * grads[i]
        if bug == "nudge" and me == bug_rank and step == 5:
            params[2] = params[2] + np.float32(1e-3)
        if bug == "bitflip" and me == bug_rank and step == 5:
            # The highest exponent bit of the element nearest zero: it becomes huge, not Inf.
            params[2].reshape(-1).view(np.uint32)[np.argmin(np.abs(params[2]))] ^= np.uint32(1 << 30)
        params[3] = params[3] + (np.float32(me) if bug == "bn" else np.float32(0.1))
        loss = float(np.abs(batches[me]).mean())
        if bug == "nan" and ((me == bug_rank and step >= 4) or step >= 5):
            loss = float("nan")
        if bug == "stop" and me == bug_rank and step == 7:
            _die(rec)
            return
        rec.record(step, params, grads + [None], loss=loss, batch=[batches[me]])
    rec.close()


def _grads(batch: np.ndarray) -> list[np.ndarray]:
    return [np.float32(0.01) * (batch.sum() + i) * np.ones(p.shape, np.float32) for i, p in enumerate(PARAMS[:3])]


def _die(rec: Recorder) -> None:
    """Leave the dump as SIGKILL would after a flush: rows on disk, no end status."""
    writer, rec.writer, rec.enabled = rec.writer, None, False
    rec._heartbeat.stop()
    writer.flush()
    writer._closed = True
    writer._file.close()
