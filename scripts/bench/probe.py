#!/usr/bin/env python3
"""The probe's cost per training step, plain and attached runs interleaved in one run.

Two ways in, each plain and attached (every step; every step with every update measured,
``--update-norm-every 1``; every 10th step), alternated round after round on the same
machine so that drift hits all alike:

- ``Model.train`` under ``distcheck launch -n 1 --launcher none`` (no change to the
  script: ``model_train_job.py``, an MLP of about 10.5M parameters, batch 64);
- a GRAPH_MODE custom step with the ``Probe`` API, in this process (about 10.2M).

Reports the median step cycle of each, its ratio to plain, the floor (plain plus one
read of the parameters and gradients at the memory bandwidth measured here) and the
host memory the attached job added. Prints a table and writes JSON.

    python scripts/bench/probe.py [--rounds 3] [--steps 60] [--json FILE]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def bandwidth() -> float:
    """Bytes per second of one read pass over a large float32 array (the best of 5)."""
    a = np.ones(64 * 2**20 // 4, np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        np.add.reduce(a)
        best = min(best, time.perf_counter() - start)
    return a.nbytes / best


def model_train(mode, steps: int) -> dict:
    """One run of the Model.train job: plain (mode None) or under distcheck launch with
    ``mode`` = (every, update_norm_every)."""
    with tempfile.TemporaryDirectory(prefix="distcheck-bench-") as tmp:
        out = os.path.join(tmp, "times.json")
        job = [sys.executable, os.path.join(HERE, "model_train_job.py"), out, "--steps", str(steps)]
        if mode is not None:
            every, turns = mode
            job = [sys.executable, "-m", "distcheck", "launch", "-n", "1", "--launcher", "none", "--every",
                   str(every), "--update-norm-every", str(turns), "--out", os.path.join(tmp, "run"),
                   "--no-analyze", "--", *job]
        env = {**os.environ, "GLOG_v": "3"}
        subprocess.run(job, check=True, capture_output=True, env=env)
        with open(out) as fh:
            return json.load(fh)


def custom_loop(mode, steps: int, width: int = 1600) -> dict:
    import mindspore as ms
    from mindspore import nn

    from distcheck.mindspore import Probe
    from distcheck.recording import ProbeOptions

    class TrainStep(nn.Cell):
        def __init__(self, net, loss_fn, optimizer):
            super().__init__(auto_prefix=False)
            self.net, self.loss_fn, self.optimizer = net, loss_fn, optimizer
            self.grad_fn = ms.value_and_grad(self.forward, None, optimizer.parameters)

        def forward(self, x, y):
            return self.loss_fn(self.net(x), y)

        def construct(self, x, y):
            loss, grads = self.grad_fn(x, y)
            self.optimizer(grads)
            return loss

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    layers = []
    for _ in range(4):
        layers += [nn.Dense(width, width), nn.ReLU()]
    net = nn.SequentialCell(layers)
    optimizer = nn.SGD(net.trainable_params(), learning_rate=1e-3)
    probe, update = None, optimizer
    if mode is not None:
        every, turns = mode
        probe = Probe(net, run_dir=tempfile.mkdtemp(prefix="distcheck-bench-"),
                      options=ProbeOptions(every=every, update_norm_every=turns), optimizer=optimizer)
        update = probe.wrap(optimizer)
    step_fn = TrainStep(net, nn.MSELoss(), update)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((64, width)).astype(np.float32))
    y = ms.Tensor(np.zeros((64, width), np.float32))
    if probe:
        probe.begin()
    ends = []
    for step in range(1, steps + 1):
        loss = step_fn(x, y)
        loss.asnumpy()
        if probe:
            probe.step_end(step, loss, batch=(x, y))
        ends.append(time.perf_counter())
    if probe:
        probe.close()
    return {"cycles": list(np.diff(ends)), "params": sum(int(np.prod(p.shape)) for p in net.trainable_params())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--json", default="bench-probe.json")
    args = ap.parse_args()
    ways = {"Model.train": model_train, "custom loop": custom_loop}
    from distcheck.recording.options import UPDATE_NORM_EVERY

    modes = {"plain": None, "every step": (1, UPDATE_NORM_EVERY), "every step, all updates": (1, 1),
             "every 10": (10, UPDATE_NORM_EVERY)}
    cycles = {(w, m): [] for w in ways for m in modes}
    rss = {(w, m): [] for w in ways for m in modes}
    params = {}
    for _ in range(args.rounds):
        for way, run in ways.items():
            for mode, setting in modes.items():
                result = run(setting, args.steps)
                cycles[way, mode].extend(result["cycles"][5:])  # compilation and warm-up left out
                if "peak_rss_mb" in result:
                    rss[way, mode].append(result["peak_rss_mb"])
                params[way] = result["params"]
    bw = bandwidth()
    print(f"{platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}; "
          f"read bandwidth {bw / 1e9:.1f} GB/s; {args.rounds} interleaved rounds of {args.steps} steps")
    print(f"{'':12} {'':23} {'median ms':>10} {'ratio':>6} {'floor':>6} {'host MB added':>14}")
    rows = []
    for way in ways:
        plain = statistics.median(cycles[way, "plain"])
        floor = (plain + 2 * 4 * params[way] / bw) / plain  # parameters and gradients read once, float32
        for mode in modes:
            median = statistics.median(cycles[way, mode])
            added = (statistics.median(rss[way, mode]) - statistics.median(rss[way, "plain"])
                     if rss[way, mode] else None)
            rows.append({"way": way, "mode": mode, "params": params[way], "median_ms": median * 1e3,
                         "ratio": median / plain, "floor_ratio": floor, "host_mb_added": added})
            added_text = f"{added:14.0f}" if added is not None else f"{'-':>14}"
            print(f"{way:12} {mode:23} {median * 1e3:10.1f} {median / plain:6.2f} {floor:6.2f} {added_text}")
    with open(args.json, "w") as fh:
        json.dump({"machine": platform.machine(), "cpus": os.cpu_count(), "bandwidth": bw, "rows": rows,
                   "peak_rss_mb": {f"{w} / {m}": v for (w, m), v in rss.items() if v}}, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
