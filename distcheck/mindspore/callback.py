"""`DistcheckCallback`: record a `Model.train` run with a `Probe`.

It runs after the script's own callbacks; its `marker` (a `PhaseMarker`) runs before
them, so the heartbeats can tell the training step, the script's callbacks and the
data pipeline apart, and a rank stuck in a callback is known to have completed its step.

Steps are labelled by the number of updates applied so far (the gradient capture counts
the optimizer's calls), so gradient accumulation's micro-steps and loss-scale overflow
skips are not recorded as updates; without a capture, by MindSpore's `cur_step_num`. In dataset sink mode on Ascend/GPU a step-end
callback fires once per `sink_size` steps, so the recorded steps are simply sparse
(and the batch of those steps is not available on the host). On CPU the callback
fires after every step even in sink mode.
"""

from __future__ import annotations

from mindspore.nn import Cell
from mindspore.train import Callback, RunContext

from distcheck.mindspore.activations import find_activation_taps
from distcheck.mindspore.capture import (GradCapture, capture_refusal, find_grad_capture,
                                        install_grad_capture)
from distcheck.mindspore.probe import Probe, split_outputs
from distcheck.recording import Phase, ProbeOptions, log


class DistcheckCallback(Callback):
    """Records parameters, post-AllReduce gradients, loss and batch of this rank.

    Add it to `Model.train(..., callbacks=[...])`, or let `distcheck.mindspore.attach()`
    do it. One instance records one `Model.train` call.

    Args:
        run_dir: where the dump goes; defaults to `$DISTCHECK_RUN_DIR`.
        options: what to record; defaults to `ProbeOptions.from_env()`.
    """

    def __init__(self, run_dir: str | None = None, options: ProbeOptions | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.options = options
        self.probe: Probe | None = None
        self.marker = PhaseMarker(self)

    def on_train_begin(self, run_context: RunContext) -> None:
        if self.probe is not None:
            return  # already used for an earlier Model.train call
        args = run_context.original_args()
        sink = args.get("sink_size") if args.get("dataset_sink_mode") else None
        self.probe = Probe(args.network, run_dir=self.run_dir, options=self.options, meta={"sink_size": sink},
                           optimizer=args.get("optimizer"))
        self.probe.train_network = args.train_network
        with self.probe.guard("cannot wrap the optimizer"):
            limit = (self.probe.options or ProbeOptions.from_env()).grad_copy_limit
            # A capture already installed (by attach, or by the user) is used whatever its size.
            refusal = None if find_grad_capture(args.train_network) else capture_refusal(args.train_network, limit)
            if refusal is not None:
                self.probe.meta["gradients"] = refusal
            else:
                capture = _capture_for(args.train_network, self.probe.rank)
                if capture is not None:
                    self.probe.wrap(capture)
        with self.probe.guard("cannot tap activations"):
            _tap_activations(self.probe, args.train_network)
        self.probe.labels_by_updates = True
        self.probe.begin(step=int(args.cur_step_num))

    def on_train_step_begin(self, run_context: RunContext) -> None:
        if self.probe is not None:
            self.probe.enter(Phase.STEP)

    def on_train_step_end(self, run_context: RunContext) -> None:
        probe = self.probe
        if probe is None:
            return
        args = run_context.original_args()
        step = int(args.cur_step_num)
        with probe.guard(f"step {step}"):
            loss, overflowed = split_outputs(args.net_outputs)
            probe.step_end(step, loss, batch=args.get("train_dataset_element"), grads_valid=not overflowed,
                           then=Phase.DATA)

    def on_train_epoch_begin(self, run_context: RunContext) -> None:
        if self.probe is not None:
            self.probe.enter(Phase.DATA)

    def on_train_epoch_end(self, run_context: RunContext) -> None:
        if self.probe is not None:
            self.probe.enter(Phase.DATA)

    def on_train_end(self, run_context: RunContext) -> None:
        if self.probe is not None:
            self.probe.end()
            self.probe.enter(Phase.FINISHED)


class PhaseMarker(Callback):
    """Runs before the script's callbacks: a step has completed, callbacks come next."""

    def __init__(self, owner: DistcheckCallback) -> None:
        super().__init__()
        self.owner = owner

    def _enter(self, phase: Phase) -> None:
        if self.owner.probe is not None:
            self.owner.probe.enter(phase)

    def on_train_step_begin(self, run_context: RunContext) -> None:
        self._enter(Phase.CALLBACKS)

    def on_train_step_end(self, run_context: RunContext) -> None:
        probe = self.owner.probe
        if probe is not None:
            step = int(run_context.original_args().cur_step_num)
            with probe.guard(f"step {step}"):
                probe.step_done(step)
                probe.enter(Phase.CALLBACKS)

    def on_train_epoch_begin(self, run_context: RunContext) -> None:
        self._enter(Phase.CALLBACKS)

    def on_train_epoch_end(self, run_context: RunContext) -> None:
        self._enter(Phase.CALLBACKS)


def _capture_for(train_network: Cell, rank: str) -> GradCapture | None:
    """The grad capture of the train network, installing it if the graph is not built yet."""
    capture = find_grad_capture(train_network)
    if capture is not None:
        return capture
    if train_network.compile_cache:
        log(f"gradients not recorded on rank {rank}: the train network was compiled before distcheck could "
            "wrap its optimizer; call distcheck.mindspore.attach() before Model.build()")
        return None
    return install_grad_capture(train_network)


def _tap_activations(probe: Probe, train_network: Cell) -> None:
    """Adopt the taps `attach()` installed, or install them if the graph is not built yet."""
    if find_activation_taps(train_network) or not train_network.compile_cache:
        probe.tap_activations()
    elif (probe.options or ProbeOptions.from_env()).activations:
        log(f"activations not recorded on rank {probe.rank}: the train network was compiled before distcheck "
            "could tap them; call distcheck.mindspore.attach() before Model.build()")
