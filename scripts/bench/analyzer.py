#!/usr/bin/env python3
"""How the analyzer scales: time and peak memory along ranks, steps and parameters.

Writes synthetic runs (one rank diverging in one parameter, late in the run), reads their
files once (so that every measurement finds them in the page cache), then times
``distcheck analyze`` on each in a fresh process and reads that process's peak RSS (and
its workers', each process's own). Every way of running a case must give the same
findings. Prints a table and writes it as JSON.

    python scripts/bench/analyzer.py [--quick | --ranks | --case RANKS,STEPS,PARAMS ...] [--json FILE]
                                     [--workers 1,2,4] [--mpirun 1,2,4] [--keep DIR]

``--ranks`` runs the ranks curve of the README (1,024, 4,096 and 10,240 ranks of 100
steps and 50 parameters: about 9 GB of dumps for the largest); ``--keep DIR`` writes the
runs under DIR once and reuses them on the next call. ``--mpirun K`` also times
``mpirun -n K distcheck analyze`` (mpirun next to this Python) and reports the peak of
each MPI process.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from synthetic import write_run  # noqa: E402

#: (ranks, steps, params): three sizes along each axis around a middle case, and the two
#: cases the targets name.
FULL = [(64, 100, 50), (256, 100, 50), (1024, 100, 50),
        (8, 1000, 1000), (8, 3000, 1000), (8, 10000, 1000),
        (8, 1000, 100), (8, 1000, 3000)]
QUICK = [(64, 100, 50), (256, 100, 50), (8, 1000, 100), (8, 1000, 1000)]
#: The ranks curve: the 1,024-rank case and the two the issue of ten thousand ranks names.
RANKS = [(1024, 100, 50), (4096, 100, 50), (10240, 100, 50)]

#: What one analysing process reports of itself when it ends (every process, also MPI's):
#: a file of its own in $DISTCHECK_BENCH_DIR.
_REPORT = ("import atexit, json, os, resource, sys; atexit.register(lambda: open(os.path.join("
           "os.environ['DISTCHECK_BENCH_DIR'], str(os.getpid())), 'w').write(json.dumps("
           "{'pid': os.getpid(), 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
           "'children_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))); ")


def warm(run_dir: str) -> None:
    """Read every file once, so that each measurement finds them in the page cache alike
    (the first one after writing another run would otherwise read from disk)."""
    for name in os.listdir(run_dir):
        with open(os.path.join(run_dir, name), "rb") as fh:
            while fh.read(1 << 24):
                pass


def measure(run_dir: str, workers: int, report: str) -> dict:
    """Run the analysis in a child; time it and read its peak RSS."""
    code = ("import json, resource, sys, time; from distcheck.cli import main; t = time.perf_counter(); "
            f"rc = main(['analyze', {run_dir!r}, '--format', 'json', '--output', {report!r}, '--fail-on', "
            f"'never', '--workers', '{workers}']); took = time.perf_counter() - t; "
            "print(json.dumps({'rc': rc, 'seconds': took, "
            "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
            "'workers_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"analyze failed on {run_dir}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_mpi(run_dir: str, processes: int, report: str) -> dict:
    """``mpirun -n K`` of the analysis: wall time, and each MPI process's own peak RSS
    (and the largest of its children: the screening child)."""
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    code = (_REPORT + "from distcheck.cli import main; "
            f"sys.exit(main(['analyze', {run_dir!r}, '--format', 'json', '--output', {report!r}, "
            "'--fail-on', 'never']))")
    with tempfile.TemporaryDirectory() as reports:
        t = time.perf_counter()
        proc = subprocess.run([mpirun, "-n", str(processes), sys.executable, "-c", code], capture_output=True,
                              text=True, env={**os.environ, "DISTCHECK_BENCH_DIR": reports})
        took = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"mpirun analyze failed on {run_dir}:\n{proc.stderr[-3000:]}")
        each = [json.load(open(os.path.join(reports, name))) for name in os.listdir(reports)]
    return {"seconds": took, "processes_rss_mb": sorted(e["rss_mb"] for e in each),
            "children_rss_mb": max((e["children_rss_mb"] for e in each), default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller cases only (about a minute)")
    ap.add_argument("--case", action="append", default=[], metavar="RANKS,STEPS,PARAMS",
                    help="only this case (repeatable)")
    ap.add_argument("--ranks", action="store_true", help="the ranks curve: 1,024, 4,096 and 10,240 ranks")
    ap.add_argument("--workers", default="1", help="comma-separated worker counts to try (default 1)")
    ap.add_argument("--mpirun", default="", help="comma-separated mpirun -n counts to try too (default none)")
    ap.add_argument("--keep", metavar="DIR", help="write the runs under DIR, keep them, and reuse them")
    ap.add_argument("--json", default="bench-analyzer.json", help="where to write the results")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    mpi = [int(k) for k in args.mpirun.split(",") if k]
    root = args.keep or tempfile.mkdtemp(prefix="distcheck-bench-")
    rows = []
    try:
        print(f"{platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}")
        print(f"{'ranks':>6} {'steps':>6} {'params':>6} {'workers':>9} {'data MB':>8} {'seconds':>8} "
              f"{'peak MB':>8}  peak MB of each process")
        cases = ([tuple(int(x) for x in c.split(",")) for c in args.case]
                 or (QUICK if args.quick else RANKS if args.ranks else FULL))
        for ranks, steps, params in cases:
            run = os.path.join(root, f"r{ranks}-s{steps}-p{params}")
            done = os.path.join(run, ".complete")
            if not os.path.exists(done):
                shutil.rmtree(run, ignore_errors=True)
                write_run(run, ranks, steps, params, diverge_rank=ranks - 1, diverge_step=int(steps * 0.9))
                open(done, "w").close()
            size = sum(os.path.getsize(os.path.join(run, f)) for f in os.listdir(run)) / 2**20
            warm(run)
            seen = {}  # each way of running -> its findings: they must be the same
            for how, k in [("workers", k) for k in workers] + [("mpirun", k) for k in mpi]:
                with tempfile.TemporaryDirectory() as out:
                    report = os.path.join(out, "report.json")
                    if how == "workers":
                        m = measure(run, k, report)
                        each = [m["rss_mb"], m["workers_rss_mb"]]  # the parent; the largest of its children
                    else:
                        m = measure_mpi(run, k, report)
                        each = [*m["processes_rss_mb"], m["children_rss_mb"]]
                    with open(report) as fh:
                        seen[f"{how} {k}"] = json.load(fh)["findings"]
                peak = max(each)
                rows.append({"ranks": ranks, "steps": steps, "params": params, "workers": k, "launcher": how,
                             "data_mb": size, "seconds": m["seconds"], "peak_rss_mb": peak, "each_rss_mb": each})
                label = f"{k}" if how == "workers" else f"mpi -n {k}"
                print(f"{ranks:6d} {steps:6d} {params:6d} {label:>9} {size:8.0f} {m['seconds']:8.2f} {peak:8.0f}  "
                      + " ".join(f"{x:.0f}" for x in each), flush=True)
            first = next(iter(seen.values()))
            differ = [how for how, findings in seen.items() if findings != first]
            if differ:
                raise SystemExit(f"{run}: the findings of {', '.join(differ)} differ from those of {next(iter(seen))}")
            print(f"{'':>20} the same {len(first)} finding(s) every way: "
                  + ", ".join(f"{f['code']}@{f['step']}" for f in first), flush=True)
            if not args.keep:
                shutil.rmtree(run, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    with open(args.json, "w") as fh:
        json.dump({"machine": platform.machine(), "cpus": os.cpu_count(), "time": time.time(), "rows": rows},
                  fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
