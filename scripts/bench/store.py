#!/usr/bin/env python3
"""Measure the dump writer and the analyzer's scan, side by side in one run.

Writer: the cost of one recorded step for P parameters (digests and statistics already
computed), buffered in 64-step blocks (the default) against a flush after every step.
Analyzer: the time to analyse R ranks x N steps x P parameters where every step agrees
(rollups let it skip the per-parameter data) and where one rank differs from step 1 on
(every block is read and voted on).

    python scripts/bench/store.py [--params 1000] [--steps 2000] [--ranks 8]
"""
import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from distcheck.analysis import analyze
from distcheck.config import load_config
from distcheck.store import schema
from distcheck.store.schema import ParamInfo
from distcheck.store.writer import DumpWriter


def write_rank(path: str, rank: int, ranks: int, params: int, steps: int, flush_seconds: float,
               differ_from: int = -1) -> float:
    infos = [ParamInfo(f"layer{i}.weight", (16,), "float32", True, True) for i in range(params)]
    attrs = {"rank": rank, "world_size": ranks, "meta": '{"parallel_mode": "data_parallel"}'}
    writer = DumpWriter(os.path.join(path, schema.file_name(rank)), infos, attrs, flush_seconds=flush_seconds)
    rng = np.random.default_rng(0)
    digests = rng.integers(0, 2**63, (params, 2), dtype=np.uint64)
    stats = rng.standard_normal((params, len(schema.STAT_COLUMNS))).astype(np.float32)
    start = time.perf_counter()
    for step in range(steps):
        d = digests + np.uint64(step)
        if 0 <= differ_from <= step and rank == ranks - 1:
            d = d + np.uint64(1)
        rollup = (int(d[0, 0]), int(d[-1, 1]))
        writer.append(step, {schema.digests_path("param"): d, schema.stats_path("param"): stats,
                             schema.digests_path("grad"): d, schema.stats_path("grad"): stats,
                             schema.ROLLUP: [rollup, rollup], schema.LOSS: 1.0,
                             schema.HAS: schema.HAS_PARAMS | schema.HAS_GRADS | schema.HAS_LOSS})
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--ranks", type=int, default=8)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="distcheck-bench-")
    try:
        block = write_rank(root, 0, 1, args.params, args.steps, flush_seconds=3600)
        every = write_rank(root, 0, 1, args.params, min(args.steps, 500), flush_seconds=0)
        print(f"writer, {args.params} parameters: {block * 1e6:.0f} us/step in 64-step blocks, "
              f"{every * 1e6:.0f} us/step flushing every step ({every / block:.1f}x)")
        config = load_config()
        for label, differ in (("all ranks agree", -1), ("rank diverges at step 1", 1)):
            run = os.path.join(root, label.replace(" ", "_"))
            os.makedirs(run)
            for r in range(args.ranks):
                write_rank(run, r, args.ranks, args.params, args.steps, flush_seconds=3600, differ_from=differ)
            start = time.perf_counter()
            result = analyze([run], config)
            took = time.perf_counter() - start
            codes = sorted({f.code for f in result.findings})
            print(f"analyze {args.ranks} ranks x {args.steps} steps x {args.params} params, {label}: "
                  f"{took:.2f} s {codes}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
