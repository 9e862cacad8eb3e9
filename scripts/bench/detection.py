"""The detection benchmark: plant faults in real data-parallel MindSpore jobs, run them
under ``distcheck launch``, and score the reports.

For each (network, fault, draw) of the matrix the step, rank, parameter and element of
the fault are drawn from ``numpy.random.default_rng(--seed)``; the job
(``scripts/bench/detection_job.py``) runs under ``distcheck launch -n 3`` (three ranks,
so that a majority vote can name a culprit) with ``--format json``; its report is
scored against :data:`EXPECTED`:

- detected: an error or warning whose code names the fault;
- placed exactly: that finding names the right rank(s), step and parameters;
- latency: steps from the injection to the first such finding (with ``--fail-fast``
  rows, also the seconds from the injection until ``distcheck launch`` returned);
- kind: for a parameter divergence, whether the report's kind of difference (of the
  fault rank's first parameter in that finding) points at the hardware (``bit_flip``,
  ``one_element``, ``few_elements``) for the bit flips, and away from it for the
  software faults that change whole tensors.

Healthy runs (other seeds, batch sizes and lengths; one per network of 1,000 steps)
count errors and warnings: every one not listed in :data:`JUSTIFIED` is a false alarm.
The cost rows run one job per network without distcheck (plain ``msrun``) as well.

Writes ``DIR/detection.json`` (every trial with its finding codes) and
``DIR/detection.md`` (the tables)::

    python scripts/bench/detection.py --out bench-detection          # the full matrix
    python scripts/bench/detection.py --quick --out /tmp/quick       # a few minutes
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "detection_job.py")
NETS = ("mlp", "cnn", "transformer")
RANKS = 3
STEPS = 20  # steps of a fault trial
BATCH = 16
STALL_TIMEOUT = 25  # seconds without progress, for the stall trials (first-step compilation included)


@dataclass(frozen=True)
class Expected:
    """What a report must say about a fault (``codes``: the first is the one that names it
    best, and wins a tie at the same step). ``step``: "fault" (the drawn step), or a fixed
    step; ``rank``: "fault", "all" or None (not checked); ``params``: True to compare with
    the parameters the job says it touched. ``quiet``: the right outcome is no finding."""

    codes: tuple[str, ...] = ()
    step: object = "fault"
    rank: Optional[str] = "fault"
    params: bool = True
    nets: tuple[str, ...] = NETS
    kind: Optional[str] = None  # "hardware" or "software": the expected kind of difference
    quiet: bool = False
    launch: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    min_step: int = 2  # the earliest step the fault may be drawn at


#: One row per fault: the codes that name it, and where.
EXPECTED: dict[str, Expected] = {
    "seed": Expected(("init_mismatch",), step=0, kind="software"),
    "stale_checkpoint": Expected(("param_divergence",), kind="software", min_step=3),
    "no_reduce": Expected(("grad_divergence",), step=1),
    "lr": Expected(("param_divergence",), kind="software"),
    "weight_decay": Expected(("param_divergence",), step=1, kind="software"),
    "opt_reset": Expected(("param_divergence",), kind="software"),
    "bitflip_exp": Expected(("param_divergence",), kind="hardware"),
    "bitflip_lsb": Expected(("param_divergence",), kind="hardware"),
    "nudge": Expected(("param_divergence",)),  # three elements written: "a few" is right, not judged
    "dropout_rng": Expected(quiet=True, nets=("transformer",)),
    "unsharded": Expected(("data_not_sharded",), step=1, rank="all", params=False),
    # The batch's exact Inf count names the rank (input_nonfinite), also where ReLU masks
    # the NaN (the CNN) and only the gradients turn non-finite, on every rank.
    "inf_batch": Expected(("input_nonfinite", "loss_nonfinite", "grad_exploding"), params=False),
    "frozen": Expected(("init_mismatch",), step=0, kind="software"),
    "bn_unsynced": Expected(("buffer_divergence",), step=1, rank=None, params=False, nets=("cnn",)),
    "kill": Expected(("rank_stopped",), params=False, env=(("MS_NODE_TIMEOUT", "5"),)),
    "stall": Expected(("rank_stalled",), params=False, launch=("--stall-timeout", str(STALL_TIMEOUT))),
    "grad_sum": Expected(("diff_factor", "diff_grad", "diff_param", "diff_loss"), step=1, rank=None, params=False,
                         nets=("mlp",)),
}
#: Warnings a reader would call right on a healthy run of this network.
JUSTIFIED = {"cnn": {"buffer_divergence"}}  # BatchNorm without synchronisation: expected
HARDWARE_KINDS = ("bit_flip", "one_element", "few_elements")  # what points at the node
QUICK_FAULTS = ("seed", "no_reduce", "lr", "bitflip_exp", "nudge", "inf_batch")
FAIL_FAST = (("mlp", "seed"), ("cnn", "bitflip_exp"), ("transformer", "nudge"))


@dataclass
class Trial:
    net: str
    fault: str
    draw: int
    step: int = 0
    rank: int = 0
    param: int = 0
    element: int = 0
    seed: int = 1234
    data_seed: int = 0
    steps: int = STEPS
    batch: int = BATCH
    fail_fast: bool = False
    plain_too: bool = False  # also run it without distcheck, for the cost
    result: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.net}-{self.fault}-{self.draw}" + ("-failfast" if self.fail_fast else "")

    def job_args(self) -> list[str]:
        return ["--net", self.net, "--fault", self.fault, "--fault-step", str(self.step),
                "--fault-rank", str(self.rank), "--fault-param", str(self.param),
                "--fault-element", str(self.element), "--seed", str(self.seed),
                "--data-seed", str(self.data_seed), "--steps", str(self.steps),
                "--batch-size", str(self.batch), "--describe-fault", "fault.json"]


# -- the matrix -----------------------------------------------------------------------
def plan(args: argparse.Namespace) -> list[Trial]:
    rng = np.random.default_rng(args.seed)
    nets = args.nets
    faults = args.faults or (QUICK_FAULTS if args.quick else tuple(EXPECTED))
    trials: list[Trial] = []
    for fault in faults:
        spec = EXPECTED[fault]
        where = [n for n in nets if n in spec.nets]
        if args.quick:
            where = where[:1]
        draws = args.draws if args.quick or len(where) > 1 else max(args.draws, 2)
        for k in range(draws):
            for net in where:
                trials.append(Trial(net, fault, k, step=int(rng.integers(spec.min_step, STEPS - 4)),
                                    rank=int(rng.integers(RANKS)), param=int(rng.integers(1000)),
                                    element=int(rng.integers(2**31))))
    if not args.quick:
        for net, fault in FAIL_FAST:
            if net in nets and fault in faults:
                trials.append(Trial(net, fault, 0, step=int(rng.integers(2, STEPS - 4)), rank=int(rng.integers(RANKS)),
                                    param=int(rng.integers(1000)), element=int(rng.integers(2**31)), fail_fast=True))
    healthy = [(30, 16), (60, 8), (1000, 32)] if not args.quick else [(30, 16)]
    for net in (nets[:1] if args.quick else () if args.no_healthy else nets):
        for k, (steps, batch) in enumerate(healthy):
            trials.append(Trial(net, "none", k, seed=int(rng.integers(1, 10**6)), data_seed=int(rng.integers(10**6)),
                                steps=steps, batch=batch, plain_too=k == 0 and not args.quick))
    return trials


# -- running ---------------------------------------------------------------------------
def _env(extra: tuple = ()) -> dict:
    env = {**os.environ, "GLOG_v": "3", **dict(extra)}
    env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), env.get("PATH", "")))
    env.setdefault("MS_RETRY_INTERVAL_LOWER", "1")
    env.setdefault("MS_RETRY_INTERVAL_UPPER", "2")
    return env


def _run(argv: list[str], cwd: str, env: dict, timeout: float) -> tuple[int, float, str]:
    started = time.monotonic()
    with open(os.path.join(cwd, "stderr.txt"), "a", encoding="utf-8") as err:
        try:
            code = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    return code, time.monotonic() - started, cwd


def launch(trial_dir: str, n: int, job_args: list[str], options: tuple = (), env: tuple = (),
           launcher: str = "msrun", out: str = "run", report: str = "report.json") -> tuple[int, float]:
    argv = [sys.executable, "-m", "distcheck", "launch", "-n", str(n), "--launcher", launcher, "--out", out,
            "--format", "json", "--output", report, *options, "--", sys.executable, JOB, *job_args]
    code, wall, _ = _run(argv, trial_dir, _env(env), timeout=600)
    return code, wall


def plain_msrun(trial_dir: str, n: int, job_args: list[str]) -> float:
    """The same job under msrun without distcheck: its wall time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    msrun = shutil.which("msrun", path=os.path.dirname(sys.executable)) or "msrun"
    argv = [msrun, f"--worker_num={n}", f"--local_worker_num={n}", f"--master_port={port}", "--log_dir=plain_logs",
            "--join=True", "--cluster_time_out=120", JOB, *job_args[:-2], "--describe-fault", "plain.json"]
    code, wall, _ = _run(argv, trial_dir, _env(), timeout=600)
    return wall if code == 0 else float("nan")


def run_trial(trial: Trial, root: str) -> None:
    spec = EXPECTED.get(trial.fault, Expected())
    trial_dir = os.path.join(root, "trials", trial.name)
    shutil.rmtree(trial_dir, ignore_errors=True)
    os.makedirs(trial_dir)
    options = spec.launch + (("--fail-fast", "--online-every", "1") if trial.fail_fast else ())
    code, wall = launch(trial_dir, RANKS, trial.job_args(), options, spec.env)
    ended = time.time()
    res: dict = {"exit": code, "wall_s": round(wall, 2)}
    report = _load(os.path.join(trial_dir, "report.json"))
    findings = report.get("findings", []) if report else []
    if report is None:
        res["error"] = f"no report (exit {code}); see {trial_dir}/stderr.txt"
    if trial.fault == "grad_sum":
        ref_args = trial.job_args()
        ref_args[ref_args.index("--fault") + 1] = "none"
        ref_args[ref_args.index("--batch-size") + 1] = str(trial.batch * RANKS)
        ref_args[ref_args.index("--describe-fault") + 1] = "reference.json"
        launch(trial_dir, 1, ref_args, launcher="none", out="reference", report="reference.json")
        diff = subprocess.run([sys.executable, "-m", "distcheck", "diff", "reference", "run", "--format", "json"],
                              cwd=trial_dir, env=_env(), capture_output=True, text=True)
        try:
            findings = findings + json.loads(diff.stdout).get("findings", [])
        except json.JSONDecodeError:
            res["error"] = f"distcheck diff gave no report: {diff.stderr.strip()[-300:]}"
    record = _fault_record(trial_dir, trial)
    res["findings"] = [{k: f.get(k) for k in ("code", "severity", "step", "ranks", "params", "message")}
                       | ({"difference": f["detail"]["difference"]} if "difference" in (f.get("detail") or {})
                          else {}) for f in findings]
    res["record"] = record
    if record.get("injected_at") and trial.fail_fast:
        res["stop_s"] = round(ended - record["injected_at"], 2)
    if trial.plain_too:
        res["plain_wall_s"] = round(plain_msrun(trial_dir, RANKS, trial.job_args()), 2)
        res["plain_train_s"] = _train_seconds(trial_dir, "plain.json")
    res["train_s"] = _train_seconds(trial_dir, "fault.json")
    res.update(score(trial, spec, res["findings"], record))
    trial.result = res


def _load(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _fault_record(trial_dir: str, trial: Trial) -> dict:
    return _load(os.path.join(trial_dir, f"fault.json.rank{trial.rank % RANKS}")) or {}


def _train_seconds(trial_dir: str, name: str) -> Optional[float]:
    record = _load(os.path.join(trial_dir, f"{name}.rank0")) or {}
    return round(record["train_seconds"], 2) if "train_seconds" in record else None


# -- scoring ---------------------------------------------------------------------------
def score(trial: Trial, spec: Expected, findings: list[dict], record: dict) -> dict:
    alarms = [f for f in findings if f["severity"] in ("error", "warning")]
    if trial.fault == "none" or spec.quiet:
        unjustified = [f for f in alarms if f["code"] not in JUSTIFIED.get(trial.net, ())]
        return {"false_alarms": [f"{f['code']}: {f['message']}" for f in unjustified], "correct": not unjustified}
    matching = [f for f in alarms if f["code"] in spec.codes]
    if not matching:
        return {"detected": False, "placed": False}
    first = min(matching, key=lambda f: (f["step"] is None, f["step"] or 0, spec.codes.index(f["code"])))
    fault_rank = trial.rank % RANKS
    injected = trial.step if spec.step == "fault" else spec.step
    placed = {}
    if spec.rank == "fault":
        placed["rank"] = first["ranks"] == [fault_rank]
    elif spec.rank == "all":
        placed["rank"] = sorted(first["ranks"]) == list(range(RANKS))
    placed["step"] = first["step"] == injected
    if spec.params:
        placed["params"] = sorted(first["params"]) == sorted(record.get("params", ["?"]))
    out = {"detected": True, "placed": all(placed.values()), "placement": placed,
           "latency_steps": None if first["step"] is None else first["step"] - injected,
           "first": f"{first['code']}@{first['step']} ranks {first['ranks']}"}
    if spec.kind:
        kinds = [d["kind"] for d in first.get("difference", []) if d.get("rank") == fault_rank]
        out["kinds"] = kinds
        if kinds:
            out["kind_right"] = (kinds[0] in HARDWARE_KINDS if spec.kind == "hardware"
                                 else kinds[0] not in HARDWARE_KINDS)
    return out


# -- summary ---------------------------------------------------------------------------
def _rate(hits: int, n: int) -> str:
    return f"{hits}/{n} ({100 * hits / n:.0f}%)" if n else "-"


def summarise(trials: list[Trial]) -> dict:
    faulty = [t for t in trials if t.fault != "none" and not EXPECTED[t.fault].quiet and "error" not in t.result]
    quiet = [t for t in trials if (t.fault == "none" or EXPECTED[t.fault].quiet) and "error" not in t.result]
    rows = {}
    for fault in dict.fromkeys(t.fault + ("/fail-fast" if t.fail_fast else "") for t in trials):
        mine = [t for t in trials if t.fault + ("/fail-fast" if t.fail_fast else "") == fault]
        ok = [t for t in mine if "error" not in t.result]
        row = {"trials": len(mine), "failed_to_run": len(mine) - len(ok),
               "nets": sorted({t.net for t in mine}),
               "median_wall_s": round(statistics.median(t.result["wall_s"] for t in mine), 1)}
        if ok and (fault == "none" or EXPECTED[fault.split("/")[0]].quiet):
            row["false_alarm_runs"] = sum(not t.result["correct"] for t in ok)
        elif ok:
            row["detected"] = sum(t.result["detected"] for t in ok)
            row["placed"] = sum(t.result["placed"] for t in ok)
            lat = [t.result["latency_steps"] for t in ok if t.result.get("latency_steps") is not None]
            row["median_latency_steps"] = statistics.median(lat) if lat else None
            judged = [t for t in ok if "kind_right" in t.result]
            row["kind_right"] = [sum(t.result["kind_right"] for t in judged), len(judged)]
            stops = [t.result["stop_s"] for t in ok if "stop_s" in t.result]
            if stops:
                row["median_stop_s"] = round(statistics.median(stops), 1)
        row["ok"] = len(ok)
        rows[fault] = row
    return {"fault_trials": len(faulty), "detected": sum(t.result["detected"] for t in faulty),
            "placed": sum(t.result["placed"] for t in faulty), "quiet_trials": len(quiet),
            "false_alarm_runs": sum(not t.result["correct"] for t in quiet), "per_fault": rows}


def markdown(summary: dict, trials: list[Trial], meta: dict) -> str:
    s = summary
    lines = [f"Measured {meta['date']} on {meta['machine']}; seed {meta['seed']}, {RANKS} ranks, "
             f"{meta['minutes']:.0f} min.", "",
             f"**Overall:** detection {_rate(s['detected'], s['fault_trials'])}, exact placement "
             f"{_rate(s['placed'], s['fault_trials'])}, false alarms on healthy and benign runs "
             f"{_rate(s['false_alarm_runs'], s['quiet_trials'])}.", "",
             "| fault | networks | detected | placed exactly | median latency (steps) | kind of difference right "
             "| false alarms | median wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for fault, r in s["per_fault"].items():
        n = r["ok"]
        kind = _rate(*r["kind_right"]) if r.get("kind_right") and r["kind_right"][1] else "-"
        latency = "-" if r.get("median_latency_steps") is None else f"{r['median_latency_steps']:g}"
        if "median_stop_s" in r:
            latency += f" (stopped {r['median_stop_s']:g} s after)"
        cells = ([_rate(r["detected"], n), _rate(r["placed"], n), latency, kind, "-"] if "detected" in r
                 else ["-", "-", "-", "-", _rate(r.get("false_alarm_runs", 0), n)])
        failed = f" ({r['failed_to_run']} failed to run)" if r["failed_to_run"] else ""
        lines.append(f"| {fault}{failed} | {', '.join(r['nets'])} | " + " | ".join(cells) + f" | {r['median_wall_s']} |")
    costs = [t for t in trials if "plain_wall_s" in t.result]
    if costs:
        lines += ["", "| network | steps | wall with distcheck (s) | without (s) | training loop with (s) | without (s) |",
                  "|---|---|---|---|---|---|"]
        for t in costs:
            r = t.result
            lines.append(f"| {t.net} | {t.steps} | {r['wall_s']} | {r['plain_wall_s']} | {r.get('train_s')} "
                         f"| {r.get('plain_train_s')} |")
    misses = [t for t in trials if t.result.get("detected") is False or t.result.get("placed") is False
              or t.result.get("false_alarms") or t.result.get("kind_right") is False or "error" in t.result]
    if misses:
        lines += ["", "Misses, misplacements, wrong kinds and false alarms:", ""]
        for t in misses:
            r = t.result
            what = r.get("error") or "; ".join(r.get("false_alarms", [])) or (
                f"first {r.get('first')}, placement {r.get('placement')}, kinds {r.get('kinds')}"
                if r.get("detected") else "not detected: " + ", ".join(f["code"] for f in r["findings"]))
            lines.append(f"- `{t.name}` (step {t.step}, rank {t.rank % RANKS}): {what[:400]}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few faults on the MLP and one healthy run")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--draws", type=int, default=1, help="draws per fault and network (default 1; at least 2 "
                   "per fault on one network only)")
    p.add_argument("--nets", default=",".join(NETS), help="comma-separated (default: all three)")
    p.add_argument("--faults", default="", help="comma-separated (default: every fault, or the quick ones)")
    p.add_argument("--out", default="bench-detection", metavar="DIR")
    p.add_argument("--jobs", type=int, default=1, help="trials at a time (only 1 is supported)")
    p.add_argument("--no-healthy", action="store_true", help="leave out the healthy runs")
    p.add_argument("--list", action="store_true", help="print the planned trials and exit")
    args = p.parse_args(argv)
    args.nets = tuple(n for n in args.nets.split(",") if n)
    args.faults = tuple(f for f in args.faults.split(",") if f)
    unknown = [n for n in args.nets if n not in NETS] + [f for f in args.faults if f not in EXPECTED]
    if unknown or args.jobs != 1:
        p.error(f"unknown network or fault: {', '.join(unknown)}" if unknown else "--jobs: only 1 is supported")
    trials = plan(args)
    if args.list:
        for t in trials:
            print(t.name, t.step, t.rank, t.param, t.steps, t.batch)
        return 0
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    for k, trial in enumerate(trials, 1):
        run_trial(trial, os.path.abspath(args.out))
        r = trial.result
        verdict = r.get("error") or ("ok" if r.get("correct", r.get("detected") and r.get("placed")) else "MISS")
        print(f"[{k}/{len(trials)}] {trial.name}: {verdict} ({r['wall_s']} s) "
              f"{[f['code'] for f in r['findings']]}", file=sys.stderr, flush=True)
    meta = {"date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "seed": args.seed, "minutes": (time.monotonic() - started) / 60, "quick": args.quick}
    summary = summarise(trials)
    with open(os.path.join(args.out, "detection.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "summary": summary, "trials": [asdict(t) for t in trials]}, f, indent=1)
    table = markdown(summary, trials, meta)
    with open(os.path.join(args.out, "detection.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
