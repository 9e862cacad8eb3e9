"""Capture the gradients an optimizer applies, inside the compiled training step.

MindSpore does not hand gradients to callbacks, and in GRAPH_MODE backward hooks are
dropped (in PYNATIVE_MODE they see the local, pre-AllReduce gradient). The reliable
place to see the gradient that actually updates the weights is the optimizer's input:
`nn.TrainOneStepCell` runs its grad reducer (the data-parallel AllReduce) first and
then calls `self.optimizer(grads)`. `GradCapture` wraps that optimizer and copies each
gradient into a shadow `Parameter` before the update, so after the step the host can
read the post-AllReduce gradients with `shadow.asnumpy()`.

A training step is not always an update: `nn.TrainOneStepWithLossScaleCell` (and
`Model(..., loss_scale_manager=...)`) skips the optimizer on a step whose gradients
overflowed, and a train cell that accumulates gradients calls it once every k micro-steps.
The shadows then still hold the last update's gradients. `GradCapture.applied` counts
the optimizer's calls inside the graph, so the probe records one row per update and
labels it by update.
"""

from __future__ import annotations

from collections.abc import Iterator

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import initializer

from distcheck.mindspore.cells import GRAD_PREFIX
from distcheck.recording.options import human_size


class GradCapture(nn.Cell):
    """An optimizer wrapper that keeps a copy of the last gradients it applied.

    Use it wherever the optimizer is called with the gradients, e.g.
    `nn.TrainOneStepCell(net_with_loss, GradCapture(opt))`. `shadows[i]` holds the
    gradient of `parameters[i]` from the most recent update.
    """

    def __init__(self, optimizer: nn.Cell) -> None:
        # auto_prefix=False keeps the optimizer's state names (moments.*, global_step,
        # learning_rate) unchanged, so checkpoints look the same as without distcheck.
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.shadows = ParameterTuple(
            Parameter(initializer("zeros", p.shape, p.dtype), name=GRAD_PREFIX + p.name, requires_grad=False)
            for p in optimizer.parameters
        )
        # Counts the updates applied: with gradient accumulation, or a loss-scale overflow
        # that skips the optimizer, a training step is not always an update.
        self.applied = Parameter(Tensor(np.zeros((), np.int32)), name=GRAD_PREFIX + "applied", requires_grad=False)
        # Whether the next update's gradients are copied: the probe clears it before
        # updates it will not record, so that an unrecorded step copies nothing.
        self.keep = Parameter(Tensor(np.ones((), np.bool_)), name=GRAD_PREFIX + "keep", requires_grad=False)
        self._keeping = True
        self.hyper_map = ops.HyperMap()
        self.assign = ops.Assign()

    @property
    def parameters(self) -> ParameterTuple:
        """The wrapped optimizer's parameters (what `nn.TrainOneStepCell` differentiates)."""
        return self.optimizer.parameters

    def updates(self) -> int:
        """How many times the optimizer has been called (updates applied) so far."""
        return int(self.applied.asnumpy())

    def keep_next(self, keep: bool) -> None:
        """Copy (or not) the gradients of the updates from now on; a host write only
        when the choice changes."""
        if keep != self._keeping:
            self.keep.set_data(Tensor(np.array(keep, np.bool_)))
            self._keeping = keep

    def construct(self, gradients):
        counted = ops.assign_add(self.applied, ops.ones((), mstype.int32))
        if self.keep:
            stored = self.hyper_map(self.assign, self.shadows, gradients)
            gradients = ops.depend(gradients, stored)
        gradients = ops.depend(gradients, counted)
        return self.optimizer(gradients)


#: Why gradients are not captured in semi/auto parallel (recorded in the metadata).
SHARDED_NO_CAPTURE = ("not captured: in semi/auto parallel a copy of every gradient would double the "
                      "parameters' device memory, which large sharded models cannot spare; parameters and "
                      "loss are recorded")


def capture_refusal(train_network: nn.Cell, limit: int) -> str | None:
    """Why `Model.train` should run without a gradient capture, or None to install one:
    in semi/auto parallel, or when the copy would take more than ``limit`` bytes of device
    memory (``--grad-copy-limit``). The reason goes into the dump's metadata."""
    if str(ms.get_auto_parallel_context("parallel_mode")) in ("semi_auto_parallel", "auto_parallel"):
        return SHARDED_NO_CAPTURE
    optimizer = _optimizer_holder(train_network)
    if optimizer is None:
        return None
    size = sum(int(np.prod(p.shape)) * mstype.type_size_in_bytes(p.dtype) for p in optimizer[1].parameters)
    if size > limit:
        return (f"not captured: a copy of the gradients would add {human_size(size)} of device memory, "
                f"above the limit of {human_size(limit)} (--grad-copy-limit); parameters and loss are "
                "recorded")
    return None


def _cells(network: nn.Cell) -> Iterator[nn.Cell]:
    for _, cell in network.cells_and_names():
        yield cell


def find_grad_capture(network: nn.Cell) -> GradCapture | None:
    """The first `GradCapture` inside `network` (itself included), or None."""
    for cell in _cells(network):
        if isinstance(cell, GradCapture):
            return cell
    return None


def install_grad_capture(train_network: nn.Cell) -> GradCapture | None:
    """Wrap the optimizer of a (not yet compiled) train network in a `GradCapture`.

    Looks for the first cell that holds an `nn.Optimizer` as its `optimizer` child:
    `nn.TrainOneStepCell`, `nn.TrainOneStepWithLossScaleCell`, boost cells, or a user
    cell following the same convention. Idempotent: returns the capture already
    installed if there is one. Returns None when no such cell exists (then gradients
    are not recorded). Install before the first step: a train network that has already
    been compiled in GRAPH_MODE would keep running the old graph.
    """
    existing = find_grad_capture(train_network)
    if existing is not None:
        return existing
    holder = _optimizer_holder(train_network)
    if holder is None:
        return None
    cell, optimizer = holder
    capture = GradCapture(optimizer)
    # Replace the child directly: `setattr` would re-prefix parameter names when the
    # holding cell has auto_prefix=True.
    cell.insert_child_to_cell("optimizer", capture)
    return capture


def _optimizer_holder(train_network: nn.Cell) -> tuple[nn.Cell, nn.Optimizer] | None:
    """The first cell holding an `nn.Optimizer` as its `optimizer` child, and that optimizer."""
    for cell in _cells(train_network):
        optimizer = cell.name_cells().get("optimizer")
        if isinstance(optimizer, nn.Optimizer):
            return cell, optimizer
    return None
