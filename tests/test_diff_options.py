"""``distcheck diff`` options on synthetic dumps written through the real recorder:
``--map`` (parameters named differently), ``--rank-a``/``--rank-b`` (a rank other than
the lowest), runs recorded with different ``--every`` (compared on the steps both
recorded), and the first layer whose output differs (activation taps)."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Callable, Optional

import numpy as np
import pytest

from distcheck.recording import ParamInfo, ProbeOptions, Recorder
from distcheck.world import SingleWorld
from rules.series import LAYERS, healthy_batch, healthy_grads, healthy_params

TAPS = [("block1.relu", "relu"), ("block2.relu", "relu"), ("head.relu", "relu")]


def _write(path, size: int = 1, every: int = 1, names: Optional[list[str]] = None, steps: int = 12,
           params: Callable = lambda rank, s: healthy_params(s), acts: Optional[Callable] = None) -> None:
    """A ``size``-rank data-parallel run: rank r records ``params(r, step)``, the same
    gradients and losses, and its share of each step's batch; ``acts(step)`` the taps'."""
    infos = [ParamInfo(n, p.shape, p.dtype, p.trainable, p.has_grad)
             for n, p in zip(names or [p.name for p in LAYERS], LAYERS)]
    for rank in range(size):
        rec = Recorder.open(str(path), SingleWorld(rank, size), infos, {"parallel_mode": "data_parallel"},
                            ProbeOptions(flush_seconds=60, every=every), activations=TAPS if acts else ())
        rec.step_done(0, update=False)
        rec.record(0, params(rank, 0))
        for t in range(1, steps + 1):
            s = rec.step_done(t)
            x, y = healthy_batch(s)
            rec.record(s, params(rank, s), healthy_grads(s), loss=2.0 * np.exp(-s / 15),
                       batch=[x[rank::size], y[rank::size]],
                       activations=[np.asarray(a, np.float32) for a in acts(s)] if acts else None)
        rec.close()


def _diff(*args):
    proc = subprocess.run([sys.executable, "-m", "distcheck", "diff", *map(str, args), "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.startswith("{") else None), proc.stderr


def _codes(report) -> list[tuple]:
    return [(f["code"], f["step"], f["params"]) for f in report["findings"]]


def _nudged_from(step: int, rank: Optional[int] = None) -> Callable:
    def params(r, s):
        out = healthy_params(s)
        if s >= step and (rank is None or r == rank):
            out[2] = out[2] * np.float32(1.01)
        return out
    return params


def test_a_name_map_compares_parameters_named_differently(tmp_path):
    ported = ["encoder.w", "encoder.b", "classifier.w"]
    _write(tmp_path / "ref")
    _write(tmp_path / "port", names=ported)
    _write(tmp_path / "bad", names=ported, params=_nudged_from(5))
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "port")
    assert code == 1 and _codes(report)[0][0] == "diff_structure" and len(_codes(report)[0][2]) == 6
    names = tmp_path / "names.yaml"
    names.write_text("l1.weight: encoder.w\nl1.bias: encoder.b\nl2.weight: classifier.w\n")
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "port", "--map", names)
    assert code == 0 and report["findings"] == []
    assert "the same 3 parameter(s), shapes and dtypes" in report["notes"][0]["message"]
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "bad", "--map", names)
    assert code == 1 and _codes(report) == [("diff_param", 5, ["l2.weight"])]  # named as in the reference


def test_any_rank_of_either_run_can_be_compared(tmp_path):
    _write(tmp_path / "ref", size=2)
    _write(tmp_path / "run", size=2, params=_nudged_from(7, rank=1))  # rank 1 alone parts from step 7
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "run")
    assert code == 0 and report["findings"] == []  # rank 0 speaks by default
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "run", "--rank-b", "1")
    assert code == 1 and _codes(report) == [("diff_param", 7, ["l2.weight"])]
    assert "with rank 1 of" in report["notes"][0]["message"]
    code, report, _ = _diff(tmp_path / "run", tmp_path / "ref", "--rank-a", "1")
    assert code == 1 and _codes(report) == [("diff_param", 7, ["l2.weight"])]
    assert "rank 1 of" in report["notes"][0]["message"]
    code, report, err = _diff(tmp_path / "ref", tmp_path / "run", "--rank-b", "5")
    assert code == 2 and "no rank 5 (ranks found: [0, 1])" in err


def test_runs_recorded_with_different_every_are_compared_on_the_steps_both_recorded(tmp_path):
    _write(tmp_path / "ref", every=1)
    _write(tmp_path / "sparse", every=3)
    _write(tmp_path / "bad", every=3, params=_nudged_from(7))
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "sparse")
    assert code == 0 and report["findings"] == []
    assert "compared on the 5 both recorded" in report["notes"][0]["message"]  # steps 0, 3, 6, 9, 12
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "bad")
    assert code == 1 and _codes(report) == [("diff_param", 9, ["l2.weight"])]  # the first both recorded from 7


def _acts(changed: dict) -> Callable:
    """Tap statistics (saturated, zero, mean, absmax) of each step; ``changed``: tap
    index -> first step its mean output is 5% higher."""
    def acts(s):
        rows = []
        for i in range(len(TAPS)):
            mean = 0.5 + 0.1 * i + 0.01 * s
            if i in changed and s >= changed[i]:
                mean *= 1.05
            rows.append([0.4, 0.4, mean, 3.0 + i])
        return rows
    return acts


def test_the_first_layer_whose_output_differs_is_named_before_any_gradient(tmp_path):
    _write(tmp_path / "ref", acts=_acts({}))
    _write(tmp_path / "same", acts=_acts({}))
    # The second block's output differs from step 4, the head's too from step 4, the first never.
    _write(tmp_path / "run", acts=_acts({1: 4, 2: 4}))
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "same")
    assert code == 0 and report["findings"] == []
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "run")
    assert code == 1 and _codes(report) == [("diff_activation", 4, [])]
    f = report["findings"][0]
    assert f["detail"] == {"layer": "block2.relu", "layers": ["block2.relu", "head.relu"]}
    assert "before any gradient" in f["message"] and "the layers before it agree: block1.relu" in f["message"]


def test_a_forward_pass_that_agrees_where_the_gradients_part_is_said(tmp_path):
    _write(tmp_path / "ref", acts=_acts({}))
    _write(tmp_path / "run", acts=_acts({0: 6}), params=_nudged_from(3))  # weights part at 3, outputs at 6
    code, report, _ = _diff(tmp_path / "ref", tmp_path / "run")
    assert code == 1 and _codes(report) == [("diff_param", 3, ["l2.weight"])]
    note = [n["message"] for n in report["notes"] if n["code"] == "diff_activation"]
    assert note and note[0].startswith("The forward pass agrees at step 4")


@pytest.mark.parametrize("text", ["- a\n- b\n", "l1.weight: [x]\n"])
def test_a_bad_name_map_is_one_line(tmp_path, text):
    _write(tmp_path / "ref")
    names = tmp_path / "names.yaml"
    names.write_text(text)
    code, _, err = _diff(tmp_path / "ref", tmp_path / "ref", "--map", names)
    assert code == 2 and str(names) in err and len(err.strip().splitlines()) == 1
