"""Train a small classifier with MindSpore ``Model.train``, with one planted accuracy problem.

An ordinary single-device training script (no ``init()``, STAND_ALONE, GRAPH_MODE by
default) that knows nothing about distcheck; it runs on CPU in a few seconds. It gives
the training-health rules something to find::

    python scripts/train_health.py --problem lr_huge

``--problem NAME``:

  none           healthy: normalised inputs, balanced shuffled labels, a sensible lr
  lr_huge        learning rate 1000x too large (50): the loss is Inf from step 2 and the
                 weights reach 1e22 by step 5; with --lr 500 the loss is NaN from step 5
  lr_zero        learning rate 0: nothing moves
  zero_init      the middle Dense layer's weight starts as all zeros
  deep_sigmoid   ten Dense+Sigmoid layers: the first layers' gradients vanish
  frozen         ``fc1.weight`` (requires_grad=True) is left out of the optimizer
  dropout        ``nn.Dropout(keep_prob=0.1)``, the MindSpore 1.x spelling of "drop 10%"
  scaled_inputs  inputs multiplied by 1000 (not normalised)
  sorted_labels  data sorted by label and not shuffled: every batch holds one class
  bad_init       six ReLU layers of width 64 drawn from Normal(0, 0.5): each multiplies the
                 signal by about 2.8, and the loss is Inf from step 1
  mixed_init     healthy: one layer with weight_init="normal" (std 0.01) among default ones
  nan_grad       a term whose gradient is NaN (0 * d sqrt(y)/dy at y = 0) while the loss stays
                 finite: with --dynamic-loss-scale every update is skipped as an overflow

``--net resnet`` trains a small ResNet-style CNN (Conv-BatchNorm-ReLU blocks with skip
connections, MindSpore's default initialisers) on synthetic 8x8 images instead.

The last line printed is the loss of the first and the last step.
"""

import argparse
import sys

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore import nn, ops
from mindspore.common.initializer import Normal
from mindspore.train import Callback, FixedLossScaleManager, Model

PROBLEMS = ("none", "lr_huge", "lr_zero", "zero_init", "deep_sigmoid", "frozen", "dropout",
            "scaled_inputs", "sorted_labels", "bad_init", "mixed_init", "nan_grad")

NUM_FEATURES = 16
HIDDEN = 32
NUM_CLASSES = 4
IMAGE = (3, 8, 8)
POOL = 1024  # samples; steps beyond one pass go round it again (reshuffled unless sorted_labels)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problem", choices=PROBLEMS, default="none", help="planted problem (default none)")
    p.add_argument("--steps", type=int, default=80, help="training steps (default 80)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 0.05; 50 for lr_huge, 0 for lr_zero, 0.5 for deep_sigmoid)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--net", choices=("mlp", "resnet"), default="mlp")
    p.add_argument("--loss-scale", type=float, default=None,
                   help="a fixed loss scale left to the optimizer to undo (FixedLossScaleManager with "
                        "drop_overflow_update=False): the optimizer receives scaled gradients")
    p.add_argument("--float16", action="store_true",
                   help="float16 weights and activations (the loss in float32)")
    p.add_argument("--dynamic-loss-scale", type=float, default=None, metavar="INIT",
                   help="nn.DynamicLossScaleUpdateCell starting at INIT (halved on each overflow, which skips "
                        "that step's update); 2**120 overflows for the first few steps of a float32 run")
    return p.parse_args()


class MLP(nn.Cell):
    """16 -> 32 -> 32 -> 4 with ReLU (optionally Dropout after each hidden layer)."""

    def __init__(self, zero_middle=False, keep_prob=None, middle_init=None, nan_grad=False):
        super().__init__()
        self.nan_grad = nan_grad
        self.fc1 = nn.Dense(NUM_FEATURES, HIDDEN)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Dense(HIDDEN, HIDDEN, weight_init="zeros" if zero_middle else middle_init)
        self.act2 = nn.ReLU()
        self.head = nn.Dense(HIDDEN, NUM_CLASSES)
        self.drop = nn.Dropout(keep_prob=keep_prob) if keep_prob is not None else nn.Identity()

    def construct(self, x):
        x = self.drop(self.act1(self.fc1(x)))
        x = self.drop(self.act2(self.fc2(x)))
        if self.nan_grad:  # adds 0 to the output; its gradient is 0 * inf = NaN
            x = x + 0.0 * ops.sqrt(x * 0.0)
        return self.head(x)


class Float16(nn.Cell):
    """The wrapped network with float16 weights, fed float16 inputs; logits in float32."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net
        for param in net.get_parameters():
            param.set_dtype(ms.float16)

    def construct(self, x):
        return self.net(x.astype(ms.float16)).astype(ms.float32)


class TrainOneStepWithLossScaleOnCPU(nn.TrainOneStepWithLossScaleCell):
    """Dynamic loss scaling on CPU: overflow is any non-finite gradient (the stock cell
    asks for status kernels CPU does not have)."""

    def get_overflow_status(self, status, compute_output):
        finite = ops.ones((), ms.bool_)
        for grad in compute_output:
            finite = ops.logical_and(finite, ops.isfinite(grad).all())
        return ops.logical_not(finite)


class DeepSigmoid(nn.Cell):
    """``depth`` Dense+Sigmoid layers, then a Dense head."""

    def __init__(self, depth=10):
        super().__init__()
        cells = []
        width = NUM_FEATURES
        for _ in range(depth):
            cells += [nn.Dense(width, HIDDEN), nn.Sigmoid()]
            width = HIDDEN
        self.body = nn.SequentialCell(cells)
        self.head = nn.Dense(HIDDEN, NUM_CLASSES)

    def construct(self, x):
        return self.head(self.body(x))


class WideReLU(nn.Cell):
    """Six Dense+ReLU layers of width 64 with weights from Normal(0, 0.5), then a head."""

    def __init__(self, depth=6, width=64):
        super().__init__()
        cells, fan_in = [], NUM_FEATURES
        for _ in range(depth):
            cells += [nn.Dense(fan_in, width, weight_init=Normal(0.5)), nn.ReLU()]
            fan_in = width
        self.body = nn.SequentialCell(cells)
        self.head = nn.Dense(width, NUM_CLASSES, weight_init=Normal(0.5))

    def construct(self, x):
        return self.head(self.body(x))


class Block(nn.Cell):
    """Conv-BN-ReLU-Conv-BN plus the input, then ReLU (a ResNet basic block)."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def construct(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


class SmallResNet(nn.Cell):
    """A stem, two basic blocks, global average pooling and a Dense head; default inits."""

    def __init__(self, channels=16):
        super().__init__()
        self.stem = nn.Conv2d(IMAGE[0], channels, 3)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.blocks = nn.SequentialCell([Block(channels), Block(channels)])
        self.pool = ops.ReduceMean(keep_dims=False)
        self.head = nn.Dense(channels, NUM_CLASSES)

    def construct(self, x):
        x = self.blocks(self.relu(self.bn(self.stem(x))))
        return self.head(self.pool(x, (2, 3)))


def synthetic_data(rng):
    """A balanced, learnable 4-class problem: Gaussian blobs, features standardised."""
    y = np.repeat(np.arange(NUM_CLASSES), POOL // NUM_CLASSES).astype(np.int32)
    centres = rng.standard_normal((NUM_CLASSES, NUM_FEATURES)).astype(np.float32)
    x = centres[y] + 1.5 * rng.standard_normal((POOL, NUM_FEATURES)).astype(np.float32)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), y


def synthetic_images(rng):
    """The same kind of problem as 8x8 images with 3 channels: a class pattern plus noise."""
    y = np.repeat(np.arange(NUM_CLASSES), POOL // NUM_CLASSES).astype(np.int32)
    patterns = rng.standard_normal((NUM_CLASSES, *IMAGE)).astype(np.float32)
    x = patterns[y] + 1.5 * rng.standard_normal((POOL, *IMAGE)).astype(np.float32)
    return ((x - x.mean()) / x.std()).astype(np.float32), y


def create_dataset(args, rng):
    """Exactly ``steps`` batches, in the order the problem asks for."""
    x, y = synthetic_images(rng) if args.net == "resnet" else synthetic_data(rng)
    if args.problem == "scaled_inputs":
        x = x * 1000.0
    needed = args.steps * args.batch_size
    passes = -(-needed // POOL)
    if args.problem == "sorted_labels":
        order = np.concatenate([np.argsort(y, kind="stable")] * passes)
    else:
        order = np.concatenate([rng.permutation(POOL) for _ in range(passes)])
    order = order[:needed]
    dataset = ds.NumpySlicesDataset({"x": x[order], "y": y[order]}, shuffle=False)
    return dataset.batch(args.batch_size, drop_remainder=True)


class LossLog(Callback):
    """Keeps each step's loss (printing only the first and last)."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_step_end(self, run_context):
        outputs = run_context.original_args().net_outputs
        loss = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        self.losses.append(float(loss.asnumpy()))


def main():
    args = parse_args()
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE, device_target="CPU")
    ms.set_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    problem = args.problem
    default_lr = {"lr_huge": 50.0, "lr_zero": 0.0, "deep_sigmoid": 0.5}.get(problem, 0.05)
    lr = default_lr if args.lr is None else args.lr

    if args.net == "resnet":
        net = SmallResNet()
    elif problem == "deep_sigmoid":
        net = DeepSigmoid()
    elif problem == "bad_init":
        net = WideReLU()
    else:
        net = MLP(zero_middle=problem == "zero_init", keep_prob=0.1 if problem == "dropout" else None,
                  middle_init="normal" if problem == "mixed_init" else None, nan_grad=problem == "nan_grad")
    if args.float16:
        net = Float16(net)
    params = net.trainable_params()
    if problem == "frozen":
        params = [p for p in params if p.name != "fc1.weight"]
    scale = args.loss_scale or 1.0
    optimizer = nn.Momentum(params, learning_rate=lr, momentum=0.9, loss_scale=scale)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    log = LossLog()
    manager = FixedLossScaleManager(scale, drop_overflow_update=False) if args.loss_scale else None
    if args.dynamic_loss_scale:
        # Model refuses a DynamicLossScaleManager on CPU; the train cell it would build works
        # once it checks overflow the GPU way.
        updater = nn.DynamicLossScaleUpdateCell(args.dynamic_loss_scale, scale_factor=2, scale_window=1000)
        model = Model(TrainOneStepWithLossScaleOnCPU(nn.WithLossCell(net, loss_fn), optimizer, updater))
    else:
        model = Model(net, loss_fn, optimizer, loss_scale_manager=manager)
    model.train(1, create_dataset(args, rng), callbacks=[log], dataset_sink_mode=False)
    if log.losses:
        print(f"{problem}: loss {log.losses[0]:.4g} at step 1, {log.losses[-1]:.4g} at step {len(log.losses)}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
