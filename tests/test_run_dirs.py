"""One job per run directory: job ids in every file, a used directory refused by
``launch``, files of two jobs refused by ``analyze``, stale ready files ignored, and
which first word of a command is a Python interpreter."""
import json
import os
import shutil
import subprocess
import sys
import types

import h5py
import pytest

from distcheck._inject import rank_supervisor
from distcheck._inject.rank_supervisor import is_interpreter
from distcheck.analysis.run import MixedJobsError, load_run
from distcheck.exits import UsageError
from distcheck.launch import _claim_run_dir, _job_id, _script_and_args
from distcheck.recording import ProbeOptions, rendezvous
from distcheck.store.reader import DumpReader
from distcheck.store.sidecars import ProcessEnd, read_end, read_job, write_end, write_json
from synthetic import make_run


def _analyze(*dirs):
    proc = subprocess.run([sys.executable, "-m", "distcheck", "analyze", *map(str, dirs), "--format", "json"],
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def _job(monkeypatch, path, job_id, size):
    """A synthetic job of ``size`` ranks with id ``job_id`` ("" for none) written into ``path``."""
    if job_id:
        monkeypatch.setenv("DISTCHECK_JOB_ID", job_id)
    else:
        monkeypatch.delenv("DISTCHECK_JOB_ID", raising=False)
    make_run(str(path), size=size)


# -- analyze refuses files of two jobs -----------------------------------------------
def test_a_two_rank_job_over_a_three_rank_one_is_refused_by_job_id(tmp_path, monkeypatch):
    _job(monkeypatch, tmp_path, "job3", 3)
    _job(monkeypatch, tmp_path, "job2", 2)  # rewrites ranks 0 and 1; rank 2 of job3 stays
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.attr("job_id") == "job2"
    code, out, err = _analyze(tmp_path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "files of 2 different jobs" in err and len(err.strip().splitlines()) == 1
    assert "job job2 (rank_00000.h5, rank_00001.h5)" in err and "job job3 (rank_00002.h5)" in err
    assert "--overwrite" in err and "fresh --out" in err
    assert "grad_divergence" not in out + err and "param_divergence" not in out + err


def test_two_world_sizes_without_job_ids_are_refused(tmp_path, monkeypatch):
    # probes attached in the user's own launcher, with no DISTCHECK_JOB_ID
    _job(monkeypatch, tmp_path, "", 3)
    _job(monkeypatch, tmp_path, "", 2)
    with DumpReader(str(tmp_path / "rank_00002.h5")) as r:
        assert r.attr("job_id") == ""
    code, out, err = _analyze(tmp_path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "world sizes differ" in err
    assert "a job of 2 rank(s) (rank_00000.h5, rank_00001.h5)" in err
    assert "a job of 3 rank(s) (rank_00002.h5)" in err
    for command in (["show", str(tmp_path)], ["diff", str(tmp_path), str(tmp_path)]):
        proc = subprocess.run([sys.executable, "-m", "distcheck", *command], capture_output=True, text=True)
        assert proc.returncode == 2 and "world sizes differ" in proc.stderr and "Traceback" not in proc.stderr


def test_a_job_file_of_another_job_is_named(tmp_path, monkeypatch):
    _job(monkeypatch, tmp_path, "mine", 2)
    write_json(str(tmp_path / "job.json"), {"job_id": "other", "command": ["python", "x.py"]})
    write_end(str(tmp_path), ProcessEnd("h", 7, 0, None, 0.0, "mine"))
    with pytest.raises(MixedJobsError, match=r"job other \(job\.json\)") as caught:
        load_run([str(tmp_path)])
    assert "job mine (ends/h-7.json, rank_00000.h5, rank_00001.h5)" in str(caught.value)
    assert isinstance(caught.value, UsageError)  # exit 2 from the command line


def test_directories_of_one_multi_node_job_still_analyse_together(tmp_path, monkeypatch):
    _job(monkeypatch, tmp_path / "all", "multinode-10.0.0.1-8118-2", 2)
    for node in (0, 1):  # each node's directory holds its own rank
        os.makedirs(tmp_path / f"node{node}")
        shutil.move(str(tmp_path / "all" / f"rank_0000{node}.h5"), str(tmp_path / f"node{node}"))
    code, out, err = _analyze(tmp_path / "node0", tmp_path / "node1")
    assert code == 0, err
    assert json.loads(out)["run"]["ranks_found"] == [0, 1]
    _job(monkeypatch, tmp_path / "other", "another-job", 2)
    os.unlink(tmp_path / "other" / "rank_00000.h5")  # rank 1 of another job of the same size
    code, out, err = _analyze(tmp_path / "node0", tmp_path / "other")
    assert code == 2 and "files of 2 different jobs" in err and "another-job" in err


def test_dumps_without_the_attribute_still_load(tmp_path, monkeypatch):
    _job(monkeypatch, tmp_path, "", 2)
    for name in ("rank_00000.h5", "rank_00001.h5"):
        with h5py.File(tmp_path / name, "a") as f:
            del f.attrs["job_id"]  # as written before job ids
    run = load_run([str(tmp_path)])
    assert run.ranks == [0, 1] and not run.errors and run.readers[0].attr("job_id", "") == ""
    run.close()


def test_the_job_id_reaches_options_and_process_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTCHECK_JOB_ID", "abc")
    assert ProbeOptions().job_id == "abc" and ProbeOptions.from_env().job_id == "abc"
    assert ProbeOptions(job_id="x").to_env()["DISTCHECK_JOB_ID"] == "x"
    monkeypatch.setattr(rank_supervisor.socket, "gethostname", lambda: "h")
    monkeypatch.setattr(rank_supervisor.time, "time", lambda: 5.0)
    rank_supervisor._record(str(tmp_path), 42, 0)
    assert read_end(str(tmp_path), "h", 42) == ProcessEnd("h", 42, 0, None, 5.0, "abc")
    monkeypatch.delenv("DISTCHECK_JOB_ID")
    assert ProbeOptions().job_id == ""


def _launch_args(**kw):
    base = dict(local_n=None, nproc=2, master_port=None, master_addr=None)
    return types.SimpleNamespace(**{**base, **kw})


def test_launch_makes_a_job_id_the_nodes_of_one_job_share(monkeypatch):
    monkeypatch.delenv("DISTCHECK_JOB_ID", raising=False)
    one, two = _job_id(_launch_args()), _job_id(_launch_args())
    assert one != two and len(one) == 32
    node = _launch_args(nproc=16, local_n=8, master_addr="10.0.0.1", master_port=8118)
    assert _job_id(node) == _job_id(node) == "multinode-10.0.0.1-8118-16"
    monkeypatch.setenv("DISTCHECK_JOB_ID", "slurm-123")
    assert _job_id(node) == _job_id(_launch_args()) == "slurm-123"


# -- launch refuses a used run directory -----------------------------------------------
def _used_run_dir(path):
    make_run(str(path), size=2, steps=2)
    for name, text in [("job.json", "{}"), ("ready/h-1", "ok"), ("ends/h-1.json", "{}"), ("logs/worker_0.log", ""),
                       ("progress/rank_00000.bin", ""), ("progress/notes.txt", "mine"), ("notes.txt", "mine"),
                       ("data/train.bin", "mine")]:
        os.makedirs(os.path.dirname(path / name), exist_ok=True)
        (path / name).write_text(text)


def test_a_used_run_directory_is_refused_and_overwrite_clears_only_distchecks_files(tmp_path):
    _used_run_dir(tmp_path)
    with pytest.raises(UsageError) as caught:
        _claim_run_dir(str(tmp_path), overwrite=False)
    message = str(caught.value)
    assert str(tmp_path) in message and "--overwrite" in message and "fresh" in message
    assert "\n" not in message
    _claim_run_dir(str(tmp_path), overwrite=True)
    left = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert left == ["data/train.bin", "notes.txt", "progress/notes.txt"]
    _claim_run_dir(str(tmp_path), overwrite=False)  # nothing of a run is left: accepted
    _claim_run_dir(str(tmp_path / "new"), overwrite=False)  # not there yet: accepted


def test_launch_into_a_used_directory_exits_2_and_overwrite_goes_ahead(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "distcheck", "launch", "-n", "1", "--launcher", "none", "--out", str(out)]
    job = ["--", sys.executable, "-c", "pass"]
    first = subprocess.run([*argv, *job], capture_output=True, text=True, timeout=120)
    first_id = read_job(str(out))["job_id"]
    assert first.returncode == 2 and "no rank recorded anything" in first.stderr and first_id
    again = subprocess.run([*argv, *job], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds a run (ends/, job.json)" in again.stderr
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert read_job(str(out))["job_id"] == first_id  # untouched
    forced = subprocess.run([*argv, "--overwrite", *job], capture_output=True, text=True, timeout=120)
    assert "no rank recorded anything" in forced.stderr and read_job(str(out))["job_id"] != first_id


# -- the start-up rendezvous counts only this job's ready files ------------------------
def test_a_stale_ready_file_of_another_job_does_not_count(tmp_path, capsys):
    rendezvous.announce(str(tmp_path), ok=True, job_id="old")  # left by an earlier job
    ok, why = rendezvous.all_ready(str(tmp_path), expected=1, timeout=0.3, job_id="new")
    assert not ok and "only 0 of 1" in why
    assert "left by another job (old, not new)" in capsys.readouterr().err
    rendezvous.announce(str(tmp_path), ok=True, job_id="new")
    assert rendezvous.all_ready(str(tmp_path), expected=1, timeout=1, job_id="new") == (True, "")


def test_a_stale_failure_of_another_job_does_not_turn_the_checks_off(tmp_path):
    (tmp_path / "ready").mkdir()
    (tmp_path / "ready" / "old-host-1").write_text("failed: cannot set up communication")  # an older version's file
    rendezvous.announce(str(tmp_path), ok=True, job_id="new")
    assert rendezvous.all_ready(str(tmp_path), expected=1, timeout=1, job_id="new") == (True, "")
    ok, why = rendezvous.all_ready(str(tmp_path), expected=1, timeout=1, job_id="")  # no id: cannot tell
    assert not ok and "cannot set up communication" in why


# -- which first word is the interpreter ----------------------------------------------
@pytest.mark.parametrize("word", ["python", "python3", "python3.11", "python3.13t", "/usr/bin/python3",
                                  "/opt/venv/bin/python3.11", sys.executable])
def test_python_executables_are_interpreters(word):
    assert is_interpreter(word)


@pytest.mark.parametrize("word", ["python_train.py", "python_train", "pythonic.py", "train.py", "./python3.py",
                                  "scripts/python-job.py", "python3-train", ""])
def test_scripts_are_not_interpreters(word):
    assert not is_interpreter(word)


def test_an_interpreter_found_by_its_file(tmp_path):
    link = tmp_path / "mypy"
    os.symlink(sys.executable, link)  # any name: it is this Python
    assert is_interpreter(str(link))
    script = tmp_path / "job"
    script.write_text("#!/bin/sh\n")
    assert not is_interpreter(str(script))


def test_a_script_named_python_something_is_run_by_python():
    assert _script_and_args(["python_train.py", "--steps", "3"]) == ["python_train.py", "--steps", "3"]
    assert _script_and_args(["python3", "-u", "python_train.py", "-v"]) == ["python_train.py", "-v"]
    assert rank_supervisor._command(["python_train.py", "-v"]) == [sys.executable, "python_train.py", "-v"]
    assert rank_supervisor._command(["python3.11", "train.py"]) == ["python3.11", "train.py"]


def test_a_script_named_python_something_runs_under_launch(tmp_path):
    script = tmp_path / "python_train.py"
    script.write_text("import sys\nprint('trained', sys.argv[1:], file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-m", "distcheck", "launch", "-n", "1", "--out", str(tmp_path / "run"),
                           "--", str(script), "--steps", "3"], capture_output=True, text=True, timeout=120)
    assert "trained ['--steps', '3']" in proc.stderr, proc.stderr
    assert read_job(str(tmp_path / "run"))["exit_code"] == 0
