"""The same training on one device and on N data-parallel ranks: a reference run and its job.

Every run sees the same sequence of *global* batches of 16 rows, built from ``--seed``.
On one device each step takes the whole global batch; on N ranks (msrun) rank r takes
rows r, r+N, r+2N, ... of it, which is what MindSpore's ``DistributedSampler``
(``num_shards=N, shard_id=r``, unshuffled) hands out, and the gradients are averaged
(``gradients_mean=True``). The two runs then compute the same updates, up to the order
of floating-point sums::

    distcheck launch -n 1 --out runs/ref -- python scripts/train_reference.py
    distcheck launch -n 2 --out runs/dp  -- python scripts/train_reference.py
    distcheck diff runs/ref runs/dp

``--bug NAME`` plants a mistake on which every rank agrees, invisible to a cross-rank
check:

  none        the correct job
  sum         gradients summed, not averaged (``gradients_mean=False``)
  loss-scale  the loss multiplied by the world size
  same-shard  every rank reads shard 0 of each global batch
  lr-twice    the learning rate is scaled by the world size twice (N*N on N ranks)
  bn          a BatchNorm1d after the hidden layer, not synchronised: on N ranks it
              normalises over the local batch (16/N rows), on one device over all 16.
              Pass it to the reference run too: there it is simply the model.

An ordinary ``Model.train`` script: it knows nothing about distcheck. Under msrun it
also runs in the scheduler process, which exits inside ``init()``, so nothing is printed
or written before ``init()`` returns.
"""

import argparse
import os

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore import nn, ops
from mindspore.communication import get_group_size, get_rank, init
from mindspore.train import Model

BUGS = ("none", "sum", "loss-scale", "same-shard", "bn", "lr-twice")
GLOBAL_BATCH = 16
NUM_FEATURES = 16
HIDDEN = 32
NUM_CLASSES = 4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40, help="training steps (default 40)")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of Momentum(0.9) (default 0.05)")
    p.add_argument("--seed", type=int, default=1234, help="seeds the weights and the data (default 1234)")
    p.add_argument("--bug", choices=BUGS, default="none", help="planted bug (default none)")
    p.add_argument("--hidden-layers", type=int, choices=(1, 2), default=1,
                   help="hidden layers, each with its own ReLU cell (default 1)")
    return p.parse_args()


class MLP(nn.Cell):
    """16 -> 32 -> 4, optionally with BatchNorm1d after the hidden layer. With
    ``hidden_layers=2``: 16 -> 32 -> ReLU -> 32 -> (BatchNorm1d) -> ReLU -> 4, each ReLU
    its own cell (so ``--activations`` taps each layer), the BatchNorm on the second."""

    def __init__(self, batch_norm: bool = False, hidden_layers: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Dense(NUM_FEATURES, HIDDEN)
        self.relu1 = nn.ReLU() if hidden_layers > 1 else None
        self.hidden = nn.Dense(HIDDEN, HIDDEN) if hidden_layers > 1 else None
        self.bn = nn.BatchNorm1d(HIDDEN) if batch_norm else None
        self.fc2 = nn.Dense(HIDDEN, NUM_CLASSES)
        self.relu = nn.ReLU()

    def construct(self, x):
        x = self.fc1(x)
        if self.hidden is not None:
            x = self.hidden(self.relu1(x))
        if self.bn is not None:
            x = self.bn(x)
        return self.fc2(self.relu(x))


class ScaledLoss(nn.Cell):
    """Bug ``loss-scale``: the loss multiplied by a constant (the world size)."""

    def __init__(self, loss_fn: nn.Cell, factor: float) -> None:
        super().__init__()
        self.loss_fn, self.factor = loss_fn, factor

    def construct(self, logits, labels):
        return ops.mul(self.loss_fn(logits, labels), self.factor)


def global_batches(steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` global batches of 16 rows, row after row: a fixed, learnable problem."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((NUM_FEATURES, NUM_CLASSES)).astype(np.float32)
    x = rng.standard_normal((steps * GLOBAL_BATCH, NUM_FEATURES)).astype(np.float32)
    y = np.argmax(x @ w, axis=1).astype(np.int32)
    return x, y


def create_dataset(args: argparse.Namespace, rank: int, group_size: int) -> ds.Dataset:
    """This rank's shard of every global batch: rows rank::group_size of each."""
    x, y = global_batches(args.steps, args.seed)
    if group_size == 1:
        dataset = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False)
    else:
        shard = 0 if args.bug == "same-shard" else rank
        dataset = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False, num_shards=group_size, shard_id=shard)
    return dataset.batch(GLOBAL_BATCH // group_size, drop_remainder=True)


def launched_distributed() -> bool:
    return "MS_ROLE" in os.environ or "MS_WORKER_NUM" in os.environ


def main() -> None:
    args = parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    rank, group_size = 0, 1
    if launched_distributed():
        init()  # the msrun scheduler process never returns from here
        rank, group_size = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                     gradients_mean=args.bug != "sum")
    if GLOBAL_BATCH % group_size:
        raise SystemExit(f"the global batch of {GLOBAL_BATCH} rows does not split over {group_size} ranks")
    ms.set_seed(args.seed)
    net = MLP(batch_norm=args.bug == "bn", hidden_layers=args.hidden_layers)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    if args.bug == "loss-scale" and group_size > 1:
        loss_fn = ScaledLoss(loss_fn, float(group_size))
    lr = args.lr * group_size * group_size if args.bug == "lr-twice" and group_size > 1 else args.lr
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=lr, momentum=0.9)
    model = Model(net, loss_fn=loss_fn, optimizer=optimizer)
    print(f"rank {rank}/{group_size} bug={args.bug} lr={args.lr} steps={args.steps}", flush=True)
    model.train(1, create_dataset(args, rank, group_size), dataset_sink_mode=False)
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main()
