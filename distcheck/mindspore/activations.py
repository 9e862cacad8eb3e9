"""Activation statistics computed inside the compiled training step (opt-in).

In GRAPH_MODE forward hooks are dropped, so the statistics are computed by the graph
itself: `install_activation_probes(network)` replaces each activation cell of the
model (`nn.ReLU`, `nn.Sigmoid`, ...) by an `ActivationTap` that returns the very same
output and, as a side effect, writes four float32 numbers about the last forward
pass into a shadow `Parameter` named ``distcheck_act.<cell path>``:

    [saturated, zero, mean, max_abs]

- ``saturated``: fraction of *inputs* x where the activation's gradient is (almost)
  gone. Thresholds, chosen for small nets where smdebug's (sigmoid: x < -23 or
  x > 17, where the output rounds to 0 or 1) are never reached:

  ============  =====================  ============================
  kind          saturated where        derivative there
  ============  =====================  ============================
  relu          x <= 0                 0 (the unit is "dead")
  leaky_relu    x <= 0                 alpha (usually 0.01-0.2)
  relu6         x <= 0 or x >= 6       0
  gelu          x <= -3                |.| < 0.012
  sigmoid       |x| >= 5               < 0.0066 (max 0.25)
  tanh          |x| >= 2.5             < 0.027 (max 1)
  ============  =====================  ============================

- ``zero``: fraction of outputs exactly 0 (for ReLU the same as ``saturated``
  unless inputs are NaN).
- ``mean``: mean output; ``max_abs``: largest |output|.

The statistics are those of the forward pass of the step just taken (computed
with the weights before its update). They are per rank, never reduced.

Limits:
- Only activation *cells* in the cell tree are tapped. Functional activations
  (``ops.relu(x)``, ``mint.nn.functional.gelu(x)``, ``x.sigmoid()`` inside a
  ``construct``) are invisible: no cell wraps them, so nothing can be replaced.
- A cell object called several times in one step (one ``self.relu`` used after
  every layer) gets one tap, which reports its last call of the step.
- Activations inside Python lists or dicts that are not `nn.CellList`/`nn.CellDict`
  are not in the cell tree and are not tapped.
- Install before the train network is compiled: a graph compiled earlier keeps the
  untapped cells.
- The shadows are parameters of the network, so a checkpoint saved from it contains
  them (loading it into a network without distcheck only warns about those names).
"""

from __future__ import annotations

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype

from distcheck.mindspore.cells import ACT_PREFIX, model_of, user_network

STAT_NAMES = ("saturated", "zero", "mean", "max_abs")

_INF = float("inf")
# kind -> (inputs <= low or >= high count as saturated)
_SATURATION = {
    "relu": (0.0, _INF),
    "leaky_relu": (0.0, _INF),
    "relu6": (0.0, 6.0),
    "gelu": (-3.0, _INF),
    "sigmoid": (-5.0, 5.0),
    "tanh": (-2.5, 2.5),
}
# Order matters where classes inherit from each other (none do in MindSpore 2.10).
_KINDS: tuple[tuple[type, str], ...] = (
    (nn.ReLU, "relu"),
    (nn.ReLU6, "relu6"),
    (nn.LeakyReLU, "leaky_relu"),
    (nn.GELU, "gelu"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Tanh, "tanh"),
)


class ActivationTap(nn.Cell):
    """Runs `activation` and stores statistics of its input and output in `shadow`.

    Attributes:
        name: path of the replaced cell in the model, e.g. ``"layers.3"``.
        kind: ``"relu"``, ``"sigmoid"``, ``"tanh"``, ... (see the module docstring).
        shadow: the float32 Parameter holding ``[saturated, zero, mean, max_abs]``.
    """

    def __init__(self, activation: nn.Cell, name: str, kind: str) -> None:
        # auto_prefix=False: the wrapped cell's parameters (if any) keep their names.
        super().__init__(auto_prefix=False)
        self.activation = activation
        self.tap_name = name
        self.kind = kind
        self.low, self.high = _SATURATION[kind]
        self.shadow = Parameter(Tensor(np.zeros(len(STAT_NAMES), np.float32)), name=ACT_PREFIX + name,
                                requires_grad=False)

    @property
    def name(self) -> str:
        return self.tap_name

    def stats(self) -> np.ndarray:
        """The statistics of the last forward pass, shape (4,), float32 (zeros before any)."""
        return self.shadow.asnumpy().copy()

    def construct(self, x):
        y = self.activation(x)
        xs = ops.stop_gradient(ops.cast(x, mstype.float32))
        ys = ops.stop_gradient(ops.cast(y, mstype.float32))
        saturated = ops.logical_or(xs <= self.low, xs >= self.high)
        values = ops.stack((ops.cast(saturated, mstype.float32).mean(),
                            ops.cast(ys == 0, mstype.float32).mean(),
                            ys.mean(),
                            ops.abs(ys).max()))
        return ops.depend(y, ops.assign(self.shadow, values))


def activation_kind(cell: nn.Cell) -> str | None:
    """The tap kind of an activation cell, or None if it is not one distcheck taps."""
    for cls, kind in _KINDS:
        if type(cell) is cls:  # exact: a subclass may compute something else
            return kind
    return None


def find_activation_taps(network: nn.Cell) -> list[ActivationTap]:
    """The taps already installed inside `network`, in cell-tree order."""
    return [cell for _, cell in network.cells_and_names() if isinstance(cell, ActivationTap)]


def install_activation_probes(network: nn.Cell) -> list[ActivationTap]:
    """Replace every activation cell of `network` by an `ActivationTap`; return the taps.

    `network` may be the model or a train cell around it; names are paths in the
    model, like parameter names. Idempotent: taps already installed are returned,
    not wrapped again. A cell reachable under several paths is tapped once, under
    its first path.
    """
    model = user_network(model_of(network))
    taps: list[ActivationTap] = []
    seen: dict[int, ActivationTap] = {}
    for path, parent in list(model.cells_and_names()):
        if isinstance(parent, ActivationTap):
            if id(parent) not in seen:
                seen[id(parent)] = parent
                taps.append(parent)
            continue
        for child_name, child in list(parent.name_cells().items()):
            if isinstance(child, ActivationTap) or child is None:
                continue
            if id(child) in seen:  # the same activation object shared by two parents
                _replace(parent, child_name, seen[id(child)])
                continue
            kind = activation_kind(child)
            if kind is None:
                continue
            tap = ActivationTap(child, f"{path}.{child_name}" if path else child_name, kind)
            seen[id(child)] = tap
            taps.append(tap)
            _replace(parent, child_name, tap)
    return taps


def _replace(parent: nn.Cell, child_name: str, tap: nn.Cell) -> None:
    # insert_child_to_cell, not setattr: setattr re-prefixes parameter names when
    # the parent has auto_prefix=True.
    parent.insert_child_to_cell(child_name, tap)
    if isinstance(parent, nn.SequentialCell):
        # SequentialCell.construct iterates a cached list of its children.
        parent.cell_list = list(parent.name_cells().values())
