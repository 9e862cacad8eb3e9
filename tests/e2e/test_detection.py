"""The detection benchmark's quick subset: real 3-rank msrun jobs with planted faults,
scored from distcheck's reports. Fails when a rate drops below what was measured."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "scripts", "bench", "detection.py")


def test_quick_subset_finds_and_places_every_fault_and_is_quiet_on_a_healthy_run(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, BENCH, "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=900, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "detection.json", encoding="utf-8") as f:
        result = json.load(f)
    summary = result["summary"]
    failed = [t["result"].get("error") for t in result["trials"] if "error" in t["result"]]
    assert not failed, failed
    # Measured: 6 of 6 faults found, 6 of 6 placed exactly (rank, step, parameters), and
    # the healthy run quiet.
    assert summary["fault_trials"] == 6 and summary["quiet_trials"] == 1, summary
    assert summary["detected"] == 6, (summary, proc.stderr[-3000:])
    assert summary["placed"] == 6, (summary, proc.stderr[-3000:])
    assert summary["false_alarm_runs"] == 0, (summary, proc.stderr[-3000:])
    # The flipped exponent bit is told from a software cause.
    flip = next(t for t in result["trials"] if t["fault"] == "bitflip_exp")
    assert flip["result"]["kind_right"] is True, flip["result"]
    assert "| bitflip_exp | mlp | 1/1 (100%) | 1/1 (100%) |" in (out / "detection.md").read_text()
