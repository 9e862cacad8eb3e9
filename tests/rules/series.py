"""Write one rank's dump from plain numpy series, through the real recorder, and judge it."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from distcheck.analysis.run import load_run
from distcheck.config import load_config
from distcheck.findings import Finding
from distcheck.recording import ParamInfo, ProbeOptions, Recorder
from distcheck.rules import RULES
from distcheck.rules.rankdata import RankData
from distcheck.world import SingleWorld

LAYERS = [ParamInfo("l1.weight", (16, 8), "float32", True, True),
          ParamInfo("l1.bias", (16,), "float32", True, True),
          ParamInfo("l2.weight", (4, 16), "float32", True, True)]


def healthy_params(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(step)
    base = np.random.default_rng(0)
    w1 = base.normal(0, 1 / np.sqrt(8), (16, 8)) + 1e-3 * step * rng.normal(0, 1, (16, 8)) / np.sqrt(8)
    w2 = base.normal(0, 1 / np.sqrt(16), (4, 16)) + 1e-3 * step * rng.normal(0, 1, (4, 16)) / np.sqrt(16)
    return [w1.astype(np.float32), np.full(16, 0.01 * step, np.float32), w2.astype(np.float32)]


def healthy_grads(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    return [rng.normal(0, 0.1, p.shape).astype(np.float32) for p in LAYERS]


def healthy_batch(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(2000 + step)
    return [rng.normal(0, 1, (32, 8)).astype(np.float32), rng.integers(0, 4, 32).astype(np.int32)]


def write(path: str, steps: int = 40, params: Callable = healthy_params, grads: Callable = healthy_grads,
          loss: Optional[Callable] = None, batch: Callable = healthy_batch, meta: Optional[dict] = None,
          activations: Optional[list] = None, act_stats: Optional[Callable] = None, rank: int = 0,
          size: int = 1, skipped: Callable = lambda s: False) -> None:
    """``steps`` training steps; those where ``skipped(s)`` apply no update (a loss-scale
    overflow), and the updates are numbered 1, 2, ... as the probe numbers them."""
    loss = loss or (lambda s: 2.0 * np.exp(-s / 15) + 0.1)
    rec = Recorder.open(path, SingleWorld(rank, size), LAYERS, meta or {"parallel_mode": "stand_alone"},
                        ProbeOptions(flush_seconds=60), activations=activations or ())
    rec.step_done(0, update=False)
    rec.record(0, params(0))
    update = 0
    for t in range(1, steps + 1):
        if skipped(t):
            rec.still_alive()
            rec.skipped()
            continue
        update += 1
        s = rec.step_done(update)
        acts = [act_stats(s, i) for i in range(len(activations))] if activations else None
        rec.record(s, params(s), grads(s), loss=loss(s), batch=batch(s), activations=acts)
    rec.close()


def judge(path: str, code: str, **settings) -> list:
    run = load_run([path])
    try:
        rule = RULES[code]
        base = load_config()["rules"].get(code) or {}
        return rule.check(RankData(run.readers[0]), {**base, **settings})
    finally:
        run.close()


def all_findings(path: str) -> list[Finding]:
    from distcheck.rules import health_checks

    run = load_run([path])
    try:
        return [f for f in health_checks(run, load_config()) if isinstance(f, Finding)]
    finally:
        run.close()


def all_codes(path: str) -> list[str]:
    return sorted(f.code for f in all_findings(path))
