"""Train the tiny MLP of train_mlp.py with a hand-written loop, checked by distcheck.

The training step is an ``nn.Cell`` (GRAPH_MODE): ``ms.value_and_grad`` for
the gradients, ``nn.DistributedGradReducer`` to average them across ranks
when distributed, then the optimizer. This is the pattern for loops that do
not use ``Model.train``; distcheck is attached explicitly with a ``Probe``
(the lines marked ``# distcheck``).

Run it alone::

    DISTCHECK_RUN_DIR=run python scripts/custom_loop.py

or data-parallel with msrun::

    DISTCHECK_RUN_DIR=run msrun --worker_num=2 --local_worker_num=2 \\
        --master_port=8118 --log_dir=msrun_log --join=True scripts/custom_loop.py

``--no-probe`` trains without distcheck. ``--bug`` plants a mistake on one
rank (``--bug-rank``, default the last): ``seed`` (other initial weights),
``lr`` (other learning rate) or ``noreduce`` (all ranks forget the gradient
reducer).

As in train_mlp.py, nothing is printed or written before ``init()`` returns,
because msrun also runs this file in its scheduler process.
"""

import argparse

import mindspore as ms
import mindspore.dataset as ds
from mindspore import nn
from mindspore.communication import get_group_size, get_rank, init

from train_mlp import MLP, launched_distributed, synthetic_data


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12, help="training steps (default 12)")
    p.add_argument("--batch-size", type=int, default=16, help="per-rank batch size")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-probe", action="store_true", help="train without distcheck")
    p.add_argument("--bug", choices=("none", "seed", "lr", "noreduce"), default="none")
    p.add_argument("--bug-rank", type=int, default=-1, help="rank with the bug (default: last)")
    return p.parse_args()


class TrainStep(nn.Cell):
    """One step: forward, backward, all-reduce the gradients, update."""

    def __init__(self, net_with_loss, optimizer, update=None, reduce_grads=False):
        super().__init__(auto_prefix=False)
        self.net_with_loss = net_with_loss
        self.weights = optimizer.parameters
        self.update = optimizer if update is None else update
        self.grad_fn = ms.value_and_grad(net_with_loss, None, self.weights)
        self.reduce_grads = reduce_grads
        if reduce_grads:
            self.grad_reducer = nn.DistributedGradReducer(self.weights)

    def construct(self, x, y):
        loss, grads = self.grad_fn(x, y)
        if self.reduce_grads:
            grads = self.grad_reducer(grads)
        self.update(grads)
        return loss


def main():
    args = parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")

    distributed = launched_distributed()
    if distributed:
        init()  # the msrun scheduler process never returns from here
        rank, group_size = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                     gradients_mean=True)
    else:
        rank, group_size = 0, 1
    on_bug_rank = rank == args.bug_rank % group_size and args.bug != "none"

    ms.set_seed(args.seed + 1000 if on_bug_rank and args.bug == "seed" else args.seed)
    net = MLP()
    net_with_loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    lr = args.lr * 2 if on_bug_rank and args.bug == "lr" else args.lr
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=lr, momentum=0.9)

    x, y = synthetic_data(args.steps * args.batch_size * group_size)
    dataset = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False,
                                    num_shards=group_size, shard_id=rank)
    dataset = dataset.batch(args.batch_size, drop_remainder=True)

    probe = None
    update = None
    if not args.no_probe:
        from distcheck.mindspore import Probe  # distcheck
        probe = Probe(net)  # distcheck (run dir: run_dir=..., or $DISTCHECK_RUN_DIR)
        update = probe.wrap(optimizer)  # distcheck

    train_step = TrainStep(net_with_loss, optimizer, update,
                           reduce_grads=distributed and args.bug != "noreduce")
    train_step.set_train()

    print(f"rank {rank}/{group_size} bug={args.bug} steps={args.steps} "
          f"probe={probe is not None}", flush=True)
    if probe:
        probe.begin()  # distcheck
    for step, (xb, yb) in enumerate(dataset.create_tuple_iterator(num_epochs=1), start=1):
        loss = train_step(xb, yb)
        print(f"rank {rank} step {step} loss {float(loss.asnumpy()):.6f}", flush=True)
        if probe:
            probe.step_end(step, loss, batch=(xb, yb))  # distcheck
    if probe:
        probe.close()  # distcheck
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main()
