"""A hand-written hybrid job: 2-way model parallel x 3-way data parallel on 6 ranks.

The network is Dense(16, 32) -> ReLU -> ``mid`` -> ReLU -> Dense(32, 4). ``mid`` is a
column-parallel Dense(32, 32): rank r holds half of its output units, shard r % 2, and
the halves are combined across each model-parallel pair ({0, 1}, {2, 3}, {4, 5}) with a
zero-padded group AllReduce (on CPU, AllGather has no backward kernel). The two ranks of
a pair read the same batch; the three pairs read different shards of the data.

Gradients are averaged by hand: ``mid``'s over its data-parallel group ({0, 2, 4} or
{1, 3, 5}), the replicated layers' over all six ranks. So the ranks that must agree on
``mid.*`` are {0, 2, 4} and {1, 3, 5}, and on everything else all six: the replica
groups declared in ``configs/hybrid-2x3.yaml``. distcheck is attached with a Probe
(the lines marked ``# distcheck``)::

    distcheck launch -n 6 --config configs/hybrid-2x3.yaml -- python scripts/train_hybrid.py

``--bug seed`` initialises the bug rank's shard of ``mid`` from another seed (the bug
rank is 4 by default: a replica of shard 0); ``--bug nudge`` adds 1e-4 to the bug
rank's ``head.weight`` just before update ``--bug-step``. ``--bug shard-sum`` sums the
gradients of shard ``--bug-shard`` of ``mid`` over its data-parallel group instead of
averaging them, on every rank of that group: its replicas agree, so only a reference
run can see it. ``--bug tp-backward`` forgets that the backward of ``mid``'s AllReduce
sums the pair's output gradients: ``mid``'s gradients are MP (2) times too large on
every rank.

The one-device equivalent (the reference for ``distcheck diff``): run without msrun, the
same network holds ``mid`` whole and each step takes the global batch, the union of the
``--data-parallel`` pairs' batches::

    distcheck launch -n 1 --out runs/ref -- python scripts/train_hybrid.py
    distcheck launch -n 6 --out runs/hybrid --config configs/hybrid-2x3.yaml -- python scripts/train_hybrid.py
    distcheck diff runs/ref runs/hybrid

As in train_mlp.py, nothing is printed or written before ``init()`` returns, because
msrun also runs this file in its scheduler process.
"""

import argparse
import os

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore import Parameter, Tensor, nn, ops
from mindspore.communication import create_group, get_group_size, get_rank, init

from train_mlp import synthetic_data

MP = 2  # model-parallel ways
IN, HIDDEN, OUT = 16, 32, 4


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12, help="training steps (default 12)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of each model-parallel pair")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--bug", choices=("none", "seed", "nudge", "shard-sum", "tp-backward"), default="none")
    p.add_argument("--bug-rank", type=int, default=4, help="rank with the bug (default 4)")
    p.add_argument("--bug-step", type=int, default=5, help="update before which nudge strikes (default 5)")
    p.add_argument("--bug-shard", type=int, default=1, help="shard of mid whose gradients shard-sum sums (default 1)")
    p.add_argument("--data-parallel", type=int, default=3,
                   help="without msrun: the pairs whose batches make the global batch (default 3)")
    return p.parse_args()


class ColumnParallelDense(nn.Cell):
    """Shard ``shard`` of ``MP`` of a Dense(in, out)'s output units, combined over ``group``."""

    def __init__(self, full_weight, full_bias, shard, group):
        super().__init__()
        width = full_weight.shape[0] // MP
        rows = slice(shard * width, (shard + 1) * width)
        self.weight = Parameter(Tensor(full_weight[rows]), name="weight")
        self.bias = Parameter(Tensor(full_bias[rows]), name="bias")
        place = np.zeros((width, full_weight.shape[0]), np.float32)  # puts the shard's columns in place
        place[:, rows] = np.eye(width, dtype=np.float32)
        self.place = Tensor(place)
        self.combine = ops.AllReduce(group=group)

    def construct(self, x):
        local = ops.matmul(x, self.weight.T) + self.bias
        return self.combine(ops.matmul(local, self.place))


class WholeDense(nn.Cell):
    """``mid`` on one device: the Dense(32, 32) whose output units the ranks split."""

    def __init__(self, full_weight, full_bias):
        super().__init__()
        self.weight = Parameter(Tensor(full_weight), name="weight")
        self.bias = Parameter(Tensor(full_bias), name="bias")

    def construct(self, x):
        return ops.matmul(x, self.weight.T) + self.bias


class HybridMLP(nn.Cell):
    def __init__(self, mid_weight, mid_bias, shard, mp_group):
        super().__init__()
        self.fc1 = nn.Dense(IN, HIDDEN)
        self.mid = (WholeDense(mid_weight, mid_bias) if mp_group is None
                    else ColumnParallelDense(mid_weight, mid_bias, shard, mp_group))
        self.head = nn.Dense(HIDDEN, OUT)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.head(self.relu(self.mid(self.relu(self.fc1(x)))))


class TrainStep(nn.Cell):
    """Forward, backward, reduce each gradient over its own group, update. ``shard_divisor``
    divides the sharded gradients' sum over ``dp_group``; on one device (``dp_group`` None)
    nothing is reduced."""

    def __init__(self, net_with_loss, optimizer, update, sharded, dp_group, world, shard_divisor):
        super().__init__(auto_prefix=False)
        self.weights = optimizer.parameters
        self.update = update
        self.grad_fn = ms.value_and_grad(net_with_loss, None, self.weights)
        self.sharded = tuple(sharded)
        self.distributed = dp_group is not None
        if self.distributed:
            self.over_dp = ops.AllReduce(group=dp_group)
            self.over_all = ops.AllReduce()
        self.shard_divisor, self.world = float(shard_divisor), float(world)

    def construct(self, x, y):
        loss, grads = self.grad_fn(x, y)
        if not self.distributed:
            self.update(grads)
            return loss
        reduced = ()
        for i in range(len(grads)):
            if self.sharded[i]:
                reduced += (self.over_dp(grads[i]) / self.shard_divisor,)
            else:
                reduced += (self.over_all(grads[i]) / self.world,)
        self.update(reduced)
        return loss


def main():
    args = parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    if "MS_ROLE" not in os.environ and "MS_WORKER_NUM" not in os.environ:
        return one_device(args)
    init()  # the msrun scheduler process never returns from here
    rank, world = get_rank(), get_group_size()
    if world % MP:
        raise SystemExit(f"train_hybrid.py needs a multiple of {MP} ranks, got {world}")
    dp = world // MP
    shard, pair = rank % MP, rank // MP
    mp_group, dp_group = f"mp_{pair}", f"dp_{shard}"
    create_group(mp_group, [pair * MP + j for j in range(MP)])
    create_group(dp_group, [shard + MP * i for i in range(dp)])
    on_bug_rank = rank == args.bug_rank and args.bug != "none"
    # The backward of ``mid``'s forward AllReduce is an AllReduce too: it sums the pair's
    # identical output gradients, so each rank's ``mid`` gradient is MP times its share.
    # Averaging over the data-parallel group therefore divides by dp * MP. (The gradient
    # ``mid`` passes back to ``fc1`` is MP times this shard's part, and averaging ``fc1``
    # over all the ranks of a pair adds the shards' parts: that one comes out right.)
    shard_divisor = dp * MP
    if args.bug == "tp-backward":  # forgets that: mid's gradients MP times too large on every rank
        shard_divisor = dp
    if args.bug == "shard-sum" and shard == args.bug_shard:
        shard_divisor = MP

    ms.set_seed(args.seed)
    rng = np.random.default_rng(args.seed + 1 if on_bug_rank and args.bug == "seed" else args.seed)
    mid_weight = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    mid_bias = np.zeros(HIDDEN, np.float32)
    net = HybridMLP(mid_weight, mid_bias, shard, mp_group)
    net_with_loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    optimizer = nn.SGD(net.trainable_params(), learning_rate=args.lr)

    from distcheck.mindspore import Probe  # distcheck
    probe = Probe(net)  # distcheck: replica groups from --config (or Probe(..., replica_groups=...))
    update = probe.wrap(optimizer)  # distcheck

    sharded = [p.name.startswith("mid.") for p in optimizer.parameters]
    train_step = TrainStep(net_with_loss, optimizer, update, sharded, dp_group, world, shard_divisor)
    train_step.set_train()

    x, y = synthetic_data(args.steps * args.batch_size * dp)
    dataset = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False, num_shards=dp, shard_id=pair)
    dataset = dataset.batch(args.batch_size, drop_remainder=True)

    print(f"rank {rank}/{world} shard {shard} pair {pair} bug={args.bug}", flush=True)
    probe.begin()  # distcheck
    for step, (xb, yb) in enumerate(dataset.create_tuple_iterator(num_epochs=1), start=1):
        if on_bug_rank and args.bug == "nudge" and step == args.bug_step:
            net.head.weight.set_data(Tensor(net.head.weight.asnumpy() + np.float32(1e-4)))
        loss = train_step(xb, yb)
        probe.step_end(step, loss, batch=(xb, yb))  # distcheck
    probe.close()  # distcheck
    print(f"rank {rank} done", flush=True)


def one_device(args):
    """The reference: the same network with ``mid`` whole, each step on the global batch
    (the ``--data-parallel`` pairs' batches together), no reduction."""
    dp = args.data_parallel
    ms.set_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    mid_weight = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    net = HybridMLP(mid_weight, np.zeros(HIDDEN, np.float32), 0, None)
    net_with_loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    optimizer = nn.SGD(net.trainable_params(), learning_rate=args.lr)

    from distcheck.mindspore import Probe  # distcheck
    probe = Probe(net)  # distcheck
    update = probe.wrap(optimizer)  # distcheck

    train_step = TrainStep(net_with_loss, optimizer, update, [False] * len(optimizer.parameters), None, 1, 1)
    train_step.set_train()
    x, y = synthetic_data(args.steps * args.batch_size * dp)
    # The pairs read rows pair, pair + dp, ... in batches of --batch-size: step s of every
    # pair together is rows s * batch_size * dp ... (s + 1) * batch_size * dp - 1.
    dataset = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(args.batch_size * dp, drop_remainder=True)
    print(f"one device, global batch {args.batch_size * dp}", flush=True)
    probe.begin()  # distcheck
    for step, (xb, yb) in enumerate(dataset.create_tuple_iterator(num_epochs=1), start=1):
        loss = train_step(xb, yb)
        probe.step_end(step, loss, batch=(xb, yb))  # distcheck
    probe.close()  # distcheck
    print("one device done", flush=True)


if __name__ == "__main__":
    main()
