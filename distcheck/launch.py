"""``distcheck launch``: run a job under msrun, mpirun or alone, with probes attached.

The training script is not changed. Every launched Python process gets
``distcheck/_inject`` on ``PYTHONPATH``; its ``sitecustomize`` hooks the import of
MindSpore and patches ``Model.train`` so that each call records into the run
directory (see :mod:`distcheck.mindspore.attach`). Options reach the probes as
``DISTCHECK_*`` environment variables. Each training process runs under a small
supervisor (``_inject/rank_supervisor.py``) that records how it really ended.

While the job runs, launch watches for its end, for SIGTERM or SIGINT (then it stops
the whole job, see :mod:`distcheck.processes`) and, with ``--stall-timeout``, for a
job in which no rank completes a step. Whatever ended the job, the run is analysed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Optional

from distcheck._inject.rank_supervisor import is_interpreter
from distcheck.exits import ExitCode, UsageError
from distcheck.recording import ENV_RUN_DIR, ProbeOptions
from distcheck.recording.options import job_id_from_env, parse_size
from distcheck.recording.rendezvous import READY_DIR
from distcheck.replicas import Declaration, DeclarationError
from distcheck.store import schema
from distcheck.store.progress_file import PROGRESS_DIR
from distcheck.store.sidecars import job_path, read_job, signal_name, write_json

INJECT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_inject")
SUPERVISOR = os.path.join(INJECT_DIR, "rank_supervisor.py")

#: Seconds the ranks get to close their dumps after SIGTERM before SIGKILL.
STOP_GRACE = 30.0
#: Seconds between two looks at the ranks' progress (with --stall-timeout).
POLL = 2.0


def log(message: str) -> None:
    print(f"distcheck: {message}", file=sys.stderr, flush=True)


def launch(args: argparse.Namespace, config: dict) -> int:
    from distcheck.report import write_report

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
    if args.stall_timeout is not None and args.stall_timeout <= 0:
        raise UsageError(f"--stall-timeout must be positive, got {args.stall_timeout}")
    launcher = _pick_launcher(args.launcher, args.nproc)
    run_dir = os.path.abspath(args.out or _fresh_run_dir())
    job_id = _job_id(args)
    env = _job_env(args, run_dir, config, job_id)
    _claim_run_dir(run_dir, args.overwrite)
    os.makedirs(run_dir, exist_ok=True)
    log(f"run directory {run_dir}")
    job = {"job_id": job_id, "command": cmd, "launcher": launcher, "nproc": args.nproc, "start_time": time.time(),
           "stall_timeout": args.stall_timeout, "host": socket.gethostname()}
    if args.output:
        job["report"] = os.path.abspath(args.output)
    write_json(job_path(run_dir), job)
    if launcher == "msrun":
        procs = _start_msrun(args, cmd, run_dir, env)
    elif launcher == "mpirun":
        procs = _start_mpirun(args, cmd, run_dir, env)
    else:
        procs = [_spawn([sys.executable, SUPERVISOR, *cmd], env)]
    code, stopped_by, stop_time = _supervise(procs, run_dir, args.stall_timeout)
    for forwarder in _FORWARDERS:  # the job's last lines before the report
        forwarder.join(timeout=5)
    job.update(end_time=time.time(), exit_code=code, stopped_by=stopped_by, stop_time=stop_time)
    write_json(job_path(run_dir), job)
    if stopped_by is None and code != 0:
        log(f"the job failed (exit code {code}); logs: {os.path.join(run_dir, 'logs')}")
    if not _any_dump(run_dir):
        log(_nothing_recorded(cmd, args.nproc, launcher, code, run_dir))
        return ExitCode.INPUT
    if args.no_analyze:
        result = ExitCode.OK
    else:
        result = write_report([run_dir], config, args.format, args.output, args.fail_on)
    if stopped_by in ("SIGTERM", "SIGINT"):
        return ExitCode.TERMINATED if stopped_by == "SIGTERM" else ExitCode.INTERRUPTED
    return ExitCode.JOB_FAILED if code != 0 or stopped_by else result


def _any_dump(run_dir: str) -> bool:
    from distcheck.store.schema import FILE_PATTERN

    return any(FILE_PATTERN.match(name) for name in os.listdir(run_dir))


def _nothing_recorded(cmd: list[str], nproc: int, launcher: str, code: int, run_dir: str) -> str:
    """One message for a job in which no rank recorded anything, saying why and what to do."""
    logs = f" (logs: {os.path.join(run_dir, 'logs')})" if launcher != "none" else ""
    under = f" under {launcher}" if launcher != "none" else ""
    return (f"no rank recorded anything. The job `{' '.join(cmd)}` ran on {nproc} rank(s){under} and exited "
            f"with code {code}, but no Model.train or Model.fit call was seen, so there is nothing to analyse"
            f"{logs}. If the script trains with its own loop, record it "
            "with the Probe:\n"
            "    from distcheck.mindspore import Probe\n"
            "    probe = Probe(net)                 # records into $DISTCHECK_RUN_DIR\n"
            "    update = probe.wrap(optimizer)     # call update(grads) in your train step, after the reducer\n"
            "    probe.begin()                      # before the first step\n"
            "    probe.step_end(step, loss, batch=(x, y))   # after each step\n"
            "    probe.close()                      # after the last step\n"
            "See 'Custom training loops' in the README.")


# -- watching the job ------------------------------------------------------------------
def _supervise(procs: list[subprocess.Popen], run_dir: str,
               stall_timeout: Optional[float]) -> tuple[int, Optional[str], Optional[float]]:
    """Wait for the job. Returns the launcher's exit code, and why and when launch
    stopped the job (None, None if it ended by itself)."""
    from distcheck.processes import kill_job, stop_job

    main = procs[-1]  # the launcher whose exit code is the job's
    requests: list[int] = []

    def on_signal(signum, frame):
        requests.append(signum)
        if len(requests) > 1 and signum == signal.SIGINT:
            log("second interrupt: killing the job now")
            kill_job(procs)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stall = _StallWatch(run_dir, stall_timeout) if stall_timeout else None
        while True:
            try:
                code = main.wait(timeout=POLL if stall else 0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if requests:
                name = signal_name(requests[0])
                log(f"{name} received: stopping the job (every rank closes its dump; at most {STOP_GRACE:g} s)")
                stopped = time.time()
                stop_job(procs, grace=STOP_GRACE)
                return main.wait(), name, stopped
            if stall is not None and stall.stalled():
                log(stall.describe() + "; stopping the job")
                stopped = time.time()
                stop_job(procs, grace=STOP_GRACE)
                return main.wait(), "stall_timeout", stopped
        for proc in procs[:-1]:  # mpirun's scheduler: give it time to leave on its own
            _finish(proc, grace=30 if code == 0 else 5)
        return code, None, None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _StallWatch:
    """No rank has completed a step for ``timeout`` seconds, as their heartbeats say."""

    def __init__(self, run_dir: str, timeout: float) -> None:
        self.run_dir, self.timeout = run_dir, timeout
        self.latest: tuple[float, Optional[int], int] = (0.0, None, -1)  # (since, rank, step)

    def stalled(self) -> bool:
        """The clock starts at the first heartbeat: the launcher's own start-up is not counted."""
        from distcheck.store.live import progress_of_run

        latest = self.latest
        for rank, beat in progress_of_run(self.run_dir).items():
            if beat is not None and beat.since > latest[0]:
                latest = (beat.since, rank, beat.step)
        self.latest = latest
        return latest[1] is not None and time.time() - latest[0] > self.timeout

    def describe(self) -> str:
        since, rank, step = self.latest
        last = f"the last was rank {rank}'s step {step}, " if rank is not None else ""
        return (f"no rank has completed a step for {time.time() - since:.0f} s ({last}--stall-timeout "
                f"{self.timeout:g} s)")


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


def _job_id(args: argparse.Namespace) -> str:
    """The id every file of this job carries: ``DISTCHECK_JOB_ID`` if the user set one;
    for one node of a multi-node job, one that every node derives alike from the
    scheduler's address and port and N (so the nodes' directories analyse as one job);
    else a new random one."""
    given = job_id_from_env()
    if given:
        return given
    if args.local_n and args.local_n < args.nproc and args.master_port:
        return f"multinode-{args.master_addr or '127.0.0.1'}-{args.master_port}-{args.nproc}"
    return uuid.uuid4().hex


#: Matches the files a run leaves in ``progress/``.
_PROGRESS_FILE = re.compile(r"^rank_\d{5}\.bin$")
#: Directories of a run directory that only distcheck and its launchers write.
_OWN_DIRS = (READY_DIR, schema.ENDS_DIR, "logs")


def _run_files(run_dir: str) -> list[str]:
    """distcheck's own files and directories in ``run_dir``, left by an earlier job."""
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:  # no directory yet (or not one: makedirs will say so)
        return []
    found = [n for n in names if schema.FILE_PATTERN.match(n) or n == schema.JOB_FILE
             or (n in _OWN_DIRS and os.path.isdir(os.path.join(run_dir, n)))]
    progress = os.path.join(run_dir, PROGRESS_DIR)
    if os.path.isdir(progress) and any(_PROGRESS_FILE.match(n) for n in os.listdir(progress)):
        found.append(PROGRESS_DIR)
    return found


def _claim_run_dir(run_dir: str, overwrite: bool) -> None:
    """Refuse a run directory that holds an earlier job's files (their dumps, ready
    files and process ends would be read as this job's); with ``overwrite``, remove
    those files, and only those, first."""
    found = _run_files(run_dir)
    if not found:
        return
    if not overwrite:
        names = [n + "/" if os.path.isdir(os.path.join(run_dir, n)) else n for n in found]
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise UsageError(f"{run_dir} already holds a run ({shown}): give --out a fresh directory, or add "
                         "--overwrite to remove that run's files first")
    report = read_job(run_dir).get("report")
    for name in found:
        path = os.path.join(run_dir, name)
        if name == PROGRESS_DIR:
            for entry in os.listdir(path):
                if _PROGRESS_FILE.match(entry):
                    os.unlink(os.path.join(path, entry))
            _remove_if_empty(path)
        elif name in _OWN_DIRS:
            shutil.rmtree(path)
        else:
            os.unlink(path)
    if isinstance(report, str) and os.path.isfile(report) and \
            os.path.commonpath([os.path.abspath(report), run_dir]) == run_dir:
        os.unlink(report)  # the earlier job's report, written inside its run directory
    log(f"--overwrite: removed the earlier run's files from {run_dir} ({', '.join(found)})")


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:  # something else lives there: keep it
        pass


def _fresh_run_dir() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join("runs", stamp)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join("runs", f"{stamp}-{n}")
    return path


def _labels(setting) -> str:
    """The config's ``labels`` (null, "none" or an index) as the probes' option."""
    return "auto" if setting is None else str(setting)


def _job_env(args: argparse.Namespace, run_dir: str, config: dict, job_id: str) -> dict[str, str]:
    env = dict(os.environ)
    steps = tuple(int(s) for s in args.full_steps.split(",") if s.strip()) if args.full_steps else ()
    stall_seconds = ProbeOptions.stall_seconds
    if args.update_norm_every < 1:
        raise UsageError("--update-norm-every: give 1 or more (1: every parameter at every recorded step)")
    if args.stall_timeout:  # every rank has kept its stack by the time the job is stopped
        stall_seconds = min(stall_seconds, max(0.5, args.stall_timeout / 3))
    options = ProbeOptions(every=args.every, full_steps=steps, fail_fast=args.fail_fast,
                           online_every=args.online_every, flush_seconds=args.flush_seconds,
                           activations=args.activations or env.get("DISTCHECK_ACTIVATIONS") == "1",
                           stall_seconds=stall_seconds, strict=args.strict,
                           local_world=args.local_n or args.nproc, labels=_labels(config.get("labels")),
                           grad_copy_limit=_grad_copy_limit(args.grad_copy_limit),
                           update_norm_every=args.update_norm_every, job_id=job_id,
                           perturb=getattr(args, "perturb", False))
    declared = Declaration.parse(config.get("replica_groups"))
    if declared is not None:
        try:
            declared.check_ranks(args.nproc)
        except DeclarationError as exc:
            raise UsageError(f"{args.config}: {exc}") from None
        options = dataclasses.replace(options, replica_groups=json.dumps(declared.to_json()))
    env.update(options.to_env())
    env[ENV_RUN_DIR] = run_dir
    if args.config:
        env["DISTCHECK_CONFIG"] = os.path.abspath(args.config)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (INJECT_DIR, env.get("PYTHONPATH", "")) if p)
    # Workers must run this Python (the one that has distcheck), whatever PATH says.
    env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), env.get("PATH", "")))
    env.setdefault("GLOG_v", "3")
    return env


def _grad_copy_limit(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"--grad-copy-limit: {exc}") from None


def _script_and_args(cmd: list[str]) -> list[str]:
    """msrun wants ``script.py ARGS``: drop a leading ``python`` and its options."""
    if is_interpreter(cmd[0]):
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
def _start_msrun(args: argparse.Namespace, cmd: list[str], run_dir: str, env: dict[str, str]) -> list[subprocess.Popen]:
    script = _script_and_args(cmd)
    argv = [_tool("msrun"), f"--worker_num={args.nproc}", f"--local_worker_num={args.local_n or args.nproc}",
            f"--master_port={args.master_port or _free_port()}", f"--log_dir={os.path.join(run_dir, 'logs')}",
            "--join=True", "--cluster_time_out=120"]
    if args.master_addr:
        argv.append(f"--master_addr={args.master_addr}")
    if args.node_rank is not None:
        argv.append(f"--node_rank={args.node_rank}")
    argv += [*args.launcher_arg, SUPERVISOR, *script]
    return [_spawn(argv, env)]


def _start_mpirun(args: argparse.Namespace, cmd: list[str], run_dir: str, env: dict[str, str]) -> list[subprocess.Popen]:
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
    python = cmd if is_interpreter(cmd[0]) else [sys.executable, *cmd]
    with open(os.path.join(logs, "scheduler.log"), "w") as sched_log:
        scheduler = subprocess.Popen(python, env=sched_env, stdout=sched_log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
    workers = _spawn([_tool("mpirun"), "-n", str(args.nproc), *args.launcher_arg, sys.executable, SUPERVISOR,
                      *python], worker_env)
    return [scheduler, workers]


#: MindSpore's own INFO and DEBUG log lines, e.g. "[INFO] DISTRIBUTED(7090,7f6a...,python):...".
_FORWARDERS: list[threading.Thread] = []
FRAMEWORK_CHATTER = re.compile(rb"^\[(INFO|DEBUG)\] [A-Z_]+\(\d+,")


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start the job with its stdout sent to our stderr: stdout carries only the report.
    Unless the user set ``GLOG_v`` themselves, the framework's INFO and DEBUG lines are
    left out of the terminal (the per-rank log files keep them). A session of its own
    keeps a Ctrl-C in the terminal from reaching it directly: launch stops it in order
    instead."""
    sys.stdout.flush()
    if "GLOG_v" in os.environ:
        return subprocess.Popen(argv, env=env, stdout=sys.stderr.fileno(), start_new_session=True)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    forwarder = threading.Thread(target=_forward, args=(proc.stdout,), name="distcheck-job-output", daemon=True)
    forwarder.start()
    _FORWARDERS.append(forwarder)
    return proc


def _forward(stream) -> None:
    """Copy the job's output to our stderr, line by line, without the framework's chatter."""
    out = sys.stderr.buffer
    for line in iter(stream.readline, b""):
        if not FRAMEWORK_CHATTER.match(line):
            out.write(line)
            out.flush()


def _finish(proc: subprocess.Popen, grace: float) -> None:
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
