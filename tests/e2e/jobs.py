"""Running the real example scripts under ``distcheck launch`` and reading the JSON report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")
DISTCHECK = [sys.executable, "-m", "distcheck"]


@dataclass
class Result:
    code: int
    report: dict
    stderr: str

    def findings(self, code: str) -> list[dict]:
        return [f for f in self.report["findings"] if f["code"] == code]

    def codes(self) -> list[str]:
        return [f["code"] for f in self.report["findings"]]


def _argv_env(out: str, script: str, script_args, n: int, launcher: str, options: tuple, env: dict):
    argv = [*DISTCHECK, "launch", "-n", str(n), "--launcher", launcher, "--out", out, "--format", "json",
            *options, "--", sys.executable, os.path.join(SCRIPTS, script), *script_args]
    env = {**os.environ, **(env or {})}
    env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), env.get("PATH", "")))
    # Faster cluster start-up on one machine (MindSpore's connection retry interval, seconds).
    env.setdefault("MS_RETRY_INTERVAL_LOWER", "1")
    env.setdefault("MS_RETRY_INTERVAL_UPPER", "2")
    return argv, env


def launch(out: str, script: str, *script_args: str, n: int = 3, launcher: str = "msrun",
           options: tuple = (), timeout: int = 300, env: dict = None) -> Result:
    argv, env = _argv_env(out, script, script_args, n, launcher, options, env)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=out)
    return _result(proc.returncode, proc.stdout, proc.stderr)


def start(out: str, script: str, *script_args: str, n: int = 3, launcher: str = "msrun",
          options: tuple = (), env: dict = None) -> subprocess.Popen:
    """``distcheck launch`` in the background; finish with :func:`finish`."""
    argv, env = _argv_env(out, script, script_args, n, launcher, options, env)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=out)


def finish(proc: subprocess.Popen, timeout: float) -> Result:
    stdout, stderr = proc.communicate(timeout=timeout)
    return _result(proc.returncode, stdout, stderr)


def _result(code: int, stdout: str, stderr: str) -> Result:
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report (exit {code}):\n{stdout[-3000:]}\n{stderr[-5000:]}") from None
    return Result(code, report, stderr)


def wait_for_steps(run_dir: str, ranks: int, step: int, timeout: float = 180) -> None:
    """Wait until every rank's progress file says it completed ``step``."""
    from distcheck.store.progress_file import read_progress

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [read_progress(run_dir, r) for r in range(ranks)]
        if all(rec is not None and rec.step >= step for rec in records):
            return
        time.sleep(0.2)
    raise AssertionError(f"the ranks did not reach step {step} in {timeout} s: {records}")


def only(result: Result, code: str) -> dict:
    found = result.findings(code)
    assert len(found) == 1, (code, result.report["findings"], result.stderr[-3000:])
    return found[0]
