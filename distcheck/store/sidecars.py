"""Small JSON records beside the dumps: how the job ended, how each process ended.

- ``job.json``, written by ``distcheck launch``: the job's id, the command, the
  launcher, and, when the job is over, its exit code and whether it was stopped from
  outside (a signal to ``distcheck launch``) or by ``--stall-timeout``.
- ``ends/<host>-<pid>.json``, written by the supervisor that runs each training
  process: the process's real exit code or signal, observed from outside, so it is
  known even after SIGKILL. ``<pid>`` is the training process, as in its dump's
  ``pid`` attribute.

Both carry the job's id (``job_id``, as each dump's attribute of that name; "" when
the job had none), so that files of two jobs are never read as one.

Files are replaced atomically; a missing or unreadable record reads as None.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Optional

from distcheck.store import schema


@dataclass(frozen=True)
class ProcessEnd:
    """How one training process ended: ``exit_code`` if it exited, ``signal`` if a
    signal killed it (then ``exit_code`` is None)."""

    hostname: str
    pid: int
    exit_code: Optional[int]
    signal: Optional[int]
    time: float
    job_id: str = ""


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def write_json(path: str, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (a reader sees the old file or the new one)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_end(run_dir: str, end: ProcessEnd) -> None:
    write_json(os.path.join(run_dir, schema.ENDS_DIR, schema.end_file_name(end.hostname, end.pid)), asdict(end))


def read_end(run_dir: str, hostname: str, pid: int) -> Optional[ProcessEnd]:
    data = read_json(os.path.join(run_dir, schema.ENDS_DIR, schema.end_file_name(hostname, pid)))
    if data is None:
        return None
    try:
        return ProcessEnd(str(data["hostname"]), int(data["pid"]), _optional_int(data.get("exit_code")),
                          _optional_int(data.get("signal")), float(data["time"]), str(data.get("job_id") or ""))
    except (KeyError, TypeError, ValueError):
        return None


def job_path(run_dir: str) -> str:
    return os.path.join(run_dir, schema.JOB_FILE)


def read_job(run_dir: str) -> dict[str, Any]:
    return read_json(job_path(run_dir)) or {}


def job_ids_beside(run_dir: str) -> dict[str, str]:
    """The job id of ``job.json`` and of each ``ends/`` record in ``run_dir`` that has
    one, by path."""
    paths = [job_path(run_dir)]
    ends = os.path.join(run_dir, schema.ENDS_DIR)
    try:
        paths += [os.path.join(ends, n) for n in sorted(os.listdir(ends))
                  if n.endswith(".json") and not n.startswith(".tmp-")]
    except OSError:
        pass
    found = {}
    for path in paths:
        job_id = str((read_json(path) or {}).get("job_id") or "")
        if job_id:
            found[path] = job_id
    return found


def _optional_int(value) -> Optional[int]:
    return None if value is None else int(value)
