"""Finding things in a MindSpore cell tree: the user's model inside train cells, its
own parameters, and distcheck's shadows. A leaf module: the probe, the activation
taps and the set-up description all import it, and it imports none of them."""

from __future__ import annotations

from mindspore import Parameter, nn

GRAD_PREFIX = "distcheck_grad."
"""Name prefix of the gradient shadows (`capture.GradCapture`). They live in the train
network, so a checkpoint saved from it contains them too; loading such a checkpoint
into a network without distcheck only warns about these names."""

ACT_PREFIX = "distcheck_act."
"""Name prefix of the activation statistics shadows (`activations.ActivationTap`)."""


def is_shadow(name: str) -> bool:
    """Whether a parameter name is one of distcheck's shadows (gradients, activation stats).

    A cell with auto_prefix=True that adopts a tapped network later prefixes the
    shadow's name too ("net.distcheck_act.layers.1"), so the prefix is looked for
    after a dot as well.
    """
    return any(name.startswith(prefix) or f".{prefix}" in name for prefix in (GRAD_PREFIX, ACT_PREFIX))


def _is_optimizer(cell: object) -> bool:
    """An `nn.Optimizer`, or a wrapper of one (such as distcheck's `GradCapture`)."""
    return isinstance(cell, nn.Optimizer) or isinstance(getattr(cell, "optimizer", None), nn.Optimizer)


def model_of(network: nn.Cell) -> nn.Cell:
    """The `network` child of the first train cell (one with an `optimizer` child) inside `network`."""
    for _, cell in network.cells_and_names():
        children = cell.name_cells()
        if _is_optimizer(children.get("optimizer")) and "network" in children:
            return children["network"]
    return network


def user_network(network: nn.Cell) -> nn.Cell:
    """The backbone inside `nn.WithLossCell` (whose names it does not prefix); else `network`."""
    backbone = network.name_cells().get("_backbone") if isinstance(network, nn.WithLossCell) else None
    return backbone if backbone is not None else network


def network_parameters(network: nn.Cell) -> list[Parameter]:
    """The network's own parameters, without optimizer state or distcheck shadows.

    Given a train cell (`nn.TrainOneStepCell` or alike, e.g. from `Model(train_cell)`),
    only its `network` child counts, which leaves out loss-scale state such as
    `scale_sense`. Optimizer state is every parameter an `nn.Optimizer` holds beyond
    the ones it updates: moments, accumulators, `global_step`, `learning_rate`, ...
    """
    network = model_of(network)
    state: set[int] = set()
    for _, cell in network.cells_and_names():
        if isinstance(cell, nn.Optimizer):
            updated = {id(p) for p in cell.parameters}
            state.update(id(p) for p in cell.get_parameters() if id(p) not in updated)
    seen: set[int] = set()
    params = []
    for _, param in network.parameters_and_names():
        if id(param) in seen or id(param) in state or is_shadow(param.name):
            continue
        seen.add(id(param))
        params.append(param)
    return params
