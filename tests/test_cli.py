import json
import os
import subprocess
import sys

import pytest

from distcheck.cli import main
from synthetic import make_run


def _run(*argv):
    """The real command in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "distcheck", *argv], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def test_clean_run_exits_0(tmp_path):
    make_run(str(tmp_path), "none")
    code, out, _ = _run("analyze", str(tmp_path))
    assert code == 0 and "No problems found" in out


def test_findings_exit_1_and_json_follows_the_schema(tmp_path):
    make_run(str(tmp_path), "seed")
    code, out, _ = _run("analyze", str(tmp_path), "--format", "json")
    assert code == 1
    doc = json.loads(out)
    assert doc["schema"] == "distcheck.report/1" and doc["run"]["world_size"] == 3
    (f,) = doc["findings"]
    assert set(f) >= {"code", "severity", "stage", "step", "ranks", "params", "message"}
    assert (f["code"], f["severity"], f["step"], f["ranks"]) == ("init_mismatch", "error", 0, [2])


def test_fail_on_sets_the_threshold(tmp_path):
    make_run(str(tmp_path), "bn")
    assert main(["analyze", str(tmp_path)]) == 0
    assert main(["analyze", str(tmp_path), "--fail-on", "warning"]) == 1
    make_run(str(tmp_path / "b"), "seed")
    assert main(["analyze", str(tmp_path / "b"), "--fail-on", "never"]) == 0


def test_output_file(tmp_path):
    make_run(str(tmp_path), "seed")
    out = tmp_path / "reports" / "r.json"
    assert main(["analyze", str(tmp_path), "--format", "json", "--output", str(out)]) == 1
    assert json.loads(out.read_text())["findings"][0]["code"] == "init_mismatch"


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign", "missing"])
def test_damaged_rank_files_exit_2_with_a_message_and_the_rest_is_analysed(tmp_path, damage):
    make_run(str(tmp_path), "nudge", size=4)
    path = tmp_path / "rank_00001.h5"
    if damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    else:
        path.unlink()
    code, out, err = _run("analyze", str(tmp_path), "--format", "json")
    assert "Traceback" not in err + out
    doc = json.loads(out)
    codes = {f["code"]: f for f in doc["findings"]}
    assert codes["param_divergence"]["ranks"] == [3]
    assert codes["rank_missing"]["ranks"] == [1]
    if damage == "missing":
        assert code == 1  # a missing file is a finding, not an input error
    else:
        assert code == 2 and "rank_00001.h5" in err


def test_usage_errors_exit_2(tmp_path):
    code, _, err = _run("analyze", str(tmp_path / "nope"))
    assert code == 2 and "no such run directory" in err
    code, _, err = _run("analyze", str(tmp_path))
    assert code == 2 and "no rank files" in err
    code, _, err = _run("launch", "-n", "2")
    assert code == 2 and "nothing to launch" in err


def test_bad_config_is_a_clear_error(tmp_path):
    make_run(str(tmp_path), "none")
    cfg = tmp_path / "c.yaml"
    for text, message in [("replica_grups: []\n", "unknown setting 'replica_grups'"),
                          ("max_findings_per_code: lots\n", "must be int"),
                          ("replica_groups: [[0, 1], [1, 2]]\n", "rank 1 is in more than one group"),
                          ("replica_groups: [{params: 'x*', group: [[0]]}]\n",
                           "replica_groups entry 1: unknown key(s) group"),
                          ("replica_groups: [{params: 'dense*', groups: [[0, 7]]}]\n",
                           "entry 1 (params: 'dense*'): rank(s) 7 do not exist in a job of 3 rank(s)"),
                          ("replica_groups: [{params: 'dense*', groups: [[0, 1, 2]]},\n"
                           "                 {params: 'mid.*', groups: [[0]]}]\n",
                           "replica_groups entry 2 (params: 'mid.*') match(es) no parameter of the run"),
                          ("[1, 2", "not valid YAML")]:
        cfg.write_text(text)
        code, _, err = _run("analyze", str(tmp_path), "--config", str(cfg))
        assert code == 2 and message in err and "Traceback" not in err, err


def test_launch_checks_declared_replica_groups_against_the_job(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("replica_groups:\n  - params: 'mid.*'\n    groups: [[0, 2], [1, 3]]\n")
    code, _, err = _run("launch", "-n", "2", "--config", str(cfg), "--out", str(tmp_path / "run"), "--",
                        "python", "-c", "pass")
    assert code == 2 and "entry 1 (params: 'mid.*'): rank(s) 2, 3 do not exist in a job of 2" in err, err


ISOLATION = """
import sys
sys.modules["mindspore"] = None  # any import of it now fails
import distcheck, distcheck.cli, distcheck.analysis, distcheck.report.text, distcheck.report.json_report
import distcheck.launch, distcheck.recording, distcheck.store.reader, distcheck.store.writer, distcheck.config
import distcheck.watch, distcheck.processes, distcheck.store.live, distcheck.store.sidecars
import distcheck.recording.recorder, distcheck.recording.lifecycle, distcheck.recording.heartbeat
sys.argv = ["distcheck", "--help"]
try:
    distcheck.cli.main()
except SystemExit:
    pass
"""


def test_nothing_but_the_adapter_imports_mindspore():
    proc = subprocess.run([sys.executable, "-c", ISOLATION], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "launch" in proc.stdout
    here = os.path.join(os.path.dirname(__file__), "..", "distcheck")
    for root, _, files in os.walk(here):
        if os.sep + "mindspore" in root:
            continue
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(root, name)).read()
                assert "import mindspore" not in text and "from mindspore" not in text, name


def test_a_launch_that_records_nothing_says_why_once(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text("print('training with my own loop')\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "distcheck", "launch", "-n", "1", "--out", str(out), "--",
                           sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("no rank recorded anything") == 1 and "probe = Probe(net)" in proc.stderr
    assert proc.stderr.count("run directory") == 1 and "No problems found" not in proc.stderr


def test_labels_setting_is_checked(tmp_path):
    from distcheck.config import ConfigError, load_config

    good = tmp_path / "good.yaml"
    good.write_text("labels: -1\n")
    assert load_config(str(good))["labels"] == -1
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: last\n")
    with pytest.raises(ConfigError, match="'labels' must be null"):
        load_config(str(bad))


def test_a_progress_bar_on_a_terminal_and_none_in_logs(tmp_path):
    import os
    import pty

    make_run(str(tmp_path / "run"), "none", size=64, steps=3)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    argv = [sys.executable, "-m", "distcheck", "analyze", str(tmp_path / "run"), "--output", str(tmp_path / "r.txt")]
    pid, fd = pty.fork()
    if pid == 0:  # the child runs the analysis with a terminal on stderr
        os.execve(argv[0], argv, env)
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.waitpid(pid, 0)
    assert b"reading" in seen and b"Traceback" not in seen
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert "reading" not in proc.stderr and proc.returncode == 0


def test_launch_keeps_the_frameworks_info_lines_out_of_the_terminal(tmp_path):
    script = tmp_path / "chatty.py"
    script.write_text("import sys\n"
                      "print('[INFO] DISTRIBUTED(7090,7f6a04a9b6c0,python):2026-11-28 tcp_server.cc:314] Start]')\n"
                      "print('[WARNING] ME(22433,7f66,MainProcess):2026 dtype.py:295] deprecated')\n"
                      "print('rank 0 done', flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    argv = [sys.executable, "-m", "distcheck", "launch", "-n", "1", "--launcher", "none", "--out",
            str(tmp_path / "run"), "--", sys.executable, str(script)]
    quiet = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert "rank 0 done" in quiet.stderr and "[WARNING] ME(" in quiet.stderr and "[INFO]" not in quiet.stderr
    again = [*argv[:4], "--overwrite", *argv[4:]]  # the same run directory
    loud = subprocess.run(again, capture_output=True, text=True, env={**env, "GLOG_v": "1"}, timeout=120)
    assert "[INFO] DISTRIBUTED(7090" in loud.stderr  # the user asked for them


def test_sizes_read_as_people_write_them(tmp_path):
    from distcheck.recording.options import human_size, parse_size

    assert [parse_size(t) for t in ("0", "1024", "512M", "1G", "1.5GiB", "2k")] == \
        [0, 1024, 512 << 20, 1 << 30, 3 << 29, 2048]
    assert human_size(1 << 30) == "1 GiB" and human_size(1536) == "1.5 KiB" and human_size(7) == "7 B"
    code, _, err = _run("launch", "-n", "1", "--out", str(tmp_path / "r"), "--grad-copy-limit", "lots", "--",
                        sys.executable, "-c", "pass")
    assert code == 2 and "--grad-copy-limit: not a size: 'lots'" in err and "Traceback" not in err, err
    code, _, err = _run("launch", "-n", "1", "--out", str(tmp_path / "r"), "--update-norm-every", "0", "--",
                        sys.executable, "-c", "pass")
    assert code == 2 and "--update-norm-every: give 1 or more" in err and "Traceback" not in err, err


def test_rules_and_explain_say_what_each_code_compares():
    code, out, _ = _run("rules")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0
    assert "  cross-rank  " in lines["init_mismatch"] and "  cross-rank  " in lines["loss_nonfinite"]
    assert "  per rank  " in lines["grad_vanishing"] and "  two runs  " in lines["diff_param"]
    code, out, _ = _run("explain", "diff_param")
    assert code == 0 and out.startswith("diff_param (error, two runs):")
    code, _, err = _run("explain", "no_such_code")
    assert code == 2 and "unknown code 'no_such_code'" in err
