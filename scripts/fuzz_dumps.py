#!/usr/bin/env python3
"""Fuzz the analyzer with damaged dumps: it must never raise, hang or lose readable ranks.

Writes one small healthy 3-rank run, then for each case copies it, damages one rank's
file (truncation, flipped bytes, zeroed or random blocks, a deleted dataset, bad
attributes, a resized dataset) and runs the full analysis (consistency and health rules)
with the JSON report. Prints how many cases were analysed, how many gave input errors,
and every case that raised or exceeded the time limit.

    python scripts/fuzz_dumps.py --cases 1000 --seed 0
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from distcheck.analysis import analyze  # noqa: E402
from distcheck.config import load_config  # noqa: E402
from distcheck.report.json_report import render_json  # noqa: E402
from distcheck.report.text import render_text  # noqa: E402
from distcheck.rules import health_checks  # noqa: E402
from synthetic import make_run  # noqa: E402


class Timeout(Exception):
    pass


def damage(path: str, rng: random.Random) -> str:
    size = os.path.getsize(path)
    kind = rng.choice(["truncate", "flip", "zero_block", "random_block", "delete", "attr", "resize", "append"])
    if kind == "truncate":
        cut = rng.randrange(0, size)
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        return f"truncate at {cut}"
    if kind in ("flip", "zero_block", "random_block"):
        with open(path, "r+b") as fh:
            data = bytearray(fh.read())
            if kind == "flip":
                for _ in range(rng.randint(1, 20)):
                    data[rng.randrange(size)] ^= 1 << rng.randrange(8)
            else:
                start, n = rng.randrange(size), rng.randint(1, 4096)
                block = bytes(n) if kind == "zero_block" else bytes(rng.getrandbits(8) for _ in range(n))
                data[start:start + n] = block[: max(0, size - start)]
            fh.seek(0)
            fh.write(data)
        return kind
    try:
        with h5py.File(path, "r+") as f:
            names: list[str] = []
            f.visit(names.append)
            if kind == "delete":
                victim = rng.choice(names)
                del f[victim]
                return f"delete {victim}"
            if kind == "attr":
                key = rng.choice(["rank", "world_size", "meta", "format", "format_version"])
                f.attrs[key] = rng.choice([-1, 10**9, "{not json", "[]", 3.5, ""])
                return f"attr {key}"
            datasets = [n for n in names if isinstance(f[n], h5py.Dataset) and f[n].maxshape[0] is None]
            if datasets:
                victim = rng.choice(datasets)
                if kind == "resize":
                    f[victim].resize(rng.randint(0, f[victim].shape[0] + 5), axis=0)
                else:
                    f[victim][0:1] = np.zeros((1, *f[victim].shape[1:]), f[victim].dtype) + rng.choice([0, 1, 2**40, -1])
                return f"{kind} {victim}"
    except Exception as exc:  # the file may already be beyond h5py
        return f"{kind} failed: {exc}"
    return kind


def run_case(src: str, work: str, rng: random.Random, config: dict, limit: float):
    shutil.copytree(src, work)
    files = sorted(n for n in os.listdir(work) if n.endswith(".h5"))
    target = os.path.join(work, rng.choice(files))
    what = damage(target, rng)
    if rng.random() < 0.1:
        what += f" + second: {damage(os.path.join(work, rng.choice(files)), rng)}"
    if os.environ.get("FUZZ_VERBOSE"):
        print(os.path.basename(work), what, file=sys.stderr, flush=True)
    signal.alarm(int(limit))
    try:
        analysis = analyze([work], config, checks=[health_checks])
        render_json(analysis)
        render_text(analysis)
    finally:
        signal.alarm(0)
    readable = len(analysis.run["ranks_found"])
    return what, analysis, readable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=float, default=45.0, help="seconds allowed per case")
    args = ap.parse_args()

    def on_alarm(signum, frame):
        raise Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    rng = random.Random(args.seed)
    config = load_config()
    root = tempfile.mkdtemp(prefix="distcheck-fuzz-")
    src = os.path.join(root, "source")
    make_run(src, "nudge", size=3, steps=70)
    failures, input_errors, started = [], 0, time.time()
    for case in range(args.cases):
        work = os.path.join(root, f"case{case}")
        try:
            what, analysis, readable = run_case(src, work, rng, config, args.limit)
            input_errors += bool(analysis.errors)
            if readable < 2 and not analysis.errors:
                failures.append((case, what, "ranks lost without an input error"))
        except Timeout:
            failures.append((case, "?", f"took more than {args.limit:g} s"))
        except Exception:
            failures.append((case, "?", traceback.format_exc(limit=int(os.environ.get("FUZZ_FRAMES", "3")))))
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"{args.cases} cases in {time.time() - started:.1f} s: {input_errors} reported input errors, "
          f"{len(failures)} failures")
    for case, what, why in failures:
        print(f"case {case} ({what}): {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
