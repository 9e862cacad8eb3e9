"""Static rules: judged once from how training was set up, at no cost per step.

The probe describes the network and optimizer when training begins (``meta.static`` in
the dump); these rules read that description. They also run inside the job, at the start
of training, so their findings are logged before any compute is spent.
"""
from __future__ import annotations

from distcheck.findings import Severity
from distcheck.rules.registry import finding, rule


@rule("frozen_by_accident", Severity.WARNING, "static", "requires_grad and the optimizer's parameter list disagree")
def frozen_by_accident(rank, settings: dict):
    """
    Phenomenon: a parameter with ``requires_grad=True`` is not in the optimizer (it gets a
    gradient but is never updated: frozen by accident), or the optimizer holds a parameter
    with ``requires_grad=False`` (meant to be frozen, but weight decay may still move it).

    Likely causes: graph structure (weight freeze error): the optimizer was built from a
    filtered or stale parameter list, e.g. ``net.trainable_params()`` taken before a layer
    was added, or a group list that forgot a layer.

    Threshold: any such parameter.

    Fix: build the optimizer from ``net.trainable_params()`` after the network is complete,
    and freeze on purpose with ``param.requires_grad = False``.
    """
    static = getattr(rank, "static", None) or {}
    params = static.get("params") or []
    if not static.get("optimizer"):
        return []
    left_out = [p["name"] for p in params if p.get("requires_grad") and not p.get("in_optimizer")]
    frozen_in = [p["name"] for p in params if p.get("in_optimizer") and not p.get("requires_grad")]
    out = []
    if left_out:
        out.append(finding("frozen_by_accident", 0, [rank.rank], left_out,
                           f"Parameter(s) with requires_grad=True that the optimizer does not update: "
                           f"{', '.join(left_out)}. Pass them to the optimizer, or set requires_grad=False "
                           "if they are meant to be frozen."))
    if frozen_in:
        out.append(finding("frozen_by_accident", 0, [rank.rank], frozen_in,
                           f"Parameter(s) with requires_grad=False given to the optimizer: {', '.join(frozen_in)}. "
                           "Remove them from its parameter list if they are meant to be frozen."))
    return out


@rule("bn_in_eval_mode", Severity.WARNING, "static", "BatchNorm layers run in inference mode during training")
def bn_in_eval_mode(rank, settings: dict):
    """
    Phenomenon: the network trains while its BatchNorm layers are in inference mode: they
    normalise with their moving statistics, which are never updated, instead of the batch's.

    Likely causes: graph structure (node mode error): ``net.set_train(False)`` before
    training, a BatchNorm built with ``use_batch_statistics=False``, or a sub-network
    switched to eval and never back.

    Threshold: any BatchNorm cell not in training mode at the start of training.

    Fix: call ``net.set_train(True)`` (Model.train does) and leave use_batch_statistics at
    None, unless freezing BatchNorm is intended (fine-tuning with small batches).
    """
    static = getattr(rank, "static", None) or {}
    cells = [b["cell"] for b in static.get("batchnorms") or []
             if b.get("training") is False or b.get("use_batch_statistics") is False]
    if not cells:
        return []
    return [finding("bn_in_eval_mode", 0, [rank.rank], cells,
                    f"BatchNorm cell(s) in inference mode while training: {', '.join(cells)}. Call "
                    "net.set_train(True) and leave use_batch_statistics unset, unless this is intended.")]


@rule("dropout_keep_prob", Severity.WARNING, "static", "nn.Dropout keep_prob that looks inverted (drop rate given)")
def dropout_keep_prob(rank, settings: dict):
    """
    Phenomenon: a Dropout layer keeps only a small fraction of its inputs. In MindSpore,
    ``nn.Dropout(keep_prob=0.1)`` keeps 10% and drops 90%, the opposite of other frameworks'
    ``Dropout(0.1)``; a value meant as a drop rate cripples the layer.

    Likely causes: API misuse (porting ``Dropout(p)`` from PyTorch or Keras as
    ``keep_prob=p``).

    Default: flagged when the keep probability is below ``min_keep`` 0.5. Keep probabilities
    under 0.5 are almost never intended.

    Fix: use ``nn.Dropout(p=drop_rate)`` (MindSpore 2.x), or ``keep_prob=1 - drop_rate``.
    """
    static = getattr(rank, "static", None) or {}
    low = [(d["cell"], d["keep_prob"]) for d in static.get("dropouts") or []
           if d.get("keep_prob") is not None and d["keep_prob"] < settings["min_keep"]]
    if not low:
        return []
    names = [cell for cell, _ in low]
    values = ", ".join(f"{cell} keeps {keep:.0%}" for cell, keep in low)
    return [finding("dropout_keep_prob", 0, [rank.rank], names,
                    f"Dropout that keeps little of its input: {values}. MindSpore's keep_prob is the probability "
                    "to KEEP; if you meant a drop rate, use nn.Dropout(p=...) instead.")]
