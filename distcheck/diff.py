"""``distcheck diff RUN_A RUN_B``: where two runs part, step by step, within tolerances.

For the same model on 1 device and on 8, before and after a code change, or two ports of
one model: runs of different world sizes rarely agree bit for bit, so values are
compared against tolerances, ``|a - b| <= atol + rtol * |b|``:

- the loss (the mean over ranks at each step);
- the global gradient norm, and each parameter's gradient L2 norm;
- each parameter's L2 norm, mean and update norm.

Parameters and gradients are read from each run's lowest rank (a data-parallel replica
holds them whole). Only steps recorded in both runs are compared. The findings say at
which step the runs first part and which parameters part first; they go through the same
reports and exit codes as ``analyze``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from distcheck.analysis import Analysis
from distcheck.analysis.run import Run, load_run
from distcheck.findings import Finding, Severity, name_list
from distcheck.rules.registry import finding
from distcheck.store import schema
from distcheck.steps import rows_for, take

_L2, _MEAN, _DELTA = (schema.STAT_COLUMNS.index(c) for c in ("l2", "mean", "delta_l2"))


def diff(run_a: str, run_b: str, rtol: float = 1e-3, atol: float = 1e-6) -> Analysis:
    a, b = load_run([run_a]), load_run([run_b])
    try:
        findings: list[Finding] = []
        errors = [*a.errors, *b.errors]
        if a.readers and b.readers:
            findings = _compare(a, b, rtol, atol)
        summary = {"dirs": [run_a, run_b], "kind": "diff", "world_size": max(a.world_size, b.world_size),
                   "ranks_found": sorted(set(a.ranks) | set(b.ranks)) if a.readers and b.readers else [],
                   "parallel_mode": a.meta("parallel_mode"), "rtol": rtol, "atol": atol,
                   "ranks": {}, "runs": [_side(a), _side(b)]}
        return Analysis(summary, findings, errors, [])
    finally:
        a.close()
        b.close()


def _side(run: Run) -> dict:
    steps = [int(r.steps[-1]) for r in run.readers.values() if r.n_steps]
    return {"dir": run.dirs[0], "world_size": run.world_size, "ranks_found": run.ranks,
            "last_step": max(steps) if steps else None}


def _compare(a: Run, b: Run, rtol: float, atol: float) -> list[Finding]:
    ra, rb = a.readers[a.ranks[0]], b.readers[b.ranks[0]]
    findings = []
    table_a = {p.name: (i, p) for i, p in enumerate(ra.params)}
    table_b = {p.name: (i, p) for i, p in enumerate(rb.params)}
    same = [n for n in table_a if n in table_b and (table_a[n][1].shape, table_a[n][1].dtype) ==
            (table_b[n][1].shape, table_b[n][1].dtype)]
    odd = sorted(set(table_a) ^ set(table_b) | {n for n in table_a if n in table_b and n not in same})
    if odd:
        findings.append(finding("diff_structure", None, [], odd,
                                f"{len(odd)} parameter(s) are not held alike by both runs: {name_list(odd)}. "
                                "They were left out of the comparison."))
    steps, ia, ib = np.intersect1d(ra.steps, rb.steps, return_indices=True)
    if not len(steps):
        return findings
    close = _close(rtol, atol)
    loss_a, loss_b = _mean_loss(a, steps), _mean_loss(b, steps)
    bad = ~close(loss_a, loss_b) & np.isfinite(loss_a) & np.isfinite(loss_b)
    if bad.any():
        i = int(np.argmax(bad))
        findings.append(finding("diff_loss", int(steps[i]), [], [],
                                f"The losses part at step {int(steps[i])}: {loss_a[i]:.6g} in {a.dirs[0]}, "
                                f"{loss_b[i]:.6g} in {b.dirs[0]} (mean over ranks; rtol {rtol:g}, atol {atol:g})."))
    cols_a = np.array([table_a[n][0] for n in same], int)
    cols_b = np.array([table_b[n][0] for n in same], int)
    for kind, code, stats in (("grad", "diff_grad", (_L2,)), ("param", "diff_param", (_L2, _MEAN, _DELTA))):
        bit = schema.HAS_GRADS if kind == "grad" else schema.HAS_PARAMS
        first = _first_parting(ra, rb, kind, bit, ia, ib, cols_a, cols_b, stats, close)
        if first is None:
            continue
        k, columns, worst = first
        names = [same[c] for c in columns]
        findings.append(finding(code, int(steps[k]), [], names,
                                f"The {'gradients' if kind == 'grad' else 'parameters'} part at step {int(steps[k])} "
                                f"in {len(names)} parameter(s), first {name_list(names)}: {worst} "
                                f"(rtol {rtol:g}, atol {atol:g}). Compared: rank {ra.rank} of {a.dirs[0]} with "
                                f"rank {rb.rank} of {b.dirs[0]}."))
    return findings


def _close(rtol: float, atol: float):
    def close(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return (np.abs(x - y) <= atol + rtol * np.abs(y)) | (np.isnan(x) & np.isnan(y)) | (x == y)
    return close


def _mean_loss(run: Run, steps: np.ndarray) -> np.ndarray:
    total = np.zeros(len(steps))
    count = np.zeros(len(steps))
    for reader in run.readers.values():
        idx = rows_for(reader.steps, steps)
        loss = take(reader.loss(), idx, np.nan)
        ok = ((take(reader.has(), idx, 0) & schema.HAS_LOSS) != 0) & np.isfinite(loss)
        total[ok] += loss[ok]
        count[ok] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _first_parting(ra, rb, kind, bit, ia, ib, cols_a, cols_b, stats, close) -> Optional[tuple[int, list[int], str]]:
    """(index into the common steps, parting columns, a description) of the first parting."""
    has_a, has_b = ra.has()[ia], rb.has()[ib]
    for start in range(0, len(ia), 1024):
        sa = ra.stats(kind, int(ia[start]), int(ia[min(start + 1024, len(ia)) - 1]) + 1)
        sb = rb.stats(kind, int(ib[start]), int(ib[min(start + 1024, len(ib)) - 1]) + 1)
        ia_block = ia[start:start + 1024] - ia[start]
        ib_block = ib[start:start + 1024] - ib[start]
        for t in range(len(ia_block)):
            k = start + t
            if not (has_a[k] & bit and has_b[k] & bit):
                continue
            x = sa[ia_block[t]][cols_a][:, stats].astype(np.float64)
            y = sb[ib_block[t]][cols_b][:, stats].astype(np.float64)
            parted = ~close(x, y)
            if kind == "param":  # an update norm known on one side only was not measured on the other
                parted[:, -1] &= ~(np.isnan(x[:, -1]) | np.isnan(y[:, -1]))
            if parted.any():
                columns = [int(c) for c in np.flatnonzero(parted.any(axis=1))]
                c, s = columns[0], int(np.flatnonzero(parted[columns[0]])[0])
                what = ("L2 norm", "mean", "update norm")[s] if kind == "param" else "gradient L2 norm"
                return k, columns, f"{what} {x[c, s]:.6g} against {y[c, s]:.6g}"
    return None
