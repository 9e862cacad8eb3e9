"""What a probe records, read from ``DISTCHECK_*`` variables set by ``distcheck launch``."""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

from distcheck.replicas import Declaration, DeclarationError

ENV_RUN_DIR = "DISTCHECK_RUN_DIR"
#: The job's id: ``distcheck launch`` sets it for every process of the job; a user's own
#: launcher may set it too (the same value on every rank), else dumps carry none.
ENV_JOB_ID = "DISTCHECK_JOB_ID"


def log(message: str) -> None:
    """One line on stderr, the probe's only way of speaking inside a job."""
    print(f"distcheck: {message}", file=sys.stderr, flush=True)


def run_dir_from_env() -> Optional[str]:
    return os.environ.get(ENV_RUN_DIR) or None


def job_id_from_env() -> str:
    """The job id in ``DISTCHECK_JOB_ID``, or "" when none was given."""
    return os.environ.get(ENV_JOB_ID, "").strip()


def _env(name: str, default, parse):
    value = os.environ.get(name, "")
    if not value.strip():
        return default
    try:
        return parse(value)
    except ValueError:
        log(f"ignoring {name}={value!r}: not a valid value; using {default!r}")
        return default


def _labels(value: str) -> str:
    value = value.strip().lower()
    if value in ("auto", "none"):
        return value
    return str(int(value))


#: Gradients bigger than this (1 GiB, about 268M float32 parameters) are not copied by
#: default: the copy doubles their device memory, which large models cannot spare.
GRAD_COPY_LIMIT = 1 << 30
#: Each large parameter's update is measured at every 4th recorded step, in turn.
UPDATE_NORM_EVERY = 4
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "1073741824", "512M", "1G", "1.5GiB" (powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a size: {text!r} (write e.g. 512M or 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def human_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.3g} {unit}iB"
    return f"{n} B"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ProbeOptions:
    """What to record, and how.

    ``every``: record steps divisible by it (step 0 always). ``full_steps``: steps at
    which whole tensors are kept too. ``fail_fast``: stop the job when the online check
    finds replicas that differ. ``online_every``: run the cross-rank check every K
    recorded steps as well as at step 0 (0: only at 0). ``flush_seconds``: buffered
    rows reach the disk at least this often. ``stall_seconds``: after this long without
    a completed step, the main thread's stack is kept (again at 2x, 4x, ...).
    ``strict``: a probe error stops the job instead of switching the probe off.
    ``local_world``: ranks sharing this run directory, when ``distcheck launch`` knows
    it (0: unknown); ranks then agree through files that each has a working probe
    before their first collective check. ``labels``: which batch tensor holds the class
    labels: "auto" (the last 1-D integer tensor), "none", or an index into the batch.
    ``replica_groups``: declared replica groups as JSON, in the config's form (see
    :mod:`distcheck.replicas`); empty: none declared. ``grad_copy_limit``: the most
    device memory, in bytes, that ``Model.train``'s copy of the gradients may take; above
    it gradients are not recorded (0: never copied). ``update_norm_every``: parameters of
    1 MiB or more have their update's norm measured in turn, each at every N-th recorded
    step, so that the probe keeps a copy of only about 1/N of them (1: every parameter at
    every recorded step, and a copy of all; see ``update_norms.Previous``). ``job_id``: the
    id every file of the job carries, so that the analyzer never mixes two jobs; by
    default ``DISTCHECK_JOB_ID`` (set by ``distcheck launch``), even when the options are
    built in code, else "" (no id). ``perturb``: move every trainable weight by one unit
    in the last place before step 0 is recorded (see :mod:`distcheck.reference.ulp`), so
    that the run measures how rounding differences grow: a noise run for ``distcheck
    diff --noise``.
    """

    every: int = 1
    full_steps: tuple[int, ...] = ()
    fail_fast: bool = False
    online_every: int = 0
    flush_seconds: float = 2.0
    activations: bool = False
    stall_seconds: float = 10.0
    strict: bool = False
    local_world: int = 0
    labels: str = "auto"
    replica_groups: str = ""
    grad_copy_limit: int = GRAD_COPY_LIMIT
    update_norm_every: int = UPDATE_NORM_EVERY
    perturb: bool = False
    job_id: str = field(default_factory=job_id_from_env)

    @classmethod
    def from_env(cls) -> "ProbeOptions":
        """Options from ``DISTCHECK_*`` variables; a malformed value is logged and ignored."""
        steps = _env("DISTCHECK_FULL_STEPS", (), lambda v: tuple(int(s) for s in v.split(",") if s.strip()))
        return cls(
            every=max(1, _env("DISTCHECK_EVERY", 1, int)),
            full_steps=steps,
            fail_fast=_flag("DISTCHECK_FAIL_FAST"),
            online_every=max(0, _env("DISTCHECK_ONLINE_EVERY", 0, int)),
            flush_seconds=max(0.0, _env("DISTCHECK_FLUSH_SECONDS", 2.0, float)),
            activations=_flag("DISTCHECK_ACTIVATIONS"),
            stall_seconds=max(0.5, _env("DISTCHECK_STALL_SECONDS", 10.0, float)),
            strict=_flag("DISTCHECK_STRICT"),
            local_world=max(0, _env("DISTCHECK_LOCAL_WORLD", 0, int)),
            labels=_env("DISTCHECK_LABELS", "auto", _labels),
            replica_groups=os.environ.get("DISTCHECK_REPLICA_GROUPS", "").strip(),
            grad_copy_limit=max(0, _env("DISTCHECK_GRAD_COPY_LIMIT", GRAD_COPY_LIMIT, parse_size)),
            update_norm_every=max(1, _env("DISTCHECK_UPDATE_NORM_EVERY", UPDATE_NORM_EVERY, int)),
            perturb=_flag("DISTCHECK_PERTURB"),
            job_id=job_id_from_env(),
        )

    def to_env(self) -> dict[str, str]:
        return {
            "DISTCHECK_EVERY": str(self.every),
            "DISTCHECK_FULL_STEPS": ",".join(str(s) for s in self.full_steps),
            "DISTCHECK_FAIL_FAST": "1" if self.fail_fast else "0",
            "DISTCHECK_ONLINE_EVERY": str(self.online_every),
            "DISTCHECK_FLUSH_SECONDS": str(self.flush_seconds),
            "DISTCHECK_ACTIVATIONS": "1" if self.activations else "0",
            "DISTCHECK_STALL_SECONDS": str(self.stall_seconds),
            "DISTCHECK_STRICT": "1" if self.strict else "0",
            "DISTCHECK_LOCAL_WORLD": str(self.local_world),
            "DISTCHECK_LABELS": self.labels,
            "DISTCHECK_REPLICA_GROUPS": self.replica_groups,
            "DISTCHECK_GRAD_COPY_LIMIT": str(self.grad_copy_limit),
            "DISTCHECK_UPDATE_NORM_EVERY": str(self.update_norm_every),
            "DISTCHECK_PERTURB": "1" if self.perturb else "0",
            ENV_JOB_ID: self.job_id,
        }

    def declaration(self) -> Optional[Declaration]:
        """The declared replica groups (see :mod:`distcheck.replicas`); a malformed
        declaration raises :class:`~distcheck.replicas.DeclarationError`."""
        if not self.replica_groups:
            return None
        try:
            value = json.loads(self.replica_groups)
        except ValueError as exc:
            raise DeclarationError(f"DISTCHECK_REPLICA_GROUPS is not valid JSON: {exc}") from None
        return Declaration.parse(value)

    @property
    def label_index(self) -> Optional[int]:
        """The batch index of the labels, or None for "auto" and "none"."""
        return int(self.labels) if self.labels not in ("auto", "none") else None
