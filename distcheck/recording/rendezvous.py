"""Agree through files, before the first collective, that every rank's probe works.

A rank whose probe cannot set up its communication cannot join an all-gather, and
the others would wait for it forever. So before the first online check each rank
writes ``ready/<host>-<pid>`` in the run directory (``ok``, or ``failed: why``) and
waits until it sees as many files as there are ranks in the directory, or a deadline.
If any rank failed, every rank leaves the online checks out; the failed rank writes
its file at once, so every rank that waits sees it.
"""
from __future__ import annotations

import os
import socket
import time

READY_DIR = "ready"


def announce(run_dir: str, ok: bool, why: str = "") -> None:
    directory = os.path.join(run_dir, READY_DIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{socket.gethostname()}-{os.getpid()}")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("ok" if ok else f"failed: {why}")
    os.replace(tmp, path)


def all_ready(run_dir: str, expected: int, timeout: float = 60.0) -> tuple[bool, str]:
    """(True, "") when ``expected`` ranks said ok; (False, why) when one failed or the
    deadline passed. A deadline means some rank never reached the probe."""
    directory = os.path.join(run_dir, READY_DIR)
    deadline = time.monotonic() + timeout
    while True:
        try:
            names = [n for n in os.listdir(directory) if not n.endswith(".tmp")]
        except OSError:
            names = []
        for name in names:
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            if text.startswith("failed"):
                return False, f"the probe of process {name} {text}"
        if len(names) >= expected:
            return True, ""
        if time.monotonic() > deadline:
            return False, f"only {len(names)} of {expected} ranks reached the probe within {timeout:g} s"
        time.sleep(0.05)
