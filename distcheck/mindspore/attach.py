"""Record `Model.train` runs without touching the training script.

`attach()` patches `mindspore.train.Model.train` and `.fit` so that, when
`DISTCHECK_RUN_DIR` is set, each call gets its optimizer wrapped in a `GradCapture`
(before the graph compiles), its activation cells tapped if `DISTCHECK_ACTIVATIONS=1`,
and a `DistcheckCallback` appended to its callbacks.

`install_import_hook()` defers that until the training script imports MindSpore. It is
meant for a `sitecustomize` and therefore imports nothing heavy and prints nothing: msrun
also runs the script in a scheduler process that exits inside `init()`, and that process
must stay free of side effects.

Every `Model.train`/`fit` call of a process is recorded into the same dump: MindSpore
restarts `cur_step_num` at each call, and the record continues as a new segment whose
steps follow the last one's (see `distcheck.recording.step_numbering`).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from typing import Any, Callable

# Nothing heavy at import time (no mindspore, no h5py): this module is loaded by
# sitecustomize in every Python process of the job.

_WRAPPED = "__distcheck_wrapped__"


def attach() -> None:
    """Patch `Model.train` and `Model.fit` once per process (idempotent)."""
    from mindspore.train import Model

    for name in ("train", "fit"):
        method = getattr(Model, name)
        if not getattr(method, _WRAPPED, False):
            setattr(Model, name, _recording(method))


def _recording(method: Callable[..., Any]) -> Callable[..., Any]:
    import inspect

    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        from distcheck.recording import run_dir_from_env

        if run_dir_from_env() is not None:
            try:
                bound = signature.bind(self, *args, **kwargs)
                bound.arguments["callbacks"] = _with_probe(self, bound.arguments.get("callbacks"))
                args, kwargs = bound.args[1:], bound.kwargs
            except Exception as exc:  # never stop training for the probe's sake
                _log(f"probe disabled on rank {_rank()}: cannot attach to Model.{method.__name__}: "
                    f"{type(exc).__name__}: {exc}")
        return method(self, *args, **kwargs)

    setattr(wrapper, _WRAPPED, True)
    return wrapper


def _with_probe(model: Any, callbacks: Any) -> Any:
    """`callbacks` (None, one Callback or a list) plus a DistcheckCallback."""
    from distcheck.mindspore.activations import install_activation_probes
    from distcheck.mindspore.callback import DistcheckCallback
    from distcheck.mindspore.capture import capture_refusal, install_grad_capture
    from distcheck.recording import ProbeOptions

    existing = [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    if any(isinstance(cb, DistcheckCallback) for cb in existing):
        return callbacks
    train_network = getattr(model, "_train_network", None)
    if train_network is not None:
        options = ProbeOptions.from_env()
        if capture_refusal(train_network, options.grad_copy_limit) is None:
            install_grad_capture(train_network)
        if options.activations:
            # Named as in the user's network (Model's `_network`), like its parameters.
            install_activation_probes(getattr(model, "_network", None) or train_network)
    probe = DistcheckCallback()
    return [probe.marker, *existing, probe]


def _rank() -> str:
    try:
        from distcheck.mindspore.world import rank_hint

        return rank_hint()
    except Exception:  # MindSpore itself may be what failed
        return os.environ.get("RANK_ID", "0")


def _log(message: str) -> None:
    from distcheck.recording import log

    log(message)


# -- lazy hook for sitecustomize -----------------------------------------------------------
class _AttachOnImport(importlib.abc.MetaPathFinder):
    """Runs `attach()` right after `import mindspore` has finished."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if fullname != "mindspore":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_attach(module):
            try:
                exec_module(module)
            finally:
                # Restore the loader: the instance attribute shadowed the class method.
                del loader.exec_module
            try:
                attach()
            except Exception as exc:
                _log(f"probe disabled on rank {_rank()}: cannot patch mindspore.train.Model: "
                    f"{type(exc).__name__}: {exc}")

        loader.exec_module = exec_then_attach
        return spec


def install_import_hook() -> None:
    """Call `attach()` once MindSpore is imported (now, if it already is). Prints nothing."""
    if "mindspore" in sys.modules:
        attach()
        return
    if not any(isinstance(finder, _AttachOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AttachOnImport())
