"""Agree through files, before the first collective, that every rank's probe works.

A rank whose probe cannot set up its communication cannot join an all-gather, and
the others would wait for it forever. So before the first online check each rank
writes ``ready/<host>-<pid>`` in the run directory (``{"job_id", "ok", "why"}`` as
JSON) and waits until it sees as many files of its own job as there are ranks in the
directory, or a deadline. If any rank failed, every rank leaves the online checks out;
the failed rank writes its file at once, so every rank that waits sees it. A file of
another job (a stale one, left in a reused directory) is ignored, and said so once.
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Optional

from distcheck.recording.options import job_id_from_env, log

READY_DIR = "ready"


def announce(run_dir: str, ok: bool, why: str = "", job_id: Optional[str] = None) -> None:
    """Say whether this process's probe works. ``job_id`` defaults to ``DISTCHECK_JOB_ID``."""
    directory = os.path.join(run_dir, READY_DIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{socket.gethostname()}-{os.getpid()}")
    tmp = path + ".tmp"
    record = {"job_id": job_id_from_env() if job_id is None else job_id, "ok": ok, "why": "" if ok else why}
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    os.replace(tmp, path)


def all_ready(run_dir: str, expected: int, timeout: float = 60.0, job_id: Optional[str] = None) -> tuple[bool, str]:
    """(True, "") when ``expected`` ranks of this job (``job_id``, by default
    ``DISTCHECK_JOB_ID``) said ok; (False, why) when one failed or the deadline passed.
    A deadline means some rank never reached the probe. With no job id, every file
    counts (there is no telling jobs apart)."""
    mine = job_id_from_env() if job_id is None else job_id
    directory = os.path.join(run_dir, READY_DIR)
    deadline = time.monotonic() + timeout
    foreign: dict[str, str] = {}
    while True:
        try:
            names = [n for n in os.listdir(directory) if not n.endswith(".tmp")]
        except OSError:
            names = []
        ours = 0
        for name in names:
            record = _read(os.path.join(directory, name))
            if record is None:
                continue
            if mine and record["job_id"] != mine:
                if name not in foreign:
                    foreign[name] = record["job_id"]
                    log(f"ignoring {os.path.join(directory, name)}: left by another job "
                        f"({record['job_id'] or 'no job id'}, not {mine})")
                continue
            if not record["ok"]:
                return False, f"the probe of process {name} failed: {record['why']}"
            ours += 1
        if ours >= expected:
            return True, ""
        if time.monotonic() > deadline:
            return False, f"only {ours} of {expected} ranks reached the probe within {timeout:g} s"
        time.sleep(0.05)


def _read(path: str) -> Optional[dict]:
    """A ready file as ``{"job_id", "ok", "why"}``; None if it cannot be read. Files of
    older versions (``ok`` or ``failed: why``, no job id) read with job id ""."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        ok = text.strip() == "ok"
        return {"job_id": "", "ok": ok, "why": "" if ok else text.partition(":")[2].strip()}
    return {"job_id": str(record.get("job_id") or ""), "ok": bool(record.get("ok")), "why": str(record.get("why", ""))}
