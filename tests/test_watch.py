"""``distcheck watch``: rows, flags and the one-shot table, on real dumps (no MindSpore)."""
import dataclasses
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from distcheck.cli import main
from distcheck.recording import ParamInfo, ProbeOptions, Recorder
from distcheck.watch import render, snapshot
from distcheck.world import SingleWorld

PARAMS = [ParamInfo("w", (2,), "float32", True, True)]


def _rank(run_dir, rank, steps, size=3):
    """A rank that completed and recorded steps 0 .. steps-1; its dump is left open."""
    rec = Recorder.open(str(run_dir), SingleWorld(rank=rank, size=size), PARAMS, {}, ProbeOptions(flush_seconds=0))
    for step in range(steps):
        rec.record(rec.step_done(step, update=step > 0), [np.full(2, step, np.float32)])
    return rec


@pytest.fixture
def straggling(tmp_path):
    """Ranks 0 and 1 finished after step 19; rank 2 is still running, at step 2."""
    recs = [_rank(tmp_path, 0, 20), _rank(tmp_path, 1, 20), _rank(tmp_path, 2, 3)]
    recs[0].close()
    recs[1].close()
    yield tmp_path
    recs[2].close()


def test_rows_report_steps_and_statuses(straggling):
    rows = snapshot(str(straggling))
    assert [(r.rank, r.status, r.step, r.world_size) for r in rows] == [
        (0, "finished", 19, 3), (1, "finished", 19, 3), (2, "running", 2, 3)]
    assert all(r.age is not None and 0 <= r.age < 10 and not r.problem for r in rows)
    assert [r.running for r in rows] == [False, False, True]


def test_a_running_rank_far_behind_is_a_straggler(straggling):
    assert [r.flag for r in snapshot(str(straggling))] == ["", "", "straggler"]


def test_a_rank_within_the_margin_is_not_a_straggler(tmp_path):
    recs = [_rank(tmp_path, 0, 20), _rank(tmp_path, 1, 18)]  # 2 steps behind: max(2, 10% of 19) allows it
    try:
        assert [r.flag for r in snapshot(str(tmp_path))] == ["", ""]
    finally:
        for rec in recs:
            rec.close()


def test_stalled_then_silent_only_while_running(straggling):
    later = time.time() + 5
    assert [r.flag for r in snapshot(str(straggling), stall_seconds=1, now=later)] == ["", "", "stalled"]
    assert [r.flag for r in snapshot(str(straggling), now=time.time() + 20)] == ["", "", "silent"]


def test_rate_from_the_previous_snapshot(straggling):
    (_, _, first) = snapshot(str(straggling))
    assert first.since is not None
    before = dataclasses.replace(first, step=first.step - 4, since=first.since - 2.0, at=first.at - 2.5)
    (_, _, row) = snapshot(str(straggling), previous=[before])
    assert row.rate == pytest.approx(2.0)  # 4 steps between the two completions, 2 s apart
    finished = snapshot(str(straggling), previous=[dataclasses.replace(r, step=0) for r in snapshot(str(straggling))])
    assert finished[0].rate is None  # no rate for a rank that is no longer running


def test_render_has_a_row_per_rank(straggling):
    table = render(snapshot(str(straggling)), str(straggling))
    assert table.row_count == 3
    assert [c.header for c in table.columns] == ["rank", "status", "step", "steps/s", "phase", "last seen", "flag"]


def test_watch_once_prints_every_rank(straggling, capsys):
    assert main(["watch", str(straggling), "--once"]) == 0
    out = capsys.readouterr().out
    assert str(straggling) in out and "\x1b[" not in out  # plain text when not a terminal
    for rank, status, step in ((0, "finished", 19), (1, "finished", 19), (2, "running", 2)):
        assert re.search(rf"^\W*{rank}\W+{status}\W+{step}\W", out, re.M), out
    assert "straggler" in out


def test_not_a_terminal_prints_one_table_and_returns(straggling, capsys):
    assert main(["watch", str(straggling), "--interval", "0.1"]) == 0
    assert capsys.readouterr().out.count("distcheck watch") == 1


def test_missing_directory_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["watch", str(missing), "--once"]) == 2
    captured = capsys.readouterr()
    assert str(missing) in captured.out + captured.err and "does not exist" in captured.err


def test_directory_without_rank_files_exits_2(tmp_path, capsys):
    assert main(["watch", str(tmp_path), "--once"]) == 2
    assert f"no rank files (rank_NNNNN.h5) in {tmp_path} yet" in capsys.readouterr().err


def test_bad_interval_is_a_usage_error(tmp_path, capsys):
    assert main(["watch", str(tmp_path), "--interval", "0"]) == 2
    assert "--interval" in capsys.readouterr().err


def test_watch_does_not_import_mindspore():
    code = "import sys, distcheck.watch; assert 'mindspore' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
