"""Train a tiny network with the Probe recording every 3rd update, and print, for each
recorded step, the L2 norm of the gradients the probe recorded and of the gradients
computed independently for that step (JSON). Run by test_custom_loop.py."""
import json
import sys

import numpy as np

import mindspore as ms
from mindspore import nn

from distcheck.mindspore import Probe
from distcheck.recording import ProbeOptions
from distcheck.store.reader import DumpReader


class Step(nn.Cell):
    def __init__(self, net_with_loss, update, weights):
        super().__init__(auto_prefix=False)
        self.grad_fn = ms.value_and_grad(net_with_loss, None, weights)
        self.update = update

    def construct(self, x, y):
        loss, grads = self.grad_fn(x, y)
        self.update(grads)
        return loss


def main(run_dir):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    net = nn.Dense(6, 3)
    net_with_loss = nn.WithLossCell(net, nn.MSELoss())
    optimizer = nn.SGD(net.trainable_params(), learning_rate=0.1)
    probe = Probe(net, run_dir=run_dir, options=ProbeOptions(every=3))
    step = Step(net_with_loss, probe.wrap(optimizer), optimizer.parameters)
    truth_fn = ms.value_and_grad(net_with_loss, None, optimizer.parameters)  # no update
    rng = np.random.default_rng(0)
    truth = {}
    probe.begin()
    for s in range(1, 8):
        x = ms.Tensor(rng.standard_normal((4, 6)).astype(np.float32))
        y = ms.Tensor(rng.standard_normal((4, 3)).astype(np.float32))
        _, grads = truth_fn(x, y)
        truth[s] = [float(np.linalg.norm(g.asnumpy())) for g in grads]
        loss = step(x, y)
        probe.step_end(s, loss)
    probe.close()
    with DumpReader(f"{run_dir}/rank_00000.h5") as reader:
        recorded = {int(st): [float(v) for v in reader.stats("grad", i, i + 1)[0, :, 3]]
                    for i, st in enumerate(reader.steps) if st > 0}
    print(json.dumps({"recorded": recorded, "truth": {s: truth[s] for s in recorded}}))


if __name__ == "__main__":
    main(sys.argv[1])
