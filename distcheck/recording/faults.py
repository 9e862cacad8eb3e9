"""Planted probe failures, to prove that a failing probe does no harm.

``DISTCHECK_FAULTS`` lists failures to plant, comma-separated, each
``POINT[@STEP][:RANK]``: ``world`` (setting up the ranks' communication), ``open``
(creating the dump), ``record@S`` (recording run step S), ``online@S`` (the online
check at S), ``flush`` (the heartbeat thread's first write). Without ``:RANK`` every
rank fails. Unset, this costs one dictionary lookup per call.
"""
from __future__ import annotations

import os
from typing import Optional

ENV = "DISTCHECK_FAULTS"


class PlantedFault(RuntimeError):
    """A failure planted with ``DISTCHECK_FAULTS``."""


def _parse(text: str) -> list[tuple[str, Optional[int], Optional[int]]]:
    faults = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        where, _, rank = item.partition(":")
        point, _, step = where.partition("@")
        faults.append((point, int(step) if step else None, int(rank) if rank else None))
    return faults


def plant(point: str, rank: Optional[int], step: Optional[int] = None) -> None:
    """Raise :class:`PlantedFault` if ``DISTCHECK_FAULTS`` plants one here."""
    text = os.environ.get(ENV)
    if not text:
        return
    try:
        faults = _parse(text)
    except ValueError:
        return
    for p, s, r in faults:
        if p == point and (s is None or s == step) and (r is None or r == rank):
            raise PlantedFault(f"planted fault '{point}'" + (f" at step {step}" if step is not None else ""))
