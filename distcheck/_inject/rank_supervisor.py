"""distcheck's per-rank supervisor: runs one training process as its child and
records how it ended, even when it was killed with SIGKILL.

``distcheck launch`` gives the launcher (msrun, mpirun, or none) this file instead of
the training script: ``python rank_supervisor.py train.py ARGS`` (or ``... python
train.py ARGS``). It starts the real command with the same environment and open
files, passes on SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2, waits, writes
``ends/<host>-<child pid>.json`` in the run directory (with the job's id from
``DISTCHECK_JOB_ID``), and then ends the way its child
did (the same exit code, or the same signal; 1.5 s later if that was a failure), so the
launcher sees what it would have seen without it. msrun's scheduler process, which only runs the script up to
``init()``, is not supervised: the supervisor replaces itself with it.

Only the standard library is imported before the child ends, so the supervisor costs
a few megabytes and no start-up time.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
#: Seconds a supervisor waits after its child failed before it ends the same way.
HOLD_AFTER_FAILURE = 1.5


#: A Python interpreter's file name: python, python3, python3.11, python3.13t, python.exe.
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)*)?[dmt]?(\.exe)?")


def is_interpreter(word):
    """Whether a command's first word is a Python interpreter (``python``, ``python3.11``,
    ``/usr/bin/python3``, this Python) rather than the script to run with one
    (``train.py``, ``python_train.py``)."""
    if not word or word.endswith(".py"):
        return False
    if _PYTHON_NAME.fullmatch(os.path.basename(word)):
        return True
    path = word if os.sep in word else shutil.which(word)  # a bare name runs from PATH
    try:
        return path is not None and os.path.samefile(path, sys.executable)
    except OSError:  # no such file
        return False


def _command(argv):
    return list(argv) if is_interpreter(argv[0]) else [sys.executable, *argv]


def main(argv):
    if not argv:
        print("usage: rank_supervisor.py [python] SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    cmd = _command(argv)
    run_dir = os.environ.get("DISTCHECK_RUN_DIR")
    if not run_dir or os.environ.get("MS_ROLE") == "MS_SCHED":
        os.execv(cmd[0], cmd)
    child = subprocess.Popen(cmd, close_fds=False)

    def forward(signum, frame):
        try:
            child.send_signal(signum)
        except OSError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    code = child.wait()
    _record(run_dir, child.pid, code)
    if code != 0:
        # The launcher kills the other ranks as soon as it sees this one fail. Waiting a
        # moment lets their heartbeat threads write the rows of the steps they completed
        # (they do half a second after training pauses) before that happens.
        time.sleep(HOLD_AFTER_FAILURE)
    if code < 0:  # end by the same signal
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)
        return 128 - code
    return code


def _record(run_dir, pid, code):
    try:
        from distcheck.store.sidecars import ProcessEnd, write_end

        write_end(run_dir, ProcessEnd(socket.gethostname(), pid, code if code >= 0 else None,
                                      -code if code < 0 else None, time.time(),
                                      os.environ.get("DISTCHECK_JOB_ID", "").strip()))
    except Exception as exc:  # the training's own outcome matters more than this record
        print(f"distcheck: could not record how process {pid} ended: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
