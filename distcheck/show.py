"""``distcheck show``: what a run holds, and one series of it as CSV.

Without ``--series`` it lists the ranks (how each ended, the steps recorded), the
training calls, the parameters (shape, dtype, trainable, replica group and its source)
and which kinds were recorded. With ``--series`` it writes one series for every rank as
CSV, one row per recorded step, one column per rank, for pandas or a spreadsheet:

- ``loss``: each rank's loss;
- ``grad_norm``: the global gradient norm (over every recorded gradient);
- ``param:NAME`` / ``grad:NAME``: one statistic (``--stat``, default ``l2``) of one
  parameter or of its gradient.
"""
from __future__ import annotations

import csv
import io
import sys
from collections import Counter
from typing import Optional

import numpy as np

from distcheck.analysis.run import Run, load_run
from distcheck.exits import ExitCode, UsageError
from distcheck.findings import name_list
from distcheck.replicas import Source
from distcheck.store import schema
from distcheck.steps import rows_for


def show(run_dirs: list[str], series: Optional[str] = None, stat: str = "l2", output: Optional[str] = None) -> int:
    run = load_run(run_dirs)
    try:
        for err in run.errors:
            print(f"distcheck: input error: {err.message}", file=sys.stderr)
        if not run.readers:
            raise UsageError(f"no readable rank in {', '.join(run_dirs)}")
        text = _csv(run, series, stat) if series else _listing(run)
    finally:
        run.close()
    if output:
        try:
            with open(output, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc}") from None
    else:
        sys.stdout.write(text)
    return ExitCode.INPUT if run.errors else ExitCode.OK


def _listing(run: Run) -> str:
    out = [f"{', '.join(run.dirs)}: {len(run.readers)} of {run.world_size} rank(s), "
           f"parallel mode {run.meta('parallel_mode') or 'unknown'}, framework "
           f"{run.meta('framework') or 'unknown'} {run.meta('framework_version') or ''}".rstrip(), "", "ranks:"]
    for rank, reader in sorted(run.readers.items()):
        span = f"steps {int(reader.steps[0])}..{int(reader.steps[-1])}" if reader.n_steps else "no steps"
        calls = len(np.unique(reader.segments())) if reader.n_steps else 0
        out.append(f"  {rank:>5}  {reader.status_name:<17} {reader.n_steps:>7} recorded, {span}, "
                   f"{calls} training call(s), {reader.attr('hostname') or '?'}  {reader.path}")
    # the lowest rank that recorded a step knows its replica groups; a probe that failed at set-up does not
    first = next((run.readers[r] for r in run.ranks if run.readers[r].n_steps), run.readers[run.ranks[0]])
    kinds = Counter()
    for reader in run.readers.values():
        has = reader.has()
        for bit, name in ((schema.HAS_PARAMS, "parameters"), (schema.HAS_GRADS, "gradients"),
                          (schema.HAS_LOSS, "loss"), (schema.HAS_BATCH, "batch"), (schema.HAS_ACTS, "activations")):
            kinds[name] += int(np.count_nonzero(has & bit))
    out += ["", "recorded: " + ", ".join(f"{name} ({n} rank-steps)" for name, n in kinds.items() if n)]
    groups = first.replica_groups()
    out += ["", f"parameters of rank {first.rank} ({len(first.params)}):"]
    for p, rec in zip(first.params, groups):
        group = "replica group unknown" if rec is None else \
            f"replica group {_ranks(rec[0])} ({Source(rec[1]).label})"
        out.append(f"  {p.name}  {list(p.shape)} {p.dtype}{'' if p.trainable else ' frozen/buffer'}"
                   f"{'' if p.has_grad else ' no-grad'}  {group}")
    if first.activations:
        out += ["", "activation taps: " + name_list([f"{n} ({k})" for n, k in first.activations], 12)]
    return "\n".join(out) + "\n"


def _ranks(group: tuple[int, ...]) -> str:
    if len(group) > 2 and list(group) == list(range(group[0], group[-1] + 1)):
        return f"[{group[0]}..{group[-1]}]"
    return "[" + ", ".join(map(str, group)) + "]"


def _csv(run: Run, series: str, stat: str) -> str:
    if stat not in schema.STAT_COLUMNS:
        raise UsageError(f"--stat must be one of {', '.join(schema.STAT_COLUMNS)}, got {stat!r}")
    columns = {rank: _one(run.readers[rank], series, stat) for rank in run.ranks}
    steps = np.unique(np.concatenate([s for s, _ in columns.values()])) if columns else np.zeros(0, np.int64)
    table = np.full((len(steps), len(columns)), np.nan)
    for k, (s, v) in enumerate(columns.values()):
        table[rows_for(steps, s), k] = v
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["step", *(f"rank_{r}" for r in columns)])
    for step, row in zip(steps, table):
        writer.writerow([int(step), *("" if np.isnan(v) else f"{v:.9g}" for v in row)])
    return buffer.getvalue()


def _one(reader, series: str, stat: str) -> tuple[np.ndarray, np.ndarray]:
    has = reader.has()
    if series == "loss":
        ok = (has & schema.HAS_LOSS) != 0
        return reader.steps[ok], reader.loss()[ok]
    l2 = schema.STAT_COLUMNS.index("l2")
    if series == "grad_norm":
        ok = np.flatnonzero((has & schema.HAS_GRADS) != 0)
        norms = [float(np.sqrt(np.nansum(np.square(reader.stats("grad", i, i + 1)[0, :, l2].astype(np.float64)))))
                 for i in ok]
        return reader.steps[ok], np.array(norms)
    kind, _, name = series.partition(":")
    if kind not in schema.KINDS or not name:
        raise UsageError(f"--series must be loss, grad_norm, param:NAME or grad:NAME, got {series!r}")
    names = [p.name for p in reader.params]
    if name not in names:
        raise UsageError(f"rank {reader.rank} has no parameter {name!r} (e.g. {name_list(names, 4)})")
    col = names.index(name)
    ok = (has & (schema.HAS_PARAMS if kind == "param" else schema.HAS_GRADS)) != 0
    values = np.concatenate([reader.stats(kind, start, start + 1024)[:, col, schema.STAT_COLUMNS.index(stat)]
                             for start in range(0, reader.n_steps, 1024)]) if reader.n_steps else np.zeros(0)
    return reader.steps[ok], values[ok].astype(np.float64)
