"""One side of a comparison: what a run shows, step by step, as whole tensors and global batches.

A data-parallel run holds every parameter whole on every rank: one rank speaks for the run
(the lowest, or the one asked for). A sharded or hybrid run holds some parameters in
pieces: their statistics are rebuilt from one rank of each piece's replica group (see
:mod:`distcheck.reference.shards`). The loss is the mean over the ranks that recorded it,
and the global batch is the union of the batches of the ranks that read different data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from distcheck.analysis.run import Run
from distcheck.reference.pieces import Pieces
from distcheck.reference.shards import combine_inputs, combine_shards
from distcheck.store import schema
from distcheck.steps import rows_for, take


class SideError(ValueError):
    """A run that cannot be compared as asked (the message says which run and why)."""


@dataclass
class Side:
    """A run as the comparison sees it; arrays are indexed by ``steps``."""

    dir: str
    world_size: int
    rank: int  # the rank that speaks for the replicated parameters
    steps: np.ndarray  # (S,) recorded by that rank
    names: list[str]
    shapes: list[tuple[int, ...]]
    sizes: list[int]  # whole-tensor element counts
    dtypes: list[str]
    params: np.ndarray  # (S, P, 7) float64, NaN where not recorded
    grads: np.ndarray  # (S, P, 7)
    loss: np.ndarray  # (S,) mean over the ranks that recorded it
    inputs: np.ndarray  # (S, 7) the global batch's input statistics
    label_mean: np.ndarray  # (S,) the global batch's mean label
    batch_digests: np.ndarray  # (S, R, 2) each data rank's batch digest, 0 where none
    data_ranks: list[int]  # the ranks whose batches make the global batch
    label_counts: Optional[np.ndarray]  # labels seen over the run, summed over data_ranks
    meta: dict = field(default_factory=dict)
    sharded: list[str] = field(default_factory=list)  # parameters rebuilt from shards
    pieces: dict[str, Pieces] = field(default_factory=dict)  # their shards, by name
    activations: list[str] = field(default_factory=list)  # activation taps, in the dump's (the model's) order
    act_stats: Optional[np.ndarray] = None  # (S, A, 4) over the global batch, NaN where not recorded

    def index(self, name: str) -> int:
        return self.names.index(name)


def load_side(run: Run, rank: Optional[int] = None, rename: Optional[dict[str, str]] = None) -> Side:
    """The comparable view of ``run``; ``rank`` picks the rank that speaks for replicated
    parameters (default: the lowest); ``rename`` maps this run's parameter names to the
    names used in the comparison."""
    if not run.readers:
        raise SideError(f"{run.dirs[0]}: no readable rank")
    if rank is None:  # the lowest rank that recorded a step (a probe that failed at set-up records none)
        rank = next((r for r in run.ranks if run.readers[r].n_steps), run.ranks[0])
    if rank not in run.readers:
        raise SideError(f"{run.dirs[0]}: no rank {rank} (ranks found: {run.ranks})")
    lead = run.readers[rank]
    steps = np.asarray(lead.steps, np.int64)
    rename = rename or {}
    groups = {r: reader.replica_groups() for r, reader in run.readers.items()}
    index_of = {r: {p.name: i for i, p in enumerate(reader.params)} for r, reader in run.readers.items()}
    stats_of: dict[tuple[int, str], np.ndarray] = {}

    def rank_stats(r: int, kind: str) -> np.ndarray:
        if (r, kind) not in stats_of:
            reader = run.readers[r]
            rows = rows_for(np.asarray(reader.steps, np.int64), steps)
            stats_of[(r, kind)] = take(reader.stats(kind).astype(np.float64), rows, np.nan)
        return stats_of[(r, kind)]

    names, shapes, sizes, dtypes, sharded = [], [], [], [], []
    pieces: dict[str, Pieces] = {}
    params, grads = [], []
    for i, info in enumerate(lead.params):
        holders = _shard_holders(run, info.name, rank, groups, index_of)
        if len(holders) > 1:
            shard_sizes = [run.readers[r].params[index_of[r][info.name]].size for r in holders]
            p = combine_shards(np.stack([rank_stats(r, "param")[:, index_of[r][info.name]] for r in holders], -2),
                               shard_sizes)
            shard_grads = np.stack([rank_stats(r, "grad")[:, index_of[r][info.name]] for r in holders], -2)
            g = combine_shards(shard_grads, shard_sizes)
            sharded.append(rename.get(info.name, info.name))
            pieces[sharded[-1]] = Pieces([groups[r][index_of[r][info.name]][0] for r in holders], shard_sizes,
                                         shard_grads)
            size, shape = int(sum(shard_sizes)), (int(sum(shard_sizes)),)
        else:
            p, g = rank_stats(rank, "param")[:, i], rank_stats(rank, "grad")[:, i]
            size, shape = info.size, tuple(info.shape)
        names.append(rename.get(info.name, info.name))
        shapes.append(shape)
        sizes.append(size)
        dtypes.append(info.dtype)
        params.append(p)
        grads.append(g)
    data_ranks = _data_ranks(run, groups)
    inputs, label_mean, digests = _global_batches(run, data_ranks, steps)
    counts = [run.readers[r].label_counts() for r in data_ranks]
    counts = [c for c in counts if c is not None and len(c)]
    return Side(dir=run.dirs[0], world_size=run.world_size, rank=rank, steps=steps, names=names, shapes=shapes,
                sizes=sizes, dtypes=dtypes, params=np.stack(params, 1) if params else np.zeros((len(steps), 0, 7)),
                grads=np.stack(grads, 1) if grads else np.zeros((len(steps), 0, 7)),
                loss=_mean_loss(run, steps), inputs=inputs, label_mean=label_mean, batch_digests=digests,
                data_ranks=data_ranks, label_counts=np.sum(counts, axis=0) if counts else None,
                meta=dict(lead.meta), sharded=sharded, pieces=pieces, activations=[a for a, _ in lead.activations],
                act_stats=_global_activations(run, data_ranks, steps))


def _shard_holders(run: Run, name: str, rank: int, groups: dict, index_of: dict) -> list[int]:
    """One rank per piece of ``name``: ``[rank]`` when the run replicates it; else one rank
    of each distinct replica group (``rank`` where it belongs), when the groups split the
    ranks that hold it. The recorded groups decide, not the parallel mode: a hand-written
    hybrid job (``scripts/train_hybrid.py``) runs in MindSpore's stand-alone mode and
    declares its groups."""
    if run.meta("parallel_mode") == "data_parallel":
        return [rank]
    distinct: list[tuple[int, ...]] = []
    for r in run.ranks:
        i = index_of[r].get(name)
        entry = groups[r][i] if i is not None and i < len(groups[r]) else None
        if entry is None:
            return [rank]  # unknown: the lead rank's copy is all there is to compare
        if entry[0] not in distinct:
            distinct.append(entry[0])
    members = [m for g in distinct for m in g]
    if len(distinct) < 2 or len(members) != len(set(members)):
        return [rank]
    return [rank if rank in g else next(r for r in g if r in run.readers) for g in sorted(distinct)
            if any(r in run.readers for r in g)]


def _data_ranks(run: Run, groups: dict) -> list[int]:
    """Ranks whose batches together make the global batch. In a hybrid job the ranks of a
    model-parallel set read the same batch: the data-parallel replicas are the ranks that
    hold the same pieces as the lowest rank (every rank, when every group spans the job
    or none is recorded). A rank that recorded no groups (a probe that failed at set-up)
    is taken to hold what the others hold."""
    if run.meta("parallel_mode") == "data_parallel":
        return run.ranks

    def key(r: int) -> tuple:
        return tuple(g[0] if g else None for g in groups[r])

    lead = key(next((r for r in run.ranks if any(key(r))), run.ranks[0]))
    same_piece = [r for r in run.ranks if len(key(r)) != len(lead) or not any(key(r))
                  or all(a is None or b is None or a == b for a, b in zip(key(r), lead))]
    return same_piece or run.ranks


def _global_batches(run: Run, data_ranks: list[int], steps: np.ndarray):
    rows, labels, digests = [], [], []
    for r in data_ranks:
        reader = run.readers[r]
        idx = rows_for(np.asarray(reader.steps, np.int64), steps)
        has = (take(reader.has(), idx, 0) & schema.HAS_BATCH) != 0
        row = take(reader.input_stats().astype(np.float64), idx, np.nan)
        row[~has] = np.nan
        rows.append(row)
        lab = take(reader.label_stats().astype(np.float64), idx, np.nan)[:, schema.LABEL_COLUMNS.index("mean")]
        labels.append(np.where(has, lab, np.nan))
        digests.append(np.where(has[:, None], take(reader.batch_digests(), idx, 0), 0))
    rows_a = np.stack(rows, 1)
    inputs = combine_inputs(rows_a)
    size = rows_a[..., schema.INPUT_COLUMNS.index("size")]
    with np.errstate(invalid="ignore"):
        label_mean = (np.stack(labels, 1) * size).sum(axis=1) / size.sum(axis=1)
    return inputs, label_mean, np.stack(digests, 1).astype(np.uint64)


def _global_activations(run: Run, data_ranks: list[int], steps: np.ndarray) -> np.ndarray:
    """Each activation tap's statistics over the global batch, from the data ranks' (each
    over its local batch): the shares and the mean weighted by the rank's batch size, the
    largest absolute output the largest of any rank. Ranks with another list of taps than
    the lowest are left out."""
    taps = run.readers[data_ranks[0]].activations
    total = np.zeros((len(steps), len(taps), len(schema.ACT_COLUMNS)))
    weight = np.zeros((len(steps), len(taps)))
    absmax = np.full((len(steps), len(taps)), -np.inf)
    col_max = schema.ACT_COLUMNS.index("absmax")
    for r in data_ranks:
        reader = run.readers[r]
        if reader.activations != taps or not taps:
            continue
        idx = rows_for(np.asarray(reader.steps, np.int64), steps)
        has = (take(reader.has(), idx, 0) & schema.HAS_ACTS) != 0
        stats = take(reader.act_stats().astype(np.float64), idx, np.nan)
        size = take(reader.input_stats().astype(np.float64), idx, np.nan)[:, schema.INPUT_COLUMNS.index("size")]
        w = np.where(np.isfinite(size) & (size > 0), size, 1.0)
        ok = has[:, None] & np.isfinite(stats).all(axis=2)
        total += np.where(ok[..., None], stats * w[:, None, None], 0.0)
        weight += np.where(ok, w[:, None], 0.0)
        absmax = np.where(ok, np.fmax(absmax, stats[..., col_max]), absmax)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / weight[..., None]
    out[..., col_max] = absmax
    out[weight == 0] = np.nan
    return out


def _mean_loss(run: Run, steps: np.ndarray) -> np.ndarray:
    total = np.zeros(len(steps))
    count = np.zeros(len(steps))
    for reader in run.readers.values():
        idx = rows_for(np.asarray(reader.steps, np.int64), steps)
        loss = take(reader.loss(), idx, np.nan)
        ok = ((take(reader.has(), idx, 0) & schema.HAS_LOSS) != 0) & np.isfinite(loss)
        total[ok] += loss[ok]
        count[ok] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
