"""Train a small classifier with MindSpore ``Model.train`` and gradient accumulation.

An ordinary user script that knows nothing about distcheck: its train cell adds up the
gradients of ``--accumulate`` micro-batches and calls the optimizer once per group, as
large-batch training on small devices does. ``Model.train``'s ``cur_step_num`` counts
micro-steps; only one step in ``--accumulate`` updates the weights::

    python scripts/train_accumulate.py --accumulate 4 --steps 80
"""

import argparse

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore import Parameter, Tensor, nn, ops
from mindspore.train import Model


class AccumulatingStep(nn.TrainOneStepCell):
    """Adds up gradients over ``k`` micro-steps, then applies them in one update."""

    def __init__(self, network, optimizer, k):
        super().__init__(network, optimizer)
        self.k = k
        self.accumulated = self.weights.clone(prefix="accumulated", init="zeros")
        self.micro = Parameter(Tensor(0, ms.int32), name="micro", requires_grad=False)
        self.hyper_map = ops.HyperMap()

    def construct(self, *inputs):
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, 1.0)
        grads = self.grad_reducer(self.grad(self.network, self.weights)(*inputs, sens))
        loss = ops.depend(loss, self.hyper_map(ops.assign_add, self.accumulated, grads))
        loss = ops.depend(loss, ops.assign_add(self.micro, 1))
        if self.micro % self.k == 0:
            loss = ops.depend(loss, self.optimizer(self.accumulated))
            zeros = self.hyper_map(ops.zeros_like, self.accumulated)
            loss = ops.depend(loss, self.hyper_map(ops.assign, self.accumulated, zeros))
        return loss


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accumulate", type=int, default=4, help="micro-steps per update (default 4)")
    p.add_argument("--steps", type=int, default=80, help="micro-steps in all (default 80)")
    args = p.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(1234)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.steps * 16, 16)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((16, 4)), axis=1).astype(np.int32)
    net = nn.SequentialCell([nn.Dense(16, 32), nn.ReLU(), nn.Dense(32, 4)])
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.02, momentum=0.9)
    step = AccumulatingStep(nn.WithLossCell(net, loss_fn), optimizer, args.accumulate)
    data = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(16)
    Model(step).train(1, data, dataset_sink_mode=False)


if __name__ == "__main__":
    main()
