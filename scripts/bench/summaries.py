#!/usr/bin/env python3
"""Host time of one recorded step's summaries: the one-pass kernel against numpy.

The tensors of the probe benchmark's MLP (10.5M float32 parameters and as many
gradients), summarised as the recorder does (digests, statistics, and for the
parameters the update norm against the kept copy), with the compiled kernel
(``distcheck/recording/fused.c``) and with the numpy and xxhash path it replaces,
alternated in one run. Before each timing a 256 MB buffer is written, so the tensors
come from memory, not from cache, as after a real training step. Prints medians and
writes JSON.

    python scripts/bench/summaries.py [--repeats 15] [--json FILE]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from distcheck.recording import fused, summaries, update_norms  # noqa: E402
from distcheck.store.schema import ParamInfo  # noqa: E402

SHAPES = [(1600, 1600), (1600,)] * 4 + [(64, 1600), (64,)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", default="bench-summaries.json")
    args = ap.parse_args()
    if fused.library() is None:
        sys.exit(f"the kernel is not available: {fused.why_not()}")
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    infos = [ParamInfo(f"p{i}", s, "float32", True, True) for i, s in enumerate(SHAPES)]
    evict = np.ones(256 << 18, np.float32)  # 256 MB
    library = fused.library()
    kept = {True: update_norms.Previous(), False: update_norms.Previous()}
    times = {(kernel, kind): [] for kernel in (True, False) for kind in ("param", "grad")}
    for _ in range(args.repeats + 1):
        for kernel in (True, False):
            fused._library = library if kernel else None  # the numpy path, as without a compiler
            for kind, arrays in (("param", params), ("grad", grads)):
                np.add(evict, 1, out=evict)
                start = time.perf_counter()
                summaries.summarise(infos, arrays, kind, previous=kept[kernel] if kind == "param" else None)
                times[(kernel, kind)].append(time.perf_counter() - start)
    for dtype in ("float16", "bfloat16"):
        wide = rng.standard_normal(10_000_000).astype(np.float32)
        array = (wide.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bfloat16" else wide.astype(np.float16)
        info = [ParamInfo("g", array.shape, dtype, True, True)]
        for kernel in (True, False):
            fused._library = library if kernel else None
            for _ in range(args.repeats + 1):
                np.add(evict, 1, out=evict)
                start = time.perf_counter()
                summaries.summarise(info, [array], "grad")
                times.setdefault((kernel, dtype), []).append(time.perf_counter() - start)
    fused._library = library
    ms = {f"{'kernel' if k else 'numpy'}_{kind}_ms": statistics.median(v[1:]) * 1e3 for (k, kind), v in times.items()}
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
              "bytes": int(sum(a.nbytes for a in params + grads)), **ms}
    print(f"{result['machine']}; {result['bytes'] / 1e6:.0f} MB of parameters and gradients; "
          f"medians of {args.repeats}, from memory")
    print("                          kernel    numpy")
    for kind, label in (("param", "parameters (+ update)"), ("grad", "gradients")):
        print(f"  {label:22s} {ms[f'kernel_{kind}_ms']:6.1f} ms {ms[f'numpy_{kind}_ms']:6.1f} ms")
    total = {k: ms[f"{k}_param_ms"] + ms[f"{k}_grad_ms"] for k in ("kernel", "numpy")}
    print(f"  {'one recorded step':22s} {total['kernel']:6.1f} ms {total['numpy']:6.1f} ms")
    for dtype in ("float16", "bfloat16"):
        print(f"  {'10M ' + dtype + ' gradient':22s} {ms[f'kernel_{dtype}_ms']:6.1f} ms {ms[f'numpy_{dtype}_ms']:6.1f} ms")
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
