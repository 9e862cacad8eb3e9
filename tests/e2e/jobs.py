"""Running the real example scripts under ``distcheck launch`` and reading the JSON report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


def launch(out: str, script: str, *script_args: str, n: int = 3, launcher: str = "msrun",
           options: tuple = (), timeout: int = 300, env: dict = None) -> Result:
    argv = [*DISTCHECK, "launch", "-n", str(n), "--launcher", launcher, "--out", out, "--format", "json",
            *options, "--", sys.executable, os.path.join(SCRIPTS, script), *script_args]
    env = {**os.environ, **(env or {})}
    env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), env.get("PATH", "")))
    # Faster cluster start-up on one machine (MindSpore's connection retry interval, seconds).
    env.setdefault("MS_RETRY_INTERVAL_LOWER", "1")
    env.setdefault("MS_RETRY_INTERVAL_UPPER", "2")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=out)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}") from None
    return Result(proc.returncode, report, proc.stderr)


def only(result: Result, code: str) -> dict:
    found = result.findings(code)
    assert len(found) == 1, (code, result.report["findings"], result.stderr[-3000:])
    return found[0]
