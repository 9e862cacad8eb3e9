#!/usr/bin/env python3
"""How the analyzer scales: time and peak memory along ranks, steps and parameters.

Writes synthetic runs (one rank diverging in one parameter, late in the run), then times
``distcheck analyze`` on each in a fresh process and reads that process's peak RSS (and
its workers'). Prints a table and writes it as JSON.

    python scripts/bench/analyzer.py [--quick | --case RANKS,STEPS,PARAMS ...] [--json FILE]
                                     [--workers 1,2,4]
"""
import argparse
import json
import os
import platform
import resource
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


def measure(run_dir: str, workers: int) -> dict:
    """Run the analysis in a child; time it and read its peak RSS."""
    code = ("import json, resource, sys, time; from distcheck.cli import main; t = time.perf_counter(); "
            f"rc = main(['analyze', {run_dir!r}, '--format', 'json', '--output', {os.devnull!r}, '--fail-on', "
            f"'never', '--workers', '{workers}']); took = time.perf_counter() - t; "
            "print(json.dumps({'rc': rc, 'seconds': took, "
            "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
            "'workers_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"analyze failed on {run_dir}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller cases only (about a minute)")
    ap.add_argument("--case", action="append", default=[], metavar="RANKS,STEPS,PARAMS",
                    help="only this case (repeatable)")
    ap.add_argument("--workers", default="1", help="comma-separated worker counts to try (default 1)")
    ap.add_argument("--json", default="bench-analyzer.json", help="where to write the results")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    root = tempfile.mkdtemp(prefix="distcheck-bench-")
    rows = []
    try:
        print(f"{platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}")
        print(f"{'ranks':>6} {'steps':>6} {'params':>6} {'workers':>7} {'data MB':>8} {'seconds':>8} {'peak MB':>8}")
        cases = [tuple(int(x) for x in c.split(",")) for c in args.case] or (QUICK if args.quick else FULL)
        for ranks, steps, params in cases:
            run = os.path.join(root, f"r{ranks}-s{steps}-p{params}")
            write_run(run, ranks, steps, params, diverge_rank=ranks - 1, diverge_step=int(steps * 0.9))
            size = sum(os.path.getsize(os.path.join(run, f)) for f in os.listdir(run)) / 2**20
            for k in workers:
                m = measure(run, k)
                peak = max(m["rss_mb"], m["workers_rss_mb"])
                rows.append({"ranks": ranks, "steps": steps, "params": params, "workers": k, "data_mb": size,
                             "seconds": m["seconds"], "peak_rss_mb": peak})
                print(f"{ranks:6d} {steps:6d} {params:6d} {k:7d} {size:8.0f} {m['seconds']:8.2f} {peak:8.0f}",
                      flush=True)
            shutil.rmtree(run, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with open(args.json, "w") as fh:
        json.dump({"machine": platform.machine(), "cpus": os.cpu_count(), "time": time.time(), "rows": rows},
                  fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
