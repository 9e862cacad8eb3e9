"""Train a tiny MLP with MindSpore ``Model.train``, alone or data-parallel.

This is an ordinary user training script: it knows nothing about distcheck.
It runs on CPU in a few seconds and is the project's example of an
unmodified script that distcheck attaches to from outside.

Run it alone::

    python scripts/train_mlp.py

or data-parallel with msrun (N ranks on one machine)::

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 \\
          --log_dir=msrun_log --join=True scripts/train_mlp.py

``--bug NAME`` plants one of the classic data-parallel mistakes on one rank
(``--bug-rank``, default the last rank) so that a checker has something to
find:

  none        clean run
  seed        the bug rank seeds its initial weights differently
  standalone  parallel mode is left at STAND_ALONE: gradients not all-reduced
  lr          the bug rank uses another learning rate
  nudge       before update S the bug rank adds a tiny value to one weight
  nan         the bug rank's batch S contains an Inf: its loss is NaN at step S
  bn          the net has BatchNorm1d (not synced): moving stats diverge
  unsharded   every rank reads the same, unsharded data
  kill        the bug rank SIGKILLs itself at the end of step S
  stall       the bug rank's callback never returns at the end of step S
  frozen      fc1 is frozen (requires_grad=False) on every rank, and the bug rank
              loads other values into it (a pretrained layer loaded on one rank only)
  frozen_nudge  fc1 is frozen on every rank, and before update S the bug rank adds a
              tiny value to fc1.weight (a frozen layer written to on one rank mid-run)
  bitflip     after update S one bit (--flip-bit, default 30: the highest exponent bit)
              of one element of fc2.weight flips on the bug rank, as a memory fault would

Two flags make every rank do what healthy jobs do with processes and signals
(no bug: the job must finish as it would without a checker):

  --fork-helpers S  after step S each rank forks helpers, as evaluation workers and
                    data loaders do: a multiprocessing worker (fork context) that it
                    ends with terminate() (SIGTERM), and an os.fork() child that
                    exits normally (running the atexit hooks)
  --preempt S       after step 1 each rank installs its own SIGTERM handler (a
                    preemption handler); at step S a SIGTERM arrives (sent to itself,
                    as a preemption notice would), and the rank saves a checkpoint
                    ``preempted_rank_R.ckpt`` in the working directory and stops
                    training cleanly with ``run_context.request_stop()``

Steps are counted from 1, like ``cur_step_num`` in callbacks.

Note: under msrun this file also runs in the scheduler process, which exits
inside ``init()``; so nothing is printed or written before ``init()`` returns.
"""

import argparse
import atexit
import multiprocessing
import os
import signal
import sys
import time

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore import nn
from mindspore.communication import get_group_size, get_rank, init
from mindspore.train import Callback, Model

BUGS = ("none", "seed", "standalone", "lr", "nudge", "nan", "bn", "unsharded", "kill", "stall", "frozen",
        "frozen_nudge", "bitflip")

NUM_FEATURES = 16
HIDDEN = 32
NUM_CLASSES = 4


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12,
                   help="training steps (default 12; with --sink, rounded up to a multiple of --sink-size)")
    p.add_argument("--batch-size", type=int, default=16, help="per-rank batch size")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--sink", action="store_true", help="dataset_sink_mode=True")
    p.add_argument("--sink-size", type=int, default=4, help="steps per sink (with --sink)")
    p.add_argument("--bug", choices=BUGS, default="none", help="planted bug (default none)")
    p.add_argument("--bug-rank", type=int, default=-1, help="rank with the bug (default: last)")
    p.add_argument("--bug-step", type=int, default=5, help="step S for nudge/nan/kill/stall (default 5)")
    p.add_argument("--flip-bit", type=int, default=30, help="bit that --bug bitflip flips (0: lowest mantissa)")
    p.add_argument("--train-calls", type=int, default=1,
                   help="call Model.train this many times in a row (each runs --steps steps)")
    p.add_argument("--step-delay", type=float, default=0.0,
                   help="seconds every step sleeps in a callback, for long-running jobs")
    p.add_argument("--fork-helpers", type=int, default=0, metavar="S",
                   help="after step S, fork a helper ended by terminate() and one that exits normally")
    p.add_argument("--preempt", type=int, default=0, metavar="S",
                   help="own SIGTERM handler from step 1; SIGTERM at step S: checkpoint and stop cleanly")
    return p.parse_args()


def launched_distributed():
    """True when started by msrun (or a hand-made MindSpore dynamic cluster)."""
    return "MS_ROLE" in os.environ or "MS_WORKER_NUM" in os.environ


class MLP(nn.Cell):
    """16 -> 32 -> 4, optionally with BatchNorm1d after the hidden layer.

    One hidden layer on purpose: with two, the NaN that an Inf input causes
    in the second layer is masked by its ReLU (on CPU), and the loss stays
    finite.
    """

    def __init__(self, batch_norm=False):
        super().__init__()
        self.fc1 = nn.Dense(NUM_FEATURES, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN) if batch_norm else None
        self.relu = nn.ReLU()
        self.fc2 = nn.Dense(HIDDEN, NUM_CLASSES)

    def construct(self, x):
        x = self.fc1(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.fc2(self.relu(x))


def synthetic_data(num_samples, seed=0):
    """A fixed, learnable classification problem (same on every rank).

    More samples extend fewer: the first n are the same for any num_samples.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((NUM_FEATURES, NUM_CLASSES)).astype(np.float32)
    x = rng.standard_normal((num_samples, NUM_FEATURES)).astype(np.float32)
    y = np.argmax(x @ w, axis=1).astype(np.int32)
    return x, y


def create_dataset(args, rank, group_size, sharded=True, inf_at_step=None):
    """Each rank gets ``steps_per_epoch`` batches of its own shard."""
    steps_per_epoch = args.sink_size if args.sink else args.steps
    x, y = synthetic_data(steps_per_epoch * args.batch_size * group_size)
    if sharded:
        dataset = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False,
                                        num_shards=group_size, shard_id=rank)
    else:
        dataset = ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False)

    if inf_at_step is None:
        dataset = dataset.batch(args.batch_size, drop_remainder=True)
    else:
        # Corrupt one input value of the batch used at step `inf_at_step`.
        def put_inf(xs, ys, info):
            step = info.get_epoch_num() * steps_per_epoch + info.get_batch_num() + 1
            if step == inf_at_step:
                xs = [v.copy() for v in xs]
                xs[0][0] = np.inf
            return xs, ys
        dataset = dataset.batch(args.batch_size, drop_remainder=True,
                                per_batch_map=put_inf, input_columns=["x", "y"])
    return dataset.take(steps_per_epoch)


class PrintLoss(Callback):
    """Print the loss of each step (unlike LossMonitor, it does not stop on NaN)."""

    def __init__(self, rank):
        super().__init__()
        self.rank = rank

    def on_train_step_end(self, run_context):
        cb = run_context.original_args()
        loss = float(cb.net_outputs.asnumpy())
        print(f"rank {self.rank} step {cb.cur_step_num} loss {loss:.6f}", flush=True)


class NudgeWeight(Callback):
    """Bug `nudge`: add a tiny value to one weight just before update `step`, counted
    over every training call."""

    def __init__(self, param, step, delta=1e-4):
        super().__init__()
        self.param, self.step, self.delta = param, step, delta
        self.seen = 0
        self.done = False

    def on_train_step_begin(self, run_context):
        self.seen += 1
        if not self.done and self.seen >= self.step:
            self.param.set_data(ms.Tensor(self.param.asnumpy() + self.delta))
            self.done = True


class FlipBit(Callback):
    """Bug `bitflip`: after update `step`, before it is recorded, flip one bit of the
    element of `param` nearest zero (so a high exponent bit makes it large, not Inf)."""

    def __init__(self, param, step, bit):
        super().__init__()
        self.param, self.step, self.bit = param, step, bit

    def on_train_step_end(self, run_context):
        if run_context.original_args().cur_step_num == self.step:
            values = self.param.asnumpy().copy()
            flat = values.reshape(-1)
            flat.view(np.uint32)[np.argmin(np.abs(flat))] ^= np.uint32(1 << self.bit)
            self.param.set_data(ms.Tensor(values))


class KillSelf(Callback):
    """Bug `kill`: die abruptly (as from the OOM killer) at the end of `step`."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_step_end(self, run_context):
        if run_context.original_args().cur_step_num == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class StallForever(Callback):
    """Bug `stall`: a callback that never returns (a lock, a network read) after `step`."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_step_end(self, run_context):
        if run_context.original_args().cur_step_num == self.step:
            while True:
                time.sleep(1)


class SlowSteps(Callback):
    """Make every step take at least `delay` seconds."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def on_train_step_end(self, run_context):
        time.sleep(self.delay)


def _helper_loop(ready):
    """A helper process's work: serve until terminated."""
    ready.set()
    while True:
        time.sleep(0.1)


class ForkHelpers(Callback):
    """After `step`, fork helpers as evaluation workers and data loaders do: one through
    multiprocessing (fork) that is ended with terminate(), one through os.fork() that
    exits normally (atexit hooks included)."""

    def __init__(self, step, rank):
        super().__init__()
        self.step, self.rank = step, rank

    def on_train_step_end(self, run_context):
        if run_context.original_args().cur_step_num != self.step:
            return
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        worker = ctx.Process(target=_helper_loop, args=(ready,), daemon=True)
        worker.start()
        ready.wait(30)
        worker.terminate()
        worker.join(30)
        pid = os.fork()
        if pid == 0:
            # Exit as the interpreter does: the atexit hooks run, newest first. (Not by
            # sys.exit from here: unwinding Model.train in a forked child crashes in
            # MindSpore's dataset iterator. MindSpore's own atexit hook crashes there too,
            # so this child ends by SIGSEGV, with or without a checker.)
            sys.stdout.flush()
            atexit._run_exitfuncs()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(f"rank {self.rank} helpers ended: worker {worker.exitcode}, "
              f"child {os.waitstatus_to_exitcode(status)}", flush=True)


class Preemption(Callback):
    """A preemption handler the script installs once training runs: SIGTERM is noted,
    and at the end of that step the rank saves a checkpoint and stops training."""

    def __init__(self, step, rank, net):
        super().__init__()
        self.step, self.rank, self.net = step, rank, net
        self.noticed = False

    def _on_sigterm(self, signum, frame):
        self.noticed = True

    def on_train_step_end(self, run_context):
        step = run_context.original_args().cur_step_num
        if step == 1:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)  # as a preemption notice arrives
        if self.noticed:
            ms.save_checkpoint(self.net, f"preempted_rank_{self.rank}.ckpt")
            print(f"rank {self.rank} preempted after step {step}: checkpoint saved", flush=True)
            run_context.request_stop()


def main():
    args = parse_args()
    mode = ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE
    ms.set_context(mode=mode)
    ms.set_device("CPU")

    if launched_distributed():
        init()  # the msrun scheduler process never returns from here
        rank, group_size = get_rank(), get_group_size()
        if args.bug != "standalone":
            ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                         gradients_mean=True)
    else:
        rank, group_size = 0, 1
    bug_rank = args.bug_rank % group_size
    on_bug_rank = rank == bug_rank and args.bug != "none"

    ms.set_seed(args.seed + 1000 if on_bug_rank and args.bug == "seed" else args.seed)

    net = MLP(batch_norm=args.bug == "bn")
    if args.bug in ("frozen", "frozen_nudge"):
        for param in (net.fc1.weight, net.fc1.bias):
            param.requires_grad = False
        if on_bug_rank and args.bug == "frozen":
            net.fc1.weight.set_data(ms.Tensor(net.fc1.weight.asnumpy() + 0.01))
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    lr = args.lr * 2 if on_bug_rank and args.bug == "lr" else args.lr
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=lr, momentum=0.9)
    model = Model(net, loss_fn=loss_fn, optimizer=optimizer)

    dataset = create_dataset(
        args, rank, group_size,
        sharded=args.bug != "unsharded",
        inf_at_step=args.bug_step if on_bug_rank and args.bug == "nan" else None)

    callbacks = [PrintLoss(rank)]
    if on_bug_rank and args.bug in ("nudge", "frozen_nudge"):
        callbacks.append(NudgeWeight(net.fc1.weight, args.bug_step))
    if on_bug_rank and args.bug == "bitflip":
        callbacks.append(FlipBit(net.fc2.weight, args.bug_step, args.flip_bit))
    if on_bug_rank and args.bug == "kill":
        callbacks.append(KillSelf(args.bug_step))
    if on_bug_rank and args.bug == "stall":
        callbacks.append(StallForever(args.bug_step))
    if args.step_delay > 0:
        callbacks.append(SlowSteps(args.step_delay))
    if args.fork_helpers > 0:
        callbacks.append(ForkHelpers(args.fork_helpers, rank))
    if args.preempt > 0:
        callbacks.append(Preemption(args.preempt, rank, net))

    print(f"rank {rank}/{group_size} bug={args.bug} bug_rank={bug_rank} "
          f"mode={args.mode} sink={args.sink} steps={args.steps}", flush=True)
    if args.sink:
        epochs = -(-args.steps // args.sink_size)
        model.train(epochs, dataset, callbacks=callbacks,
                    dataset_sink_mode=True, sink_size=args.sink_size)
    else:
        for _ in range(args.train_calls):
            model.train(1, dataset, callbacks=callbacks, dataset_sink_mode=False)
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main()
