#!/usr/bin/env python3
"""Measure the probe's cost per training step, side by side in one run.

Trains an MLP of about 10M parameters (4 x Dense 1600x1600) with a GRAPH_MODE custom
step on one CPU process, three ways in turn: no probe, recording every step, and
recording every 10th step. Prints the median step time of each and the ratios.

    python scripts/bench/probe.py [--steps 60] [--width 1600]
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

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


def run(width: int, steps: int, every: int | None) -> tuple[float, float]:
    ms.set_seed(0)
    layers = []
    for _ in range(4):
        layers += [nn.Dense(width, width), nn.ReLU()]
    net = nn.SequentialCell(layers)
    optimizer = nn.SGD(net.trainable_params(), learning_rate=1e-3)
    probe = None
    update = optimizer
    if every is not None:
        probe = Probe(net, run_dir=tempfile.mkdtemp(prefix="distcheck-bench-"),
                      options=ProbeOptions(every=every, flush_seconds=2.0), optimizer=optimizer)
        update = probe.wrap(optimizer)
    step_fn = TrainStep(net, nn.MSELoss(), update)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((64, width)).astype(np.float32))
    y = ms.Tensor(np.zeros((64, width), np.float32))
    if probe:
        probe.begin()
    times = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        loss = step_fn(x, y)
        loss.asnumpy()  # wait for the step, as a training loop printing its loss would
        if probe:
            probe.step_end(step, loss, batch=(x, y))
        times.append(time.perf_counter() - start)
    if probe:
        probe.close()
    return statistics.median(times[5:]), statistics.mean(times[5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--width", type=int, default=1600)
    args = ap.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    params = 4 * (args.width * args.width + args.width)
    base = run(args.width, args.steps, None)
    every1 = run(args.width, args.steps, 1)
    every10 = run(args.width, args.steps, 10)
    print(f"{params / 1e6:.1f}M parameters, {os.cpu_count()} CPU(s), {args.steps - 5} timed steps each")
    print(f"  {'':16} {'median ms':>10} {'ratio':>7} {'mean ms':>10} {'ratio':>7}")
    for name, (median, mean) in (("no probe", base), ("every step", every1), ("every 10 steps", every10)):
        print(f"  {name:16} {median * 1e3:10.1f} {median / base[0]:7.3f} {mean * 1e3:10.1f} {mean / base[1]:7.3f}")


if __name__ == "__main__":
    main()
