"""Reading a run while it is written: each rank's latest heartbeat, step and status.

Used by ``distcheck watch`` and by ``distcheck launch --stall-timeout``. Every look
opens each rank's file as an SWMR reader and closes it again, so a file that
appears, grows or is closed between two looks is always seen as it is now.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from distcheck.store import schema
from distcheck.store.reader import DumpError, DumpReader, Heartbeat
from distcheck.store.schema import Status


@dataclass(frozen=True)
class RankNow:
    rank: int
    world_size: int
    status: Status
    heartbeat: Optional[Heartbeat]
    last_recorded: Optional[int]
    hostname: str
    pid: int
    problem: str = ""  #: the file could not be read just now (it is being created, or damaged)


def look(run_dir: str) -> list[RankNow]:
    """Every rank file in ``run_dir`` as it is now, by rank."""
    out = []
    try:
        names = sorted(n for n in os.listdir(run_dir) if schema.FILE_PATTERN.match(n))
    except OSError:
        return out
    for name in names:
        rank = int(schema.FILE_PATTERN.match(name).group(1))
        try:
            with DumpReader(os.path.join(run_dir, name), check_hangs=False) as reader:
                out.append(RankNow(rank, reader.world_size, reader.status, reader.last_heartbeat(),
                                   int(reader.steps[-1]) if reader.n_steps else None,
                                   str(reader.attr("hostname", "")), int(reader.attr("pid", 0))))
        except DumpError as exc:
            out.append(RankNow(rank, 0, Status.RUNNING, None, None, "", 0, problem=exc.problem))
    return out


def progress_of_run(run_dir: str) -> dict[int, Optional[Heartbeat]]:
    """Each rank's latest heartbeat (None before its first)."""
    return {r.rank: r.heartbeat for r in look(run_dir)}
