"""The Model.train job the probe benchmark times: an MLP of about 10.5M parameters
(4 x Dense 1600x1600, plus a Dense 1600x64 head), batch 64, CPU, GRAPH_MODE, no
change for distcheck. Writes each step's cycle time (from one step's end to the
next's) and the process's peak RSS to the JSON file given.

    python scripts/bench/model_train_job.py OUT.json [--steps 60]
"""
import argparse
import json
import resource
import time

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore import nn
from mindspore.train import Callback, Model

WIDTH, OUT, BATCH = 1600, 64, 64


class StepClock(Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_step_end(self, run_context):
        run_context.original_args().net_outputs.asnumpy()  # wait for the step, as printing the loss would
        self.ends.append(time.perf_counter())


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss survives exec, so a
    large parent would show through it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    layers = []
    for _ in range(4):
        layers += [nn.Dense(WIDTH, WIDTH), nn.ReLU()]
    net = nn.SequentialCell(layers + [nn.Dense(WIDTH, OUT)])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH * 4, WIDTH)).astype(np.float32)
    y = rng.integers(0, OUT, BATCH * 4).astype(np.int32)
    data = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(BATCH).repeat(-(-args.steps // 4))
    model = Model(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                  nn.SGD(net.trainable_params(), learning_rate=1e-3))
    clock = StepClock()
    model.train(1, data, callbacks=[clock], dataset_sink_mode=False)
    params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    with open(args.out, "w") as fh:
        json.dump({"cycles": list(np.diff(clock.ends)), "params": params,
                   "peak_rss_mb": peak_rss_mb()}, fh)


if __name__ == "__main__":
    main()
