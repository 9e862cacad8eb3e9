"""Stopping a launched job completely: launcher, scheduler, supervisors, training processes.

msrun starts each worker in a session of its own and, once one worker fails, kills
the rest with SIGKILL; on SIGTERM it exits at once and leaves its workers running.
So the job is stopped from outside, in an order that lets every rank close its dump:

1. take a snapshot of the whole process tree under the launched processes;
2. SIGSTOP the launcher's own processes (msrun, mpirun and its proxies, the MindSpore
   scheduler), so none of them kills a rank mid-way through closing its dump. They are
   frozen, not killed: mpirun's proxies hold the ranks' stdout, and a rank that printed
   into a closed pipe would die of SIGPIPE with its dump open;
3. SIGTERM every rank's supervisor and training process (a supervisor passes it on, too);
   each probe closes its dump as "terminated" and the process ends;
4. after a grace period, SIGKILL whatever is left, the frozen launcher included.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Iterable

import psutil

SUPERVISOR = "rank_supervisor.py"


def process_tree(roots: Iterable[subprocess.Popen]) -> list[psutil.Process]:
    """The launched processes and all their descendants that are still alive."""
    tree: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            proc = psutil.Process(root.pid)
            tree[proc.pid] = proc
            for child in proc.children(recursive=True):
                tree[child.pid] = child
        except psutil.Error:
            continue
    return list(tree.values())


def _is_supervisor(proc: psutil.Process) -> bool:
    try:
        return any(os.path.basename(arg) == SUPERVISOR for arg in proc.cmdline()[:3])
    except psutil.Error:
        return False


def _supervised(tree: list[psutil.Process]) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(rank processes: supervisors and their descendants, the launcher's own processes)."""
    ranks: dict[int, psutil.Process] = {}
    for proc in tree:
        if _is_supervisor(proc):
            ranks[proc.pid] = proc
            try:
                for child in proc.children(recursive=True):
                    ranks[child.pid] = child
            except psutil.Error:
                pass
    return list(ranks.values()), [p for p in tree if p.pid not in ranks]


def _send(procs: Iterable[psutil.Process], signum: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(signum)
        except psutil.Error:
            pass


def stop_job(roots: list[subprocess.Popen], grace: float = 30.0) -> list[int]:
    """Stop every process of the job; returns the pids that needed SIGKILL after ``grace``."""
    tree = process_tree(roots)
    leftovers, launcher = tree, []
    try:
        ranks, launcher = _supervised(tree)
        _send(launcher, signal.SIGSTOP)
        _send(ranks, signal.SIGTERM)
        # Not psutil.wait_procs: a rank whose parent is frozen stays a zombie, and is done.
        left = set(wait_gone([p.pid for p in ranks], timeout=grace))
        leftovers = [p for p in ranks if p.pid in left]
        for proc in list(leftovers):
            try:
                leftovers.extend(proc.children(recursive=True))
            except psutil.Error:
                pass
        leftovers += launcher
    finally:  # whatever happened above, nothing of the job is left running
        _send(leftovers, signal.SIGKILL)
        wait_gone([p.pid for p in leftovers], timeout=5)
        for root in roots:  # reap, so no zombie stays behind
            try:
                root.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    return sorted({p.pid for p in leftovers if p not in launcher})


def kill_job(roots: list[subprocess.Popen]) -> None:
    """SIGKILL every process of the job at once (a second Ctrl-C)."""
    _send(process_tree(roots), signal.SIGKILL)
    for root in roots:
        try:
            root.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def alive(pids: Iterable[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and _not_zombie(pid)]


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = alive(left)
    return left
