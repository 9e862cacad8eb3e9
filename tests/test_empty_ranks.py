"""Runs where a rank recorded no step (its probe failed at set-up), or only step 0 (it
died right after), or where no rank recorded anything: every report format, ``show`` and
``diff`` say so sensibly, without a traceback."""
import csv
import io
import json
import os
import xml.etree.ElementTree as ET

import pytest

from distcheck.cli import main
from distcheck.recording import ProbeOptions, Recorder
from distcheck.world import SingleWorld
from rules.series import LAYERS, healthy_batch, healthy_grads, healthy_params
from synthetic import _die

FORMATS = ("text", "json", "junit", "markdown", "html")
STEPS = 12

# scenario -> how each rank's recording went: "full" (STEPS steps, finished), "step0" (step 0,
# then killed without warning), "none" (the probe failed at set-up: an empty dump saying why)
SCENARIOS = {
    "rank 2 recorded nothing": ["full", "full", "none"],
    "rank 0 recorded nothing": ["none", "full", "full"],
    "rank 2 recorded only step 0": ["full", "full", "step0"],
    "no rank recorded anything": ["none", "none", "none"],
    "one device recorded nothing": ["none"],
    "one device recorded only step 0": ["step0"],
}


def make_ranks(path: str, plans: list[str], params=healthy_params) -> None:
    """One dump per rank, recorded as ``plans`` say, each through the real recorder."""
    size = len(plans)
    meta = {"parallel_mode": "data_parallel" if size > 1 else "stand_alone"}
    options = ProbeOptions(flush_seconds=60)
    for rank, plan in enumerate(plans):
        world = SingleWorld(rank, size)
        if plan == "none":
            Recorder.stopped(path, world, LAYERS, meta, options, "cannot set up its communication")
            continue
        rec = Recorder.open(path, world, LAYERS, meta, options)
        rec.step_done(0, update=False)
        rec.record(0, params(0))
        if plan == "step0":
            _die(rec)
            continue
        for step in range(1, STEPS + 1):
            rec.step_done(step)
            rec.record(step, params(step), healthy_grads(step), loss=2.0 / step,
                       batch=healthy_batch(1000 * rank + step))  # each rank its own shard
        rec.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, plans in {**SCENARIOS, "healthy": ["full", "full", "full"], "healthy one device": ["full"]}.items():
        path = str(base / name.replace(" ", "_"))
        make_ranks(path, plans)
        out[name] = path
    out["parted"] = str(base / "parted")
    make_ranks(out["parted"], ["full", "full", "full"], params=_parted)
    return out


def _parted(step: int) -> list:
    """Healthy parameters, but l2.weight 1% larger from step 5 on."""
    params = healthy_params(step)
    if step >= 5:
        params[2] = params[2] * 1.01
    return params


def _run(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main([*map(str, argv)])
    return code, capsys.readouterr().out


def _reports(capsys, tmp_path, run_dir, command="analyze", *extra) -> tuple[dict, dict]:
    """Every format's report of ``run_dir`` (a traceback fails the test), and exit codes."""
    texts, codes = {}, {}
    for fmt in FORMATS:
        out = tmp_path / f"report.{fmt}"
        codes[fmt] = main([command, *map(str, extra), str(run_dir), "--format", fmt, "--output", str(out)])
        texts[fmt] = out.read_text()
    capsys.readouterr()
    return texts, codes


def _check_formats(texts: dict, report: dict) -> None:
    import jsonschema

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "report.schema.json")) as fh:
        jsonschema.validate(report, json.load(fh))
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    suite = ET.fromstring(texts["junit"].split("\n", 1)[1]).find("testsuite")
    assert int(suite.get("failures")) == len(errors)
    assert texts["html"].startswith("<!DOCTYPE html>") and texts["html"].rstrip().endswith("</html>")
    for f in report["findings"]:
        assert f"`{f['code']}`" in texts["markdown"] and f["code"] in texts["html"] and f["code"] in texts["text"]
    first = texts["text"].splitlines()[0]
    assert texts["markdown"].startswith(f"### distcheck: {first}")


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. matplotlib drawing an empty plot
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_format_of_a_run_with_ranks_that_recorded_little(capsys, tmp_path, runs, scenario):
    plans = SCENARIOS[scenario]
    texts, codes = _reports(capsys, tmp_path, runs[scenario])
    report = json.loads(texts["json"])
    _check_formats(texts, report)
    findings = {(f["code"], tuple(f["ranks"])) for f in report["findings"]}
    empty = tuple(r for r, p in enumerate(plans) if p == "none")
    died = tuple(r for r, p in enumerate(plans) if p == "step0")
    # a probe that failed at set-up is a warning on that rank; its training was not blamed
    assert {(code, ranks) for code, ranks in findings if code == "probe_failed"} == {
        ("probe_failed", (r,)) for r in empty}
    stopped = [f for f in report["findings"] if f["code"] in ("rank_stopped", "rank_stalled")]
    if died and len(plans) > 1:
        assert [(f["code"], f["step"], f["ranks"]) for f in stopped] == [("rank_stopped", 0, list(died))]
    elif not died:
        assert stopped == []
    verdict = texts["text"].splitlines()[0]
    if all(p == "none" for p in plans):
        assert verdict.startswith("NO DATA: no rank recorded a step")
        assert "no step" in texts["html"] and "steps 0.." not in texts["text"]
    elif not died:
        assert verdict.startswith("PASS with warnings") and codes["text"] == 0
    assert "every replica agreed" not in texts["text"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_show_lists_and_exports_a_run_with_ranks_that_recorded_little(capsys, runs, scenario):
    plans = SCENARIOS[scenario]
    code, listing = _run(capsys, "show", runs[scenario])
    assert code == 0
    for rank, plan in enumerate(plans):
        line = next(l for l in listing.splitlines() if l.strip().startswith(f"{rank} "))
        assert ("no steps" in line) == (plan == "none") and ("steps 0..0" in line) == (plan == "step0")
    for series in ("loss", "grad_norm", "param:l1.weight"):
        code, text = _run(capsys, "show", runs[scenario], "--series", series)
        rows = list(csv.reader(io.StringIO(text)))
        assert code == 0 and rows[0] == ["step", *(f"rank_{r}" for r in range(len(plans)))]
        if all(p != "full" for p in plans) and series != "param:l1.weight":
            assert rows[1:] == []


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_diff_against_a_healthy_run_compares_what_was_recorded(capsys, tmp_path, runs, scenario):
    plans = SCENARIOS[scenario]
    healthy = runs["healthy" if len(plans) > 1 else "healthy one device"]
    for a, b in ((runs[scenario], healthy), (healthy, runs[scenario])):
        texts, codes = {}, {}
        for fmt in FORMATS:
            out = tmp_path / f"diff.{fmt}"
            codes[fmt] = main(["diff", a, b, "--format", fmt, "--output", str(out)])
            texts[fmt] = out.read_text()
        capsys.readouterr()
        report = json.loads(texts["json"])
        _check_formats(texts, report)
        verdict = texts["text"].splitlines()[0]
        if "none" in plans and len(set(plans)) == 1:  # nothing recorded: nothing compared
            assert verdict.startswith("NO DATA: no rank of") and "nothing was compared" in verdict
        else:  # the same healthy steps: they agree, whichever rank holds them
            assert verdict.startswith("PASS: the runs agree") and report["findings"] == []
        if "full" in plans:
            assert "steps 0..12" in texts["text"].splitlines()[1].split("against")[0 if a == runs[scenario] else 1]
    if "full" in plans and len(plans) > 1:  # and a run that parts from it is told apart
        code, out = _run(capsys, "diff", runs[scenario], runs["parted"], "--format", "json")
        assert code == 1 and [(f["code"], f["step"]) for f in json.loads(out)["findings"]] == [("diff_param", 5)]
        assert "..None" not in texts["text"]



def test_a_one_device_run_is_described_as_one_device(capsys, tmp_path, runs):
    """No replicas on one device: the reports say what was checked, not that replicas agreed."""
    texts, codes = _reports(capsys, tmp_path, runs["healthy one device"])
    report = json.loads(texts["json"])
    assert report["findings"] == [] and codes["text"] == 0
    verdict = texts["text"].splitlines()[0]
    assert verdict.startswith("PASS: one device, so no replicas to compare") and "replica" not in texts["text"].replace(
        "no replicas to compare", "")
    assert texts["markdown"].startswith(f"### distcheck: {verdict}") and "replica" not in texts["html"].replace(
        "no replicas to compare", "")
    assert not any(n["code"] == "replica_groups" for n in report["notes"])
    cases = [c.get("name") for c in ET.fromstring(texts["junit"].split("\n", 1)[1]).iter("testcase")]
    assert "loss_diverging" in cases and "init_mismatch" not in cases and "rank_stopped" in cases
    # three ranks: the replicas are compared, and the reports say so
    texts, _ = _reports(capsys, tmp_path, runs["healthy"])
    assert texts["text"].startswith("PASS: every replica agreed at every recorded step")
    cases = [c.get("name") for c in ET.fromstring(texts["junit"].split("\n", 1)[1]).iter("testcase")]
    assert "init_mismatch" in cases
