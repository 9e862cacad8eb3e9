"""The MindSpore adapter: the only part of distcheck that imports MindSpore.

- `attach()`: record every `Model.train`/`fit` of this process (when `DISTCHECK_RUN_DIR` is set);
- `DistcheckCallback`: the same, added by hand to `Model.train(callbacks=...)`;
- `Probe`: for hand-written training loops (`probe.wrap(optimizer)`, `begin`, `step_end`, `close`);
- `GradCapture`, `install_grad_capture`: post-AllReduce gradients from inside the compiled step;
- `install_activation_probes`: opt-in activation statistics from inside the compiled step;
- `describe_training`: the training setup (modes, frozen parameters, dropout, optimizer), read once;
- `MindSporeWorld`: the `World` over MindSpore's communication (`msrun`).

Importing this package does not import MindSpore (a sitecustomize imports
`install_import_hook` from here); the other names load it on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# Bound eagerly: the function `attach` must win over the submodule of the same name,
# which the import system would otherwise set as this package's attribute.
from distcheck.mindspore.attach import attach as attach, install_import_hook as install_import_hook

_EXPORTS = {
    "DistcheckCallback": "distcheck.mindspore.callback",
    "GradCapture": "distcheck.mindspore.capture",
    "install_grad_capture": "distcheck.mindspore.capture",
    "find_grad_capture": "distcheck.mindspore.capture",
    "Probe": "distcheck.mindspore.probe",
    "ActivationTap": "distcheck.mindspore.activations",
    "install_activation_probes": "distcheck.mindspore.activations",
    "describe_training": "distcheck.mindspore.static",
    "MindSporeWorld": "distcheck.mindspore.world",
}

__all__ = sorted([*_EXPORTS, "attach", "install_import_hook"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
