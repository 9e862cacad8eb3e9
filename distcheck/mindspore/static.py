"""What a training run is set up to do, read once when training begins.

`describe_training(network, optimizer)` returns a JSON-able dict that the probe
stores in the run metadata as ``meta["static"]``. Rules read it to find mistakes
that need no per-step data: a parameter left out of the optimizer, BatchNorm in
inference mode, a dropout that keeps almost nothing, a learning rate of zero.

Facts about MindSpore 2.10 this relies on (measured on CPU):

- `Model.train` calls `set_train(True)` on the whole train network before the first
  step (and before `on_train_begin`), recursively. A user's `net.set_train(False)`,
  or `net.bn.set_train(False)` on one BatchNorm, is undone: BatchNorm then uses batch
  statistics and updates its moving mean/variance. BatchNorm stays in inference mode
  under `Model.train` only with `use_batch_statistics=False`; hand-written loops keep
  whatever mode the user set.
- `nn.Dropout(p=...)` leaves its `keep_prob` attribute at the default 0.5; the keep
  probability actually used lives in its `ops.Dropout` primitive (`cell.dropout.keep_prob`).
  `nn.Dropout1d` holds the drop probability as `prob`; `nn.Dropout2d/3d` as `keep_prob`;
  `nn.DropoutExt` (= `mint.nn.Dropout`) as `p`.
"""

from __future__ import annotations

from typing import Any

from mindspore import Parameter, Tensor, nn
from mindspore.mint.nn.layer.normalization import _BatchNorm as _MintBatchNorm
from mindspore.nn.layer.normalization import _BatchNorm as _NnBatchNorm

from distcheck.mindspore.capture import GradCapture
from distcheck.mindspore.cells import model_of, network_parameters, user_network


def describe_training(network: nn.Cell, optimizer: nn.Cell | None) -> dict[str, Any]:
    """Training mode, parameters, BatchNorm and Dropout cells and optimizer settings.

    Args:
        network: the model, or a train cell around it (its inner network is described).
        optimizer: an `nn.Optimizer`, a `GradCapture` around one, or None.

    Returns:
        ``{"network_training", "params", "batchnorms", "dropouts", "optimizer"}``; see
        the module docstring of the rules that read it. Cell names are paths in the
        model (``cells_and_names``), as in parameter names.
    """
    model = user_network(model_of(network))
    if isinstance(optimizer, GradCapture):
        optimizer = optimizer.optimizer
    updated = {id(p) for p in optimizer.parameters} if isinstance(optimizer, nn.Optimizer) else set()
    return {
        "network_training": bool(model.training),
        "params": [{"name": p.name, "requires_grad": bool(p.requires_grad), "in_optimizer": id(p) in updated}
                   for p in network_parameters(model)],
        "batchnorms": [{"cell": name, "class": type(cell).__name__, "training": bool(cell.training),
                        "use_batch_statistics": _optional_bool(getattr(cell, "use_batch_statistics", None))}
                       for name, cell in model.cells_and_names() if isinstance(cell, _BATCHNORMS)],
        "dropouts": [{"cell": name, "keep_prob": keep}
                     for name, cell in model.cells_and_names()
                     if isinstance(cell, _DROPOUTS) and (keep := keep_probability(cell)) is not None],
        "optimizer": describe_optimizer(optimizer),
    }


def keep_probability(cell: nn.Cell) -> float | None:
    """The probability that a dropout cell keeps an element, or None if unreadable."""
    primitive = getattr(cell, "dropout", None)
    if primitive is not None and isinstance(getattr(primitive, "keep_prob", None), (int, float)):
        return float(primitive.keep_prob)  # nn.Dropout: the one the graph runs with
    if isinstance(cell, (nn.Dropout2d, nn.Dropout3d)):
        return float(cell.keep_prob)
    for drop_name in ("p", "prob"):  # nn.DropoutExt, nn.Dropout2dExt: p; nn.Dropout1d: prob
        drop = getattr(cell, drop_name, None)
        if isinstance(drop, (int, float)) and not isinstance(drop, bool):
            return 1.0 - float(drop)
    return None


def describe_optimizer(optimizer: nn.Cell | None) -> dict[str, Any] | None:
    """Class name, learning rate and weight decay where each is a single constant, and the
    optimizer's own loss scale: with one other than 1 (a FixedLossScaleManager with
    drop_overflow_update=False), the gradients it receives, and distcheck records, are
    multiplied by it; the optimizer divides them itself."""
    if optimizer is None:
        return None
    if not isinstance(optimizer, nn.Optimizer):
        return {"class": type(optimizer).__name__, "learning_rate": None, "weight_decay": None}
    lr = None
    if not optimizer.dynamic_lr and not optimizer.is_group_lr:
        lr = _scalar(optimizer.learning_rate)
    decay = optimizer.weight_decay
    if isinstance(decay, (tuple, list)):  # per-group values: a constant only if all agree
        values = {_scalar(d) for d in decay}
        decay = values.pop() if len(values) == 1 else None
    else:
        decay = _scalar(decay)  # None for a dynamic (Cell) weight decay
    scale = getattr(optimizer, "loss_scale", 1.0)
    scale = float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else None
    return {"class": type(optimizer).__name__, "learning_rate": lr, "weight_decay": decay, "loss_scale": scale}


def _scalar(value: Any) -> float | None:
    if isinstance(value, (Tensor, Parameter)) and value.size == 1:
        return float(value.asnumpy().reshape(-1)[0])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


# nn.BatchNorm1d/2d/3d and nn.SyncBatchNorm share nn's _BatchNorm; mint.nn's share another.
_BATCHNORMS = (_NnBatchNorm, _MintBatchNorm)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.DropoutExt, nn.Dropout2dExt)
