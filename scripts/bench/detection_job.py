"""One data-parallel MindSpore training job with a fault planted at a chosen step, rank
and parameter: the job the detection benchmark (``scripts/bench/detection.py``) runs.

An ordinary ``Model.train`` script that knows nothing about distcheck: run it under
``distcheck launch`` (or plain ``msrun``)::

    distcheck launch -n 3 -- python scripts/bench/detection_job.py --net transformer \\
        --fault bitflip_exp --fault-step 7 --fault-rank 1 --fault-param 3

Networks, each with its own optimizer:

  mlp          16 -> 32 -> 4, Momentum(0.9) (``--optimizer sgd``: plain SGD)
  cnn          two 3x3 convolutions with BatchNorm2d (not synchronised), Momentum(0.9)
  transformer  Dense -> nn.TransformerEncoder (1 layer, 2 heads, dropout 0.1) -> Dense,
               AdamWeightDecay with a linear warm-up of the learning rate

The data are synthetic and deterministic from ``--data-seed``: one global batch of
``N * --batch-size`` rows per step, of which rank r reads rows r, r+N, ... (each rank
its own shard). ``--fault NAME`` plants one fault on rank ``--fault-rank`` (modulo N):

  none              a healthy run
  seed              the fault rank seeds its weights differently
  stale_checkpoint  every rank saves a checkpoint (weights and optimizer state) at
                    step S-2; at step S the fault rank loads it back
  no_reduce         the fault rank applies its local gradient of parameter P, not the
                    all-reduced one (a train cell that takes P's gradient before its
                    reduction there; a flag column of the batch says where)
  lr                from update S on, the fault rank's learning rate is doubled
  weight_decay      the fault rank's optimizer has ten times the weight decay
  opt_reset         before update S the fault rank zeroes its optimizer state
  bitflip_exp       after update S one bit flips in one element of P on the fault
                    rank: the highest exponent bit
  bitflip_lsb       the same with the lowest mantissa bit
  nudge             after update S the fault rank adds 1e-3 to three elements of P
  dropout_rng       the fault rank's dropout layers draw from another random stream
                    (transformer)
  unsharded         every rank reads the same data
  inf_batch         one input value of the fault rank's batch of step S is Inf
  frozen            parameter P is frozen (requires_grad=False) on every rank, and the
                    fault rank loads other values into it
  bn_unsynced       the CNN's BatchNorm is not synchronised (this is the CNN itself)
  kill              the fault rank SIGKILLs itself at the end of step S
  stall             the fault rank's callback never returns at the end of step S
  grad_sum          gradients summed, not averaged (``gradients_mean=False``)

``--fault-param`` is an index into the trainable parameters (taken modulo their
number) or a parameter name; ``--fault-element`` an index into its elements. With
``--describe-fault FILE`` the fault rank writes what it did (parameter names, step,
the time of the injection) as JSON, and every rank adds its training time, so that
a scorer knows exactly what to expect.

Steps are counted from 1, like ``cur_step_num``. Under msrun this file also runs in
the scheduler process, which exits inside ``init()``: nothing is written before it.
"""

import argparse
import json
import os
import signal
import time

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore import nn, ops
from mindspore.communication import get_group_size, get_rank, init
from mindspore.train import Callback, Model

NETS = ("mlp", "cnn", "transformer")
FAULTS = ("none", "seed", "stale_checkpoint", "no_reduce", "lr", "weight_decay", "opt_reset",
          "bitflip_exp", "bitflip_lsb", "nudge", "dropout_rng", "unsharded", "inf_batch", "frozen",
          "bn_unsynced", "kill", "stall", "grad_sum")
NUM_CLASSES = 4
STALE_BY = 2  # stale_checkpoint: the checkpoint loaded at step S is from step S - STALE_BY


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--net", choices=NETS, default="mlp")
    p.add_argument("--optimizer", choices=("momentum", "sgd"), default="momentum", help="mlp only")
    p.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    p.add_argument("--batch-size", type=int, default=16, help="per-rank batch size (default 16)")
    p.add_argument("--seed", type=int, default=1234, help="weight seed (default 1234)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    p.add_argument("--fault", choices=FAULTS, default="none")
    p.add_argument("--fault-step", type=int, default=5, help="step S of the fault (default 5)")
    p.add_argument("--fault-rank", type=int, default=-1, help="rank with the fault (default: last)")
    p.add_argument("--fault-param", default="0", help="index into the trainable parameters, or a name")
    p.add_argument("--fault-element", type=int, default=0, help="element of the parameter (modulo its size)")
    p.add_argument("--describe-fault", metavar="FILE", help="write the fault and the training time as JSON")
    return p.parse_args()


def launched_distributed() -> bool:
    return "MS_ROLE" in os.environ or "MS_WORKER_NUM" in os.environ


# -- networks -----------------------------------------------------------------------
class MLP(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Dense(16, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Dense(32, NUM_CLASSES)

    def construct(self, x):
        return self.fc2(self.relu(self.fc1(x)))


class CNN(nn.Cell):
    """1x8x8 images: conv-BN-ReLU-pool, conv-BN-ReLU, global average, dense."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, pad_mode="same", has_bias=True)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, pad_mode="same", has_bias=True)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Dense(16, NUM_CLASSES)

    def construct(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(axis=(2, 3)))


class TinyTransformer(nn.Cell):
    """Sequences of 8 vectors of 8 features: Dense to 16, one encoder layer, mean, Dense."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Dense(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1)
        self.head = nn.Dense(16, NUM_CLASSES)

    def construct(self, x):
        return self.head(self.encoder(self.embed(x)).mean(axis=1))


INPUT_SHAPES = {"mlp": (16,), "cnn": (1, 8, 8), "transformer": (8, 8)}


def build_net(name: str) -> nn.Cell:
    return {"mlp": MLP, "cnn": CNN, "transformer": TinyTransformer}[name]()


def build_optimizer(args, net: nn.Cell, heavier_decay: bool) -> nn.Optimizer:
    params = net.trainable_params()
    if args.net == "transformer":
        # AdamW: decay on the matrices only, linear warm-up over the first 10 steps.
        wd = 0.01 * (10 if heavier_decay else 1)
        groups = [{"params": [p for p in params if len(p.shape) > 1], "weight_decay": wd},
                  {"params": [p for p in params if len(p.shape) <= 1], "weight_decay": 0.0}]
        warmup = 10
        lr = [1e-2 * min(1.0, (i + 1) / warmup) for i in range(args.steps)]
        return nn.AdamWeightDecay(groups, learning_rate=lr)
    wd = 1e-4 * (10 if heavier_decay else 1)
    lr = 0.1 if args.net == "mlp" else 0.05
    if args.net == "mlp" and args.optimizer == "sgd":
        return nn.SGD(params, learning_rate=lr, weight_decay=wd)
    return nn.Momentum(params, learning_rate=lr, momentum=0.9, weight_decay=wd)


# -- data ---------------------------------------------------------------------------
def synthetic_data(net: str, rows: int, seed: int):
    """A classification problem each network can learn: labels from a fixed random linear
    teacher over what the network keeps (the transformer averages over positions; the
    CNN's global pooling keeps which of four small patterns was planted, not where)."""
    rng = np.random.default_rng(seed)
    shape = INPUT_SHAPES[net]
    x = rng.standard_normal((rows,) + shape).astype(np.float32)
    if net == "cnn":
        patterns = rng.standard_normal((NUM_CLASSES, 3, 3)).astype(np.float32) * 2
        y = rng.integers(NUM_CLASSES, size=rows).astype(np.int32)
        corners = rng.integers(0, 6, size=(rows, 2))
        for i in range(rows):
            r, c = corners[i]
            x[i, 0, r:r + 3, c:c + 3] += patterns[y[i]]
        return x, y
    features = x.mean(axis=1) if net == "transformer" else x
    teacher = rng.standard_normal((features.shape[1], NUM_CLASSES)).astype(np.float32)
    return x, np.argmax(features @ teacher, axis=1).astype(np.int32)


def create_dataset(args, rank: int, group_size: int, sharded: bool, inf_at_step, local=None):
    """``local``: add a column of that value (no_reduce: 1 on the fault rank, else 0)."""
    x, y = synthetic_data(args.net, args.steps * args.batch_size * group_size, args.data_seed)
    columns = {"x": x, "y": y}
    if local is not None:
        columns["local"] = np.full(len(y), local, np.float32)
    if sharded:  # rank r reads rows r, r+N, ...: its share of every global batch
        dataset = ds.NumpySlicesDataset(columns, shuffle=False, num_shards=group_size, shard_id=rank)
    else:
        dataset = ds.NumpySlicesDataset(columns, shuffle=False)
    if inf_at_step is None:
        dataset = dataset.batch(args.batch_size, drop_remainder=True)
    else:
        def put_inf(xs, ys, info):
            if info.get_batch_num() + 1 == inf_at_step:
                xs = [v.copy() for v in xs]
                xs[0].reshape(-1)[0] = np.inf
            return xs, ys
        dataset = dataset.batch(args.batch_size, drop_remainder=True, per_batch_map=put_inf,
                                input_columns=["x", "y"])
    return dataset.take(args.steps)


# -- faults inside the step -------------------------------------------------------------
class PartlyReducedStep(nn.TrainOneStepCell):
    """A train step whose optimizer gets, for parameter ``index``, the local gradient
    where the batch's ``local`` column is 1 (the fault rank) and the all-reduced one where
    it is 0. Every rank runs the same graph and the same AllReduces in the same order:
    a graph that skipped one AllReduce on one rank would pair the ranks' collectives
    wrongly, and the job would crash (on CPU) or hang instead of diverging."""

    def __init__(self, network, optimizer, index: int):
        super().__init__(network, optimizer)
        self.index = index

    def construct(self, x, y, local):
        loss = self.network(x, y)
        sens = ops.fill(loss.dtype, loss.shape, self.sens)
        grads = self.grad(self.network, self.weights)(x, y, sens)
        reduced = self.grad_reducer(grads)
        share = local[0]
        mixed = grads[self.index] * share + reduced[self.index] * (1 - share)
        reduced = reduced[:self.index] + (mixed,) + reduced[self.index + 1:]
        return ops.depend(loss, self.optimizer(reduced))


# -- faults from callbacks -------------------------------------------------------------
class AtStep(Callback):
    """Calls ``action()`` once, at the beginning (before the update) or the end (after
    it, before the step is recorded) of step ``step``."""

    def __init__(self, step: int, action, when: str = "end"):
        super().__init__()
        self.step, self.action, self.when = step, action, when

    def _maybe(self, run_context):
        if run_context.original_args().cur_step_num == self.step:
            self.action()

    def on_train_step_begin(self, run_context):
        if self.when == "begin":
            self._maybe(run_context)

    def on_train_step_end(self, run_context):
        if self.when == "end":
            self._maybe(run_context)


def flip_bit(param, element: int, bit: int) -> None:
    """Flip one bit of one element of ``param`` (float32 or float16) in place."""
    values = param.asnumpy().copy()
    words = values.reshape(-1).view(np.uint16 if values.dtype == np.float16 else np.uint32)
    words[element] ^= words.dtype.type(1 << bit)
    param.set_data(ms.Tensor(values))


def optimizer_state(optimizer) -> list:
    return [p for name, p in optimizer.parameters_and_names()
            if name.startswith(("moments.", "adam_m.", "adam_v.", "accum."))]


def trained_state(net, optimizer) -> list:
    """What a checkpoint holds: the network's parameters and the optimizer's state."""
    return list(net.get_parameters()) + optimizer_state(optimizer)


def save_state(path: str, params: list) -> None:
    ms.save_checkpoint([{"name": p.name, "data": ms.Tensor(p.asnumpy())} for p in params], path)


def load_state(path: str, params: list) -> None:
    saved = ms.load_checkpoint(path)
    for p in params:
        p.set_data(ms.Tensor(saved[p.name].asnumpy()))


def learning_rate_parameter(optimizer):
    return next(p for name, p in optimizer.parameters_and_names() if name.split(".")[-1] == "learning_rate")


def reseed_dropout(net: nn.Cell, offset: int) -> int:
    """Give every nn.Dropout of ``net`` another random stream; returns how many."""
    count = 0
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.Dropout):
            seed0, seed1 = cell.dropout.Seed0, cell.dropout.Seed1
            cell.dropout = ops.Dropout(cell.dropout.keep_prob, seed0 + offset, seed1 + offset)
            count += 1
    return count


class Kill(Callback):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_step_end(self, run_context):
        if run_context.original_args().cur_step_num == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class Stall(Callback):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_step_end(self, run_context):
        if run_context.original_args().cur_step_num == self.step:
            while True:
                time.sleep(1)


# -- main ----------------------------------------------------------------------------
def resolve_param(net: nn.Cell, spec: str):
    params = net.trainable_params()
    if spec.lstrip("-").isdigit():
        return params[int(spec) % len(params)]
    return next(p for p in params if p.name == spec)


def main() -> None:
    args = parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    if launched_distributed():
        init()  # the msrun scheduler process never returns from here
        rank, group_size = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                     gradients_mean=args.fault != "grad_sum")
    else:
        rank, group_size = 0, 1
    fault_rank = args.fault_rank % group_size
    on_fault_rank = rank == fault_rank and args.fault != "none"
    fault = args.fault if on_fault_rank else "none"
    record = {"fault": args.fault, "net": args.net, "rank": fault_rank, "step": args.fault_step}

    seed = args.seed + 1000 if fault == "seed" else args.seed
    ms.set_seed(args.seed)
    net = build_net(args.net)
    if fault == "seed":  # which parameters the other seed changes
        ms.set_seed(seed)
        other = build_net(args.net)
        record["params"] = [p.name for p, q in zip(net.get_parameters(), other.get_parameters())
                            if not np.array_equal(p.asnumpy(), q.asnumpy())]
        net = other

    target = resolve_param(net, args.fault_param)
    element = args.fault_element % int(np.prod(target.shape))
    if args.fault == "frozen":  # frozen on every rank; other values on the fault rank
        target.requires_grad = False
        if fault == "frozen":
            target.set_data(ms.Tensor(target.asnumpy() + 0.01))
        record["params"] = [target.name]
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    optimizer = build_optimizer(args, net, heavier_decay=fault == "weight_decay")
    if args.fault == "weight_decay":
        record["params"] = [p.name for p, decays in zip(optimizer._parameters, optimizer.decay_flags) if decays]
    if args.fault == "no_reduce":
        index = [p.name for p in optimizer._parameters].index(target.name)
        model = Model(PartlyReducedStep(nn.WithLossCell(net, loss_fn), optimizer, index))
        record["params"] = [target.name]
    else:
        model = Model(net, loss_fn=loss_fn, optimizer=optimizer)

    dataset = create_dataset(args, rank, group_size, sharded=args.fault != "unsharded",
                             inf_at_step=args.fault_step if fault == "inf_batch" else None,
                             local=(1.0 if fault == "no_reduce" else 0.0) if args.fault == "no_reduce" else None)

    def describe(**extra):
        record.update(extra)
        if args.describe_fault:
            with open(f"{args.describe_fault}.rank{rank}", "w", encoding="utf-8") as f:
                json.dump(record, f)

    def noted(action, **what):
        def run():
            action()
            describe(**what, injected_at=time.time())
        return run

    callbacks = []
    trainable = [p.name for p in net.trainable_params()]
    if args.fault == "stale_checkpoint":
        path = f"stale_rank{rank}.ckpt"  # in the working directory
        state = trained_state(net, optimizer)
        callbacks.append(AtStep(args.fault_step - STALE_BY, lambda: save_state(path, state)))
        if fault == "stale_checkpoint":
            callbacks.append(AtStep(args.fault_step, noted(lambda: load_state(path, state), params=trainable)))
    elif fault == "lr":
        lr = learning_rate_parameter(optimizer)
        callbacks.append(AtStep(args.fault_step, noted(lambda: lr.set_data(ms.Tensor(lr.asnumpy() * 2)),
                                                       params=trainable), when="begin"))
    elif fault == "opt_reset":
        def reset():
            for p in optimizer_state(optimizer):
                p.set_data(ms.Tensor(np.zeros(p.shape, np.float32)))
        callbacks.append(AtStep(args.fault_step, noted(reset, params=trainable), when="begin"))
    elif fault in ("bitflip_exp", "bitflip_lsb"):
        bits = 16 if target.dtype == ms.float16 else 32
        bit = bits - 2 if fault == "bitflip_exp" else 0
        callbacks.append(AtStep(args.fault_step, noted(lambda: flip_bit(target, element, bit),
                                                       params=[target.name], element=element, bit=bit)))
    elif fault == "nudge":
        def nudge():
            values = target.asnumpy().copy().reshape(-1)
            where = [(element + k * 7) % values.size for k in range(3)]
            values[where] += 1e-3
            target.set_data(ms.Tensor(values.reshape(target.shape)))
        callbacks.append(AtStep(args.fault_step, noted(nudge, params=[target.name], element=element)))
    elif fault == "dropout_rng":
        record["dropout_layers"] = reseed_dropout(net, 7)
    elif fault == "kill":
        callbacks.append(Kill(args.fault_step))
    elif fault == "stall":
        callbacks.append(Stall(args.fault_step))

    if on_fault_rank or args.fault == "none":
        describe()  # before training: a killed or stalled rank still tells
    started = time.monotonic()
    model.train(1, dataset, callbacks=callbacks, dataset_sink_mode=False)
    describe(train_seconds=time.monotonic() - started, world=group_size)
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main()
