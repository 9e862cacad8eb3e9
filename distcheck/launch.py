"""``distcheck launch``: run a job under msrun, mpirun or alone, with probes attached.

The training script is not changed. Every launched Python process gets
``distcheck/_inject`` on ``PYTHONPATH``; its ``sitecustomize`` hooks the import of
MindSpore and patches ``Model.train`` so that each call records into the run
directory (see :mod:`distcheck.mindspore.attach`). Options reach the probes as
``DISTCHECK_*`` environment variables.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

from distcheck.cli import EXIT_JOB_FAILED, UsageError, report
from distcheck.recorder import ENV_RUN_DIR, ProbeOptions

INJECT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_inject")


def launch(args: argparse.Namespace, config: dict) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("nothing to launch: give the training command after '--', "
                         "e.g. distcheck launch -n 2 -- python train.py")
    if args.nproc < 1:
        raise UsageError(f"-n must be at least 1, got {args.nproc}")
    if args.every < 1:
        raise UsageError(f"--every must be at least 1, got {args.every}")
    launcher = _pick_launcher(args.launcher, args.nproc)
    run_dir = os.path.abspath(args.out or _fresh_run_dir())
    os.makedirs(run_dir, exist_ok=True)
    print(f"distcheck: run directory {run_dir}", file=sys.stderr, flush=True)
    env = _job_env(args, run_dir)
    if launcher == "msrun":
        code = _run_msrun(args, cmd, run_dir, env)
    elif launcher == "mpirun":
        code = _run_mpirun(args, cmd, run_dir, env)
    else:
        code = _run_plain(cmd, env)
    if code != 0:
        print(f"distcheck: the job failed (exit code {code}); logs: {os.path.join(run_dir, 'logs')}",
              file=sys.stderr, flush=True)
    if args.no_analyze:
        return EXIT_JOB_FAILED if code != 0 else 0
    result = report([run_dir], config, args)
    print(f"distcheck: run directory {run_dir}", file=sys.stderr, flush=True)
    return EXIT_JOB_FAILED if code != 0 else result


# -- choosing and preparing ----------------------------------------------------------
def _pick_launcher(choice: str, nproc: int) -> str:
    if choice == "auto":
        if nproc == 1:
            return "none"
        choice = "msrun" if _tool("msrun") else "mpirun"
    if choice == "none" and nproc != 1:
        raise UsageError("--launcher none runs one process; use msrun or mpirun for -n > 1")
    if choice in ("msrun", "mpirun") and not _tool(choice):
        what = "MindSpore (pip install mindspore)" if choice == "msrun" else "an MPI (pip install mpich mpi4py)"
        raise UsageError(f"{choice} not found next to this Python or on PATH; install {what}")
    return choice


def _tool(name: str) -> Optional[str]:
    """A launcher from this Python's environment first, so that workers match it."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(local, os.X_OK):
        return local
    return shutil.which(name)


def _fresh_run_dir() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join("runs", stamp)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join("runs", f"{stamp}-{n}")
    return path


def _job_env(args: argparse.Namespace, run_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    steps = tuple(int(s) for s in args.full_steps.split(",") if s.strip()) if args.full_steps else ()
    options = ProbeOptions(every=args.every, full_steps=steps, fail_fast=args.fail_fast,
                           online_every=args.online_every, flush_seconds=args.flush_seconds,
                           activations=args.activations or env.get("DISTCHECK_ACTIVATIONS") == "1")
    env.update(options.to_env())
    env[ENV_RUN_DIR] = run_dir
    if args.config:
        env["DISTCHECK_CONFIG"] = os.path.abspath(args.config)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (INJECT_DIR, env.get("PYTHONPATH", "")) if p)
    # Workers must run this Python (the one that has distcheck), whatever PATH says.
    env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), env.get("PATH", "")))
    env.setdefault("GLOG_v", "3")
    return env


def _script_and_args(cmd: list[str]) -> list[str]:
    """msrun and mpirun's scheduler want ``script.py ARGS``: drop a leading ``python``."""
    if os.path.basename(cmd[0]).startswith("python"):
        rest = cmd[1:]
        while rest and rest[0].startswith("-"):
            if rest[0] in ("-m", "-c"):
                raise UsageError("msrun runs a script file: give 'python path/to/train.py ...', not -m or -c")
            rest = rest[1:]
        if not rest:
            raise UsageError("no script after python")
        return rest
    return cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- launchers -----------------------------------------------------------------------
def _run_plain(cmd: list[str], env: dict[str, str]) -> int:
    return _wait(_spawn(cmd, env))


def _run_msrun(args: argparse.Namespace, cmd: list[str], run_dir: str, env: dict[str, str]) -> int:
    script = _script_and_args(cmd)
    argv = [_tool("msrun"), f"--worker_num={args.nproc}", f"--local_worker_num={args.local_n or args.nproc}",
            f"--master_port={args.master_port or _free_port()}", f"--log_dir={os.path.join(run_dir, 'logs')}",
            "--join=True", "--cluster_time_out=120"]
    if args.master_addr:
        argv.append(f"--master_addr={args.master_addr}")
    if args.node_rank is not None:
        argv.append(f"--node_rank={args.node_rank}")
    argv += args.launcher_arg + script
    return _wait(_spawn(argv, env))


def _run_mpirun(args: argparse.Namespace, cmd: list[str], run_dir: str, env: dict[str, str]) -> int:
    """MindSpore's dynamic cluster with mpirun as the worker launcher.

    The MindSpore scheduler runs as a plain process beside ``mpirun -n N``; each
    worker takes its MindSpore node id from its MPI rank (set by the injected
    ``sitecustomize``), and the probes all-gather through mpi4py.
    """
    port = args.master_port or _free_port()
    logs = os.path.join(run_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    cluster = {"MS_SCHED_HOST": args.master_addr or "127.0.0.1", "MS_SCHED_PORT": str(port),
               "MS_WORKER_NUM": str(args.nproc)}
    sched_env = {**env, **cluster, "MS_ROLE": "MS_SCHED"}
    worker_env = {**env, **cluster, "MS_ROLE": "MS_WORKER", "DISTCHECK_COMM": "mpi"}
    python = cmd if os.path.basename(cmd[0]).startswith("python") else [sys.executable, *cmd]
    code = None
    with open(os.path.join(logs, "scheduler.log"), "w") as sched_log:
        scheduler = subprocess.Popen(python, env=sched_env, stdout=sched_log, stderr=subprocess.STDOUT)
        try:
            workers = _spawn([_tool("mpirun"), "-n", str(args.nproc), *args.launcher_arg, *python], worker_env)
            code = _wait(workers)
        finally:
            _stop(scheduler, grace=30 if code == 0 else 5)
    return code


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start the job with its stdout sent to our stderr: stdout carries only the report."""
    sys.stdout.flush()
    return subprocess.Popen(argv, env=env, stdout=sys.stderr.fileno())


def _wait(proc: subprocess.Popen) -> int:
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def _stop(proc: subprocess.Popen, grace: float) -> None:
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
