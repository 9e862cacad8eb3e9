"""The online check: compare parameter digests across ranks while the job runs.

Up to three rounds keep the common case cheap and every rank in step:

1. a fixed header from each rank (ok flag, step, parameter count, digest of the
   parameter table, rollup digest of the parameters it compares): equal rollups end a
   data parallel check, 48 bytes a rank;
2. if the rollups differ (always so in a sharded job, whose shards differ by design),
   one rollup per replica group the rank belongs to, keyed by the group's members: at
   most :data:`MAX_GROUPS` x 24 bytes a rank, whatever the number of parameters. Equal
   rollups within every group end the check;
3. only then the per-parameter digests, each with the *leader* of its replica group (its
   lowest rank, see :mod:`distcheck.replicas`) and whether it changed on that rank since
   step 0, 32 bytes a parameter.

Buffers the network updates itself (BatchNorm's moving statistics) differ across
unsynchronised replicas by design, so they are left out of the rollups and the vote, as
the analyzer leaves them out of its errors: a non-trainable parameter named like a
running statistic, or one that changed since step 0 on every rank
(:mod:`distcheck.buffers`). A frozen weight stays in: one that changed on some ranks
only makes their rollups differ, and the vote names it.

Every rank votes within every group the same way, so all reach the same verdict, and
shards that differ by design are never compared. A rank with nothing to give (its probe
failed) sends ok=0, and then every rank switches the check off together, so no rank
ever waits in an all-gather that another skipped.
"""
from __future__ import annotations

import json
from typing import Callable, Optional, Sequence

import numpy as np

from distcheck.buffers import is_running_statistic
from distcheck.digest import digest, digest_rows
from distcheck.recording.difference_fetch import fetch_difference
from distcheck.recording.faults import PlantedFault, plant
from distcheck.recording.options import log
from distcheck.replicas import Group, leaders
from distcheck.store.schema import FAIL_FAST_MESSAGE, MAX_GROUPS, ParamInfo
from distcheck.vote import majority
from distcheck.world import World


class ConsistencyError(RuntimeError):
    """Raised on every rank by the online check when ``fail_fast`` is set."""


class OnlineCheck:
    def __init__(self, world: Optional[World], params: Sequence[ParamInfo], every: int, online_every: int,
                 fail_fast: bool) -> None:
        self.world, self.params = world, list(params)
        self.every, self.online_every, self.fail_fast = every, online_every, fail_fast
        self.on = world is not None and world.size > 1
        self._done: Optional[int] = None
        self._leaders = np.full(len(self.params), -1, np.int64)
        self._group_keys = np.zeros(len(self.params), np.uint64)  # 0: not compared
        self._trainable = np.array([p.trainable for p in self.params], bool)
        self._running = np.array([not p.trainable and is_running_statistic(p.name) for p in self.params], bool)
        self._first: Optional[np.ndarray] = None  # this rank's digests at step 0
        table = json.dumps([(p.name, list(p.shape), p.dtype) for p in self.params]).encode()
        self._table = digest(np.frombuffer(table, np.uint8))[0]

    def set_groups(self, groups: Sequence[Optional[Group]]) -> None:
        """Each parameter's replica group on this rank (None: unknown, not compared)."""
        self._leaders = np.array(leaders(groups), np.int64)
        self._group_keys = np.array([_group_key(g) for g in groups], np.uint64)

    def off(self, why: str) -> None:
        """Switch the check off on this rank only. Safe only where every rank does the same."""
        if self.on and self.world is not None and self.world.rank == 0:
            log(f"online check off: {why}")
        self.on = False

    def due(self, step: int) -> bool:
        """Whether ``step`` has a check. Depends on the step alone, so every rank,
        recording or not, agrees on it and joins the all-gather."""
        if not self.on or step == self._done:
            return False
        if step == 0:
            return True
        k = self.online_every * self.every
        return k > 0 and step % k == 0

    def run(self, step: int, rows: Optional[np.ndarray], on_mismatch: Callable[[str, Optional[dict]], None],
            tensors: Optional[Sequence[np.ndarray]] = None) -> None:
        """Compare this rank's parameter digests ``rows`` (None: nothing to give). With
        ``fail_fast``, a mismatch calls ``on_mismatch(message, difference)`` before raising;
        ``difference`` says what kind of difference the first diverging parameter shows,
        fetched from ``tensors`` (this rank's parameters, in order), or is None."""
        self._done = step
        try:
            plant("online", self.world.rank, step)
        except PlantedFault as exc:
            log(f"online check on rank {self.world.rank}: {exc}; taking part with nothing to give")
            rows = None
        header = np.zeros(6, np.uint64)
        changed = np.zeros(len(self.params), bool)
        compared = np.ones(len(self.params), bool)
        if rows is not None:
            if step == 0:
                self._first = np.array(rows, copy=True)
            elif self._first is not None and self._first.shape == rows.shape:
                changed = np.any(rows != self._first, axis=1)
            compared = self._trainable | (~self._running & ~changed)
            header[:] = (1, step, len(self.params), self._table, *digest_rows(np.ascontiguousarray(rows[compared])))
        gathered = self._allgather(header, step)
        if gathered is None:
            return
        if not (np.all(gathered[:, 0] == 1) and np.all(gathered[:, 1:4] == gathered[0, 1:4])):
            missing = [int(r) for r in np.flatnonzero(gathered[:, 0] != 1)]
            self.off(f"rank(s) {missing} recorded nothing at step {step}" if missing
                     else f"ranks hold different parameters (names, shapes or dtypes; pipeline stages?) at step "
                          f"{step}; the analyzer compares them after the job")
            return
        if np.all(gathered[:, 4:] == gathered[0, 4:]):
            return
        groups_agree = self._groups_agree(rows, compared, step)
        if groups_agree is None or groups_agree:
            return
        mine = np.concatenate([rows, self._leaders.astype(np.uint64)[:, None], changed.astype(np.uint64)[:, None]],
                              axis=1)  # (P, 4)
        gathered = self._allgather(mine, step)
        if gathered is None:
            return
        bad_params, bad_ranks, first = self._vote(gathered)
        if not bad_params:
            return
        ranks = sorted(bad_ranks)
        message = (f"replicas differ at step {step} on rank(s) {ranks} in {len(bad_params)} "
                   f"parameter(s): {', '.join(bad_params[:5])}{' ...' if len(bad_params) > 5 else ''}")
        if self.world.rank == 0 or self.world.rank in ranks:
            log(message)
        if self.fail_fast:
            difference = self._difference(first, tensors, step)
            if difference is not None:
                message += f"; {difference['param']} on rank {difference['rank']}: {difference['text'].rstrip('.')}"
            on_mismatch(f"{FAIL_FAST_MESSAGE}{message}", difference)
            raise ConsistencyError(message)

    def _difference(self, first: Optional[tuple[int, int, int]], tensors: Optional[Sequence[np.ndarray]],
                    step: int) -> Optional[dict]:
        """Before stopping: what kind of difference the first diverging parameter shows,
        between its culprit and a majority rank (see :mod:`difference_fetch`). Every rank
        takes part; a failure here costs only the answer."""
        if first is None:
            return None
        i, culprit, reference = first
        info = self.params[i]
        mine = tensors[i] if tensors is not None and i < len(tensors) else None
        try:
            found = fetch_difference(self.world, mine, info.size, info.dtype, culprit, reference)
        except Exception as exc:  # the collectives failed on every rank alike
            log(f"rank {self.world.rank}: could not compare {info.name} at step {step}: {type(exc).__name__}: {exc}")
            return None
        if found is None:
            return None
        return {"step": step, "param": info.name, "rank": culprit, "reference_rank": reference,
                "text": f"{found.describe()} {found.advice()}".strip(), **found.to_json()}

    def _groups_agree(self, rows: np.ndarray, compared: np.ndarray, step: int) -> Optional[bool]:
        """Round 2: whether every replica group's members hold the same rollup of that
        group's ``compared`` parameters (None: the all-gather failed). Row 0 of each
        rank's table holds its number of groups; a rank in more than MAX_GROUPS groups
        sends none, and then every rank goes on to round 3."""
        keys = np.where(compared, self._group_keys, np.uint64(0))
        mine = np.zeros((MAX_GROUPS + 1, 3), np.uint64)
        distinct = [k for k in np.unique(keys) if k]
        mine[0, 0] = len(distinct)
        if len(distinct) <= MAX_GROUPS:
            for row, key in enumerate(distinct, start=1):
                mine[row] = (key, *digest_rows(np.ascontiguousarray(rows[keys == key])))
        gathered = self._allgather(mine, step)
        if gathered is None:
            return None
        if np.any(gathered[:, 0, 0] > MAX_GROUPS):
            return False
        tables = gathered[:, 1:, :].reshape(-1, 3)
        tables = tables[tables[:, 0] != 0]
        for key in np.unique(tables[:, 0]):
            rollups = tables[tables[:, 0] == key, 1:]
            if not np.all(rollups == rollups[0]):
                return False
        return True

    def _vote(self, gathered: np.ndarray) -> tuple[list[str], set[int], Optional[tuple[int, int, int]]]:
        """Parameters whose replicas disagree, and the ranks outside each majority.
        ``gathered`` is (R, P, 4): two digest words, the group leader and whether the
        parameter changed on that rank since step 0, per parameter. Buffers are not voted
        on: those named like running statistics, and non-trainable parameters that
        changed on every member of their group. Also returns, for the first parameter
        with a majority, (its index, its lowest culprit, the lowest majority rank)."""
        bad_params, bad_ranks, first = [], set(), None
        leaders = gathered[:, :, 2].astype(np.int64)
        changed = gathered[:, :, 3] != 0
        for i, info in enumerate(self.params):
            if self._running[i]:
                continue
            culprits: set[int] = set()
            for leader in np.unique(leaders[:, i]):
                members = np.flatnonzero(leaders[:, i] == leader)
                if leader < 0 or len(members) < 2 or (not info.trainable and changed[members, i].all()):
                    continue
                vote = majority([tuple(gathered[r, i, :2]) for r in members])
                culprits.update(int(members[o]) for o in vote.outliers)
                if first is None and vote.outliers and vote.has_majority:
                    agreeing = [int(m) for k, m in enumerate(members) if k not in vote.outliers]
                    first = (i, int(members[vote.outliers[0]]), agreeing[0])
            if culprits:
                bad_params.append(info.name)
                bad_ranks.update(culprits)
        return bad_params, bad_ranks, first

    def _allgather(self, array: np.ndarray, step: int) -> Optional[np.ndarray]:
        try:
            return self.world.allgather(array)
        except Exception as exc:
            # A failed collective fails on every rank that joined it; none goes on alone.
            self.on = False
            log(f"online check off on rank {self.world.rank}: all-gather failed at step {step}: "
                f"{type(exc).__name__}: {exc}")
            return None


def _group_key(group: Optional[Group]) -> int:
    """A non-zero 64-bit name for a replica group of two or more ranks; 0 otherwise."""
    if group is None or len(group) < 2:
        return 0
    return digest(np.array(sorted(group), np.int64))[0] or 1
