"""`distcheck diff` between real dumps that part at a known step (and between equal ones),
and `distcheck show`'s listing and CSV export."""
import csv
import io
import json
import subprocess
import sys

import numpy as np

from rules.series import healthy_params, write
from synthetic import make_run


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "distcheck", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def test_diff_finds_the_step_and_parameter_where_two_runs_part(tmp_path):
    def nudged(step):
        params = healthy_params(step)
        if step >= 23:
            params[2] = params[2] * np.float32(1.01)
        return params

    for name, params in (("a", healthy_params), ("b", healthy_params), ("c", nudged)):
        (tmp_path / name).mkdir()
        write(str(tmp_path / name), params=params)
    code, out, _ = _cli("diff", tmp_path / "a", tmp_path / "b", "--format", "json")
    assert code == 0 and json.loads(out)["findings"] == []
    code, out, _ = _cli("diff", tmp_path / "a", tmp_path / "c", "--format", "json")
    findings = [(f["code"], f["step"], f["params"]) for f in json.loads(out)["findings"]]
    assert code == 1 and findings == [("diff_param", 23, ["l2.weight"])]
    code, out, _ = _cli("diff", tmp_path / "a", tmp_path / "c", "--rtol", "0.05")  # within 5%
    assert code == 0 and out.startswith("PASS")
    code, out, _ = _cli("diff", tmp_path / "a", tmp_path / "c", "--format", "junit")
    assert code == 1 and 'type="diff_param"' in out


def test_diff_ignores_update_norms_one_run_did_not_measure(tmp_path, monkeypatch):
    from distcheck.recording import update_norms

    (tmp_path / "all").mkdir()
    (tmp_path / "turns").mkdir()
    write(str(tmp_path / "all"))  # every parameter under 1 MiB: every update measured
    monkeypatch.setattr(update_norms, "TURN_BYTES", 256)  # the two weights take turns, one step in two
    write(str(tmp_path / "turns"))
    code, out, _ = _cli("diff", tmp_path / "all", tmp_path / "turns", "--format", "json")
    assert code == 0 and json.loads(out)["findings"] == []
    code, out, _ = _cli("show", tmp_path / "turns", "--series", "param:l1.weight", "--stat", "delta_l2")
    norms = [row["rank_0"] for row in csv.DictReader(io.StringIO(out))]
    assert [bool(v) for v in norms[1:9]] == [False, True] * 4


def test_diff_of_a_missing_run_is_an_input_error(tmp_path):
    make_run(str(tmp_path / "a"), "none")
    code, _, err = _cli("diff", tmp_path / "a", tmp_path / "nowhere")
    assert code == 2 and "no such run directory" in err


def test_show_lists_ranks_parameters_and_groups_and_exports_csv(tmp_path):
    make_run(str(tmp_path), "nudge")
    code, out, _ = _cli("show", tmp_path)
    assert code == 0 and "3 of 3 rank(s)" in out and "dense2.weight  [2, 8] float32" in out
    assert "replica group [0..2] (data parallel)" in out and "finished" in out
    code, out, _ = _cli("show", tmp_path, "--series", "loss")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["step", "rank_0", "rank_1", "rank_2"] and len(rows) == 13  # steps 1..12 have a loss
    code, out, _ = _cli("show", tmp_path, "--series", "param:dense2.weight", "--stat", "delta_l2")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[1][0] == "0" and rows[1][1] == ""  # no update norm at step 0
    assert float(rows[6][3]) != float(rows[6][1])  # the nudge on rank 2 at step 5
    code, _, err = _cli("show", tmp_path, "--series", "param:nothing")
    assert code == 2 and "no parameter 'nothing'" in err
