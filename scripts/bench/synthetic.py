"""Synthetic runs for the benchmarks: dumps written straight through the writer, fast.

Every rank writes the same digests except ``diverge_rank``, whose parameter digests of
column 0 differ from ``diverge_step`` on; rollups are real digests of each step's rows,
so the analyzer's skipping works as on a real run.
"""
from __future__ import annotations

import json
import os

import numpy as np

from distcheck.digest import digest_rows
from distcheck.store import schema
from distcheck.store.schema import ParamInfo
from distcheck.store.writer import DumpWriter


def write_rank(path: str, rank: int, ranks: int, params: int, steps: int, flush_seconds: float = 3600.0,
               diverge_rank: int = -1, diverge_step: int = -1) -> None:
    infos = [ParamInfo(f"layer{i}.weight", (16,), "float32", True, True) for i in range(params)]
    attrs = {"rank": rank, "world_size": ranks, "meta": json.dumps({"parallel_mode": "data_parallel"})}
    writer = DumpWriter(os.path.join(path, schema.file_name(rank)), infos, attrs, flush_seconds=flush_seconds)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, (params, 2), dtype=np.uint64)
    stats = rng.standard_normal((params, len(schema.STAT_COLUMNS))).astype(np.float32)
    has = schema.HAS_PARAMS | schema.HAS_GRADS | schema.HAS_LOSS
    for step in range(steps):
        grads = base + np.uint64(step)
        digests = grads
        if rank == diverge_rank and 0 <= diverge_step <= step:
            digests = grads.copy()
            digests[0, 0] += np.uint64(1)
        rollups = [digest_rows(digests), digest_rows(grads)]
        writer.append(step, {schema.digests_path("param"): digests, schema.stats_path("param"): stats,
                             schema.digests_path("grad"): grads, schema.stats_path("grad"): stats,
                             schema.ROLLUP: rollups, schema.LOSS: 1.0 / (step + 1), schema.HAS: has})
    writer.close()


def write_run(path: str, ranks: int, steps: int, params: int, diverge_rank: int = -1, diverge_step: int = -1) -> None:
    os.makedirs(path, exist_ok=True)
    for rank in range(ranks):
        write_rank(path, rank, ranks, params, steps, diverge_rank=diverge_rank, diverge_step=diverge_step)
