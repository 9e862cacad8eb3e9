"""Where replicas part ways: the first step, parameters and ranks, by majority vote.

For one replica group, every recorded step is voted on, parameter by parameter, for
three sets of columns: trainable parameters, non-trainable ones (buffers) and
post-reduce gradients. A *divergence episode* starts where a (rank, parameter) pair
becomes an outlier that was not one at the previous recorded step; one finding is
made per episode, so a seed mismatch that persists for 10,000 steps is one finding.

Speed: each step's digests are rolled up into one digest per kind when written. The
shares of the run (see :mod:`distcheck.analysis.run`) sort their ranks into classes of
equal rollups per block of steps; blocks where every rank is of one class are never
read, and a block of a few classes reads one rank of each.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from distcheck.difference import Difference, compare_tensors, infer_from_stats
from distcheck.analysis.run import Run
from distcheck.findings import Finding, Severity, name_list, rank_list
from distcheck.store import schema
from distcheck.store.schema import ParamInfo
from distcheck.steps import rows_for, take
from distcheck.vote import outlier_mask

BLOCK = schema.BLOCK


@dataclass
class Episode:
    stage: str  # init, param, buffer, grad
    step: int
    prev_step: Optional[int]
    columns: list[int]
    ranks: list[int]
    has_majority: bool
    grads_differed: Optional[bool] = None  # param episodes: did the same step's gradients differ?
    magnitude: list[str] = field(default_factory=list)
    differences: list[tuple[str, int, Difference]] = field(default_factory=list)  # (param, rank, kind)
    blocks: list[list[int]] = field(default_factory=list)  # no majority: ranks that agree among themselves


class _Tracker:
    """Remembers who was an outlier at the previous step, and logs new ones."""

    def __init__(self, stage: str, columns: np.ndarray, members: list[int]) -> None:
        self.stage, self.columns, self.members = stage, columns, members
        self.prev = np.zeros((len(members), len(columns)), bool)
        self.episodes: list[Episode] = []

    def update(self, step: int, prev_step: Optional[int], bad: np.ndarray, majority: np.ndarray) -> Optional[Episode]:
        bad = bad[:, self.columns]
        new = bad & ~self.prev
        self.prev = bad
        if not new.any():
            return None
        cols = np.flatnonzero(new.any(axis=0))
        episode = Episode(self.stage, step, prev_step, [int(self.columns[c]) for c in cols],
                          [self.members[i] for i in np.flatnonzero(new.any(axis=1))],
                          bool(majority[self.columns[cols]].all()))
        self.episodes.append(episode)
        return episode


@dataclass
class BlockClasses:
    """The members of a replica group sorted into classes over one block of steps, for
    one kind: members whose rollups, presence and columns are equal over the block hold
    equal digests there, so a vote reads one member of each class."""

    of: np.ndarray  # (R,) the class of each member
    rollups: np.ndarray  # (C, t, 2) each class's rollup digests
    present: np.ndarray  # (C, t) where each class recorded the kind
    first: np.ndarray  # (C,) a member (its index) of each class

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.of, minlength=len(self.first))


@dataclass
class Classes:
    """:class:`BlockClasses` of every block of a group's steps, by (block, kind)."""

    steps: np.ndarray  # every step any member recorded, in order
    blocks: dict[tuple[int, str], BlockClasses]


def share_classes(share: Run, tasks: list[tuple]) -> list[dict]:
    """For each group of ``tasks``, ``(members, cols, steps)``, this share's members sorted
    into classes per block and kind: ``(block, kind) -> (member indices, their class,
    each class's key, rollups, presence and first member)``. Runs where the share is."""
    out = []
    for members, cols, steps in tasks:
        mine = [(i, m) for i, m in enumerate(members) if m in share.readers]
        part: dict[tuple[int, str], tuple] = {}
        if mine:
            readers = [share.readers[m] for _, m in mine]
            rows = [rows_for(r.steps, steps) for r in readers]
            has = np.stack([take(r.has(), idx, 0) for r, idx in zip(readers, rows)])  # (R', T)
            flags = {"param": schema.HAS_PARAMS, "grad": schema.HAS_GRADS}
            for kind in schema.KINDS:
                present = has & flags[kind] != 0
                rollups = np.stack([take(r.rollups(kind), idx, 0) for r, idx in zip(readers, rows)])  # (R', T, 2)
                for start in range(0, len(steps), BLOCK):
                    stop = min(start + BLOCK, len(steps))
                    keys: dict[bytes, int] = {}
                    of = np.empty(len(mine), np.int32)
                    first: list[int] = []
                    for j, (i, m) in enumerate(mine):
                        key = rollups[j, start:stop].tobytes() + present[j, start:stop].tobytes() + cols[m].tobytes()
                        c = of[j] = keys.setdefault(key, len(first))
                        if c == len(first):
                            first.append(j)
                    part[(start // BLOCK, kind)] = (
                        np.array([i for i, _ in mine], np.int64), of, list(keys),
                        rollups[first, start:stop], present[first, start:stop],
                        np.array([mine[j][0] for j in first], np.int64))
        out.append(part)
    return out


def merge_classes(steps: np.ndarray, n_members: int, parts: list[dict]) -> Classes:
    """The classes of a group from every share's (see :func:`share_classes`): classes of
    equal keys are one class."""
    blocks: dict[tuple[int, str], BlockClasses] = {}
    for b in range((len(steps) + BLOCK - 1) // BLOCK):
        for kind in schema.KINDS:
            index: dict[bytes, int] = {}
            of = np.full(n_members, -1, np.int32)
            rollups, present, first = [], [], []
            for part in parts:
                if (b, kind) not in part:
                    continue
                positions, local, keys, rolls, pres, firsts = part[(b, kind)]
                to_global = np.empty(len(keys), np.int32)
                for c, key in enumerate(keys):
                    g = to_global[c] = index.setdefault(key, len(first))
                    if g == len(first):
                        rollups.append(rolls[c])
                        present.append(pres[c])
                        first.append(int(firsts[c]))
                of[positions] = to_global[local]
            blocks[(b, kind)] = BlockClasses(of, np.stack(rollups), np.stack(present), np.array(first, np.int64))
    return Classes(steps, blocks)


def scan_group(run: Run, members: list[int], params: list[ParamInfo], cols: dict[int, np.ndarray],
               weights: np.ndarray, classes: Classes) -> list[Episode]:
    """Vote on every recorded step of one replica group; return the episodes in order.

    ``params`` are the parameters compared, at column ``cols[rank]`` of each member's
    dump. ``weights`` marks those compared as weights; the others are buffers, whose
    differences are only a warning. ``classes`` are the members' classes (see
    :func:`share_classes` and :func:`merge_classes`)."""
    steps = classes.steps
    with_grad = np.array([p.has_grad for p in params], bool)
    trackers = {
        "param": _Tracker("param", np.flatnonzero(weights), members),
        "buffer": _Tracker("buffer", np.flatnonzero(~weights), members),
        "grad": _Tracker("grad", np.flatnonzero(with_grad), members),
    }
    quiet = (np.zeros((len(members), len(params)), bool), np.ones(len(params), bool))
    prev_step: Optional[int] = None
    for start in range(0, len(steps), BLOCK):
        stop = min(start + BLOCK, len(steps))
        block = {}
        for kind in schema.KINDS:
            cl = classes.blocks[(start // BLOCK, kind)]
            if not outlier_mask(cl.rollups, cl.present)[0].any():  # every member that recorded a step agrees
                block[kind] = None
            else:
                block[kind] = _vote_block(run, members, cols, kind, steps, start, stop, cl)
        if all(v is None for v in block.values()):  # every rank agrees on every step of the block
            for tracker in trackers.values():
                tracker.prev[:] = False
            prev_step = int(steps[stop - 1])
            continue
        grad_present = classes.blocks[(start // BLOCK, "grad")].present
        for t in range(stop - start):
            step = int(steps[start + t])
            views = {}
            for kind in schema.KINDS:
                if block[kind] is None:
                    views[kind] = quiet
                else:
                    outliers, majority, of = block[kind]
                    views[kind] = (outliers[:, t][of], majority[t])
            grad_bad = views["grad"][0]
            grads_recorded = bool(grad_present[:, t].any())
            trackers["grad"].update(step, prev_step, *views["grad"])
            trackers["buffer"].update(step, prev_step, *views["param"])
            episode = trackers["param"].update(step, prev_step, *views["param"])
            if episode is not None:
                if step == 0:
                    episode.stage = "init"
                elif grads_recorded:
                    episode.grads_differed = bool(grad_bad[:, episode.columns].any())
            prev_step = step
    episodes = [e for tr in trackers.values() for e in tr.episodes]
    return sorted(episodes, key=lambda e: (e.step, e.stage))


def group_steps(run: Run, members: list[int]) -> np.ndarray:
    """Every step any of ``members`` recorded, in order."""
    table = run.readers  # from its columns: no reader per rank
    steps = [table.steps_of(m) for m in members]
    return np.unique(np.concatenate(steps)) if steps else np.zeros(0, np.int64)


def describe(run: Run, members: list[int], params: list[ParamInfo], cols: dict[int, np.ndarray],
             episodes: list[Episode]) -> list[Episode]:
    """Add how far apart the ranks are, and (with no majority) which blocks agree."""
    for e in episodes:
        e.magnitude = _magnitude(run, members, params, cols, e)
        if not e.has_majority and e.stage in ("init", "param"):
            e.blocks = _blocks(run, members, cols, e)
    return episodes


#: Distinct classes of ranks a block is voted on by class; beyond, rank by rank.
MAX_CLASSES = 32
#: Bytes of digests read at once when a block is voted on rank by rank.
READ_BUDGET = 64 << 20


def _vote_block(run: Run, members: list[int], cols: dict[int, np.ndarray], kind: str, steps: np.ndarray,
                start: int, stop: int, classes: BlockClasses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vote on steps [start, stop) of ``kind``: ``(outliers (C, t, P), majority (t,
    P), class of each member)`` as :func:`outlier_mask` finds it on every member's digests.

    One member of each class is read and counted as many times as its class has members:
    a block of ten thousand ranks of which one differs reads two files. With many
    classes, every member is read (each its own class), a few steps at a time
    (``READ_BUDGET``)."""
    def digests(member: int, lo: int, hi: int) -> np.ndarray:
        rank = members[member]
        reader = run.readers[rank]
        return _read_block(reader, kind, rows_for(reader.steps, steps[lo:hi]), cols[rank])

    if len(classes.first) <= MAX_CLASSES:
        read = np.stack([digests(int(i), start, stop) for i in classes.first])  # (C, t, P, 2)
        mask = np.broadcast_to(classes.present[:, :, None], read.shape[:-1])
        outliers, majority = _vote_classes(read, mask, classes.counts)
        return outliers, majority, classes.of
    width = max(len(c) for c in cols.values()) * 16 * len(members)
    parts = []
    for lo in range(start, stop, max(1, READ_BUDGET // max(width, 1))):
        hi = min(stop, lo + max(1, READ_BUDGET // max(width, 1)))
        read = np.stack([digests(i, lo, hi) for i in range(len(members))])  # (R, t, P, 2)
        present = classes.present[classes.of, lo - start:hi - start]
        parts.append(outlier_mask(read, np.broadcast_to(present[:, :, None], read.shape[:-1])))
    return (np.concatenate([o for o, _ in parts], axis=1), np.concatenate([m for _, m in parts], axis=0),
            np.arange(len(members)))


def _vote_classes(digests: np.ndarray, present: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`outlier_mask` of classes of equal ranks, class ``c`` counting ``counts[c]``
    votes: ``digests`` (C, ...,  2), ``present`` (C, ...). Pairwise: C is small."""
    weights = counts.reshape(-1, *([1] * (present.ndim - 1)))
    same = np.all(digests[:, None] == digests[None, :], axis=-1) & present[None, :]  # (C, C, ...)
    support = np.where(present, (same * weights[None]).sum(axis=1), 0)
    voters = (present * weights).sum(axis=0)
    in_majority = (support * 2 > voters) & present
    has_majority = in_majority.any(axis=0)
    disagrees = np.any(present & (support < voters), axis=0)
    outliers = np.where(has_majority, present & ~in_majority, present & disagrees)
    return outliers, has_majority | ~disagrees


def _read_block(reader, kind: str, idx: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = np.zeros((len(idx), len(cols), 2), np.uint64)
    ok = idx >= 0
    if ok.any():
        lo, hi = int(idx[ok].min()), int(idx[ok].max()) + 1
        rows = reader.digests(kind, lo, hi)
        out[ok] = rows[idx[ok] - lo][:, cols]
    return out


def _blocks(run: Run, members: list[int], cols: dict[int, np.ndarray], e: Episode) -> list[list[int]]:
    """The ranks that agree with each other on the episode's parameters at its step."""
    seen: dict[bytes, list[int]] = {}
    for rank in members:
        reader = run.readers[rank]
        where = np.flatnonzero(reader.steps == e.step)
        if not len(where):
            continue
        i = int(where[0])
        row = reader.digests("param", i, i + 1)[0][cols[rank][e.columns]]
        seen.setdefault(row.tobytes(), []).append(rank)
    return sorted(seen.values())


def _magnitude(run: Run, members: list[int], params: list[ParamInfo], cols: dict[int, np.ndarray],
               e: Episode) -> list[str]:
    """How far apart: full-tensor max |diff| where kept, else the L2 norms on each side."""
    kind = "grad" if e.stage == "grad" else "param"
    suspects = set(e.ranks)
    good = [r for r in members if r not in suspects]
    if not good:
        return []
    ref = run.readers[good[0]]
    notes = []
    for col in e.columns[:3]:
        name = params[col].name
        for rank in e.ranks[:2]:
            reader = run.readers[rank]
            mine_col, ref_col = int(cols[rank][col]), int(cols[ref.rank][col])
            mine, theirs = reader.full(kind, e.step, mine_col), ref.full(kind, e.step, ref_col)
            if mine is not None and theirs is not None and mine.shape == theirs.shape:
                difference = compare_tensors(mine, theirs, params[col].dtype)
                if difference is not None:
                    e.differences.append((name, rank, difference))
                    notes.append(f"{name}: max |diff| {difference.max_abs:.3g} between rank {rank} and rank "
                                 f"{ref.rank}")
                continue
            row_mine, row_ref = _stats(reader, kind, e.step, mine_col), _stats(ref, kind, e.step, ref_col)
            if row_mine is not None and row_ref is not None:
                online = _online_difference((reader, ref), e.step, name, rank) if kind == "param" else None
                e.differences.append((name, rank, online or infer_from_stats(row_mine, row_ref, params[col].size)))
                notes.append(f"{name}: L2 norm {row_mine[3]:.6g} on rank {rank}, {row_ref[3]:.6g} on rank "
                             f"{ref.rank}")
    return notes


def _online_difference(readers, step: int, name: str, rank: int) -> Optional[Difference]:
    """The exact kind the online check fetched before it stopped the job, if it was this one."""
    for reader in readers:
        record = reader.online_difference()
        if record and (record.get("step"), record.get("param"), record.get("rank")) == (step, name, rank):
            return Difference.from_json(record)
    return None


def _stats(reader, kind: str, step: int, col: int) -> Optional[np.ndarray]:
    where = np.flatnonzero(reader.steps == step)
    if not len(where):
        return None
    i = int(where[0])
    return reader.stats(kind, i, i + 1)[0, col].astype(np.float64)


# -- findings -------------------------------------------------------------------
def episode_findings(episodes: list[Episode], params: list[ParamInfo], group: str, group_size: int,
                     parallel_mode: Optional[str], limit: int) -> list[Finding]:
    """One finding per episode (at most ``limit`` per code); ``group`` names the replica
    group in messages."""
    findings: list[Finding] = []
    counts: dict[str, int] = {}
    grad_episodes = [e for e in episodes if e.stage == "grad"]
    for e in episodes:
        finding = _with_difference(_finding(e, params, group, group_size, parallel_mode, grad_episodes), e)
        counts[finding.code] = counts.get(finding.code, 0) + 1
        if counts[finding.code] <= limit:
            findings.append(finding)
    return findings


def _finding(e: Episode, params: list[ParamInfo], group: str, group_size: int, parallel_mode: Optional[str],
             grad_episodes: list[Episode]) -> Finding:
    names = tuple(params[c].name for c in e.columns)
    who = _who(e, group)
    where = _where(e)
    extra = (f" {'; '.join(e.magnitude)}." if e.magnitude else "") + _blocks_hint(e)
    if e.stage == "init":
        frozen = [params[c].name for c in e.columns if not params[c].trainable]
        also = (f" Of these, {name_list(frozen)} {'is' if len(frozen) == 1 else 'are'} frozen (requires_grad=False): "
                "a pretrained weight loaded on some ranks only, or initialised without the same seed." if frozen
                else "")
        message = (f"Weights differ at step 0, before any update: {who} in "
                   f"{len(names)} parameter(s): {name_list(names)}. Typical cause: a different random "
                   f"seed on those ranks (call set_seed with the same value on every rank before building "
                   f"the network), or a checkpoint loaded on some ranks only.{also}{extra}")
        return Finding("init_mismatch", Severity.ERROR, "init", e.step, tuple(e.ranks), names, message)
    if e.stage == "grad":
        hint = ("The job ran with parallel_mode stand_alone, so gradients are never all-reduced: set "
                "parallel_mode=DATA_PARALLEL. " if parallel_mode == "stand_alone" and group_size > 1 else "")
        message = (f"Post-reduce gradients differ {where}: {who} in {len(names)} parameter(s): "
                   f"{name_list(names)}. {hint}Causes: the gradient reduction is missing or partial, "
                   f"uses the wrong group, or data was corrupted.{extra}")
        return Finding("grad_divergence", Severity.ERROR, "grad", e.step, tuple(e.ranks), names, message)
    if e.stage == "buffer":
        message = (f"Non-trainable parameters differ {where}: {who} in {name_list(names)}. This is "
                   "expected for BatchNorm moving statistics without synchronized BatchNorm; it does not "
                   f"affect the trained weights, but evaluation differs by rank.{extra}")
        return Finding("buffer_divergence", Severity.WARNING, "buffer", e.step, tuple(e.ranks), names, message)
    caused_by = None
    if e.grads_differed:
        cause = [g for g in grad_episodes if g.step <= e.step]
        caused_by = f"grad_divergence@{cause[-1].step}" if cause else None
        why = "The gradients of that step also differed, so this follows from the gradient divergence."
    elif e.grads_differed is False:
        why = ("The gradients of that step agreed on every rank, so the update itself was inconsistent: "
               "optimizer settings (learning rate, weight decay, loss scale) or optimizer state differ, "
               "or something wrote to the parameters outside the optimizer.")
    else:
        why = "Gradients were not recorded at that step, so it is unknown whether they agreed."
    frozen = [params[c].name for c in e.columns if not params[c].trainable]
    if frozen:
        it = "it" if len(frozen) == 1 else "them"
        written = (f"{name_list(frozen)} {'is' if len(frozen) == 1 else 'are'} frozen (requires_grad=False), so "
                   f"the optimizer does not change {it}: something wrote to {it} on those ranks (weights loaded on "
                   f"some ranks only, code that modifies {it}).")
        why = written if len(frozen) == len(names) else f"{why} Of these, {written}"
        caused_by = caused_by if len(frozen) < len(names) else None
    message = f"Parameters agreed before and differ {where}: {who} in {name_list(names)}. {why}{extra}"
    return Finding("param_divergence", Severity.ERROR, "param", e.step, tuple(e.ranks), names, message,
                   caused_by=caused_by)


def _with_difference(finding: Finding, e: Episode) -> Finding:
    """Say what kind of difference the episode is (a flipped bit or a software cause)."""
    if not e.differences:
        return finding
    kinds = [f"{name} on rank {rank}: {d.describe()}" for name, rank, d in e.differences[:2]]
    advice = next((d.advice() for _, _, d in e.differences if d.hardware_suspect), e.differences[0][2].advice())
    text = " Kind of difference: " + " ".join(kinds) + (f" {advice}" if advice else "")
    detail = {**finding.detail, "difference": [{"param": name, "rank": rank, **d.to_json()}
                                                for name, rank, d in e.differences]}
    return replace(finding, message=finding.message + text, detail=detail)


def _who(e: Episode, group: str) -> str:
    ranks = rank_list(e.ranks)
    if e.has_majority:
        return f"rank(s) {ranks} differ from the majority of replica group {group}"
    return f"ranks {ranks} (all suspects: no majority of replica group {group} decides which is right) differ"


def _blocks_hint(e: Episode) -> str:
    """With no majority but blocks of ranks that agree among themselves: perhaps shards."""
    if len(e.blocks) < 2 or not all(len(b) > 1 for b in e.blocks):
        return ""
    blocks = " and ".join("{" + rank_list(b) + "}" for b in e.blocks)
    return (f" The ranks fall into blocks that agree among themselves, {blocks}: if these hold different shards "
            "by design (model or tensor parallel), declare each parameter's replica groups (replica_groups in a "
            "config file, see the README).")


def _where(e: Episode) -> str:
    if e.prev_step is None:
        return f"at step {e.step}, the first recorded step"
    if e.prev_step == e.step - 1:
        return f"after the update of step {e.step}"
    return f"at step {e.step} (they agreed at step {e.prev_step}, the previous recorded step)"
