"""The MindSpore probe: turns one rank's training state into `Recorder` calls.

`Probe` is the API for hand-written training loops, and `DistcheckCallback` (for
`Model.train`) is a thin layer over it. Example, with the step inside a GRAPH_MODE Cell::

    probe = Probe(network, run_dir="runs/x")      # run_dir defaults to $DISTCHECK_RUN_DIR
    opt = probe.wrap(optimizer)                   # use `opt` in your TrainStep cell
    probe.tap_activations()                       # only acts with DISTCHECK_ACTIVATIONS=1
    probe.begin()                                 # records step 0
    for step, (x, y) in enumerate(batches, 1):
        loss = train_step(x, y)
        probe.step_end(step, loss, batch=(x, y))
    probe.close()

A probe never takes training down: any error logs one line
("distcheck: probe disabled on rank R: ...") and switches the probe off. Two
exceptions are asked for by the user: `ConsistencyError`, raised on every rank by
the online check with fail-fast, and `ProbeError`, raised with strict.

Heartbeats say where the training thread is (`Phase`); a custom loop is in
`Phase.LOOP` between two `step_end` calls unless it says more with `enter()`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Sequence
from typing import Any

import mindspore as ms
import numpy as np
import xxhash
from mindspore import Parameter, Tensor, nn

from distcheck.layout import on_last_stage
from distcheck.mindspore.activations import ActivationTap, install_activation_probes
from distcheck.mindspore.capture import GradCapture
from distcheck.mindspore.cells import network_parameters
from distcheck.mindspore.layouts import SHARDED_MODES, layout_groups
from distcheck.mindspore.perturb import perturb, perturb_once
from distcheck.mindspore.static import describe_training
from distcheck.mindspore.world import MindSporeWorld, communication_ready, rank_hint
from distcheck.recording import (ConsistencyError, ParamInfo, Phase, ProbeError, ProbeOptions, Recorder, log,
                                 run_dir_from_env)
from distcheck.recording import faults
from distcheck.world import MpiWorld, SingleWorld, World

ENV_COMM = "DISTCHECK_COMM"


class Probe:
    """Records the parameters, post-AllReduce gradients, loss and batch of one rank.

    Args:
        network: the model; its parameters (trainable or not, e.g. BatchNorm's
            moving statistics) are recorded in `parameters_and_names()` order. Optimizer
            state and distcheck's own shadows are left out, so a train cell may be
            passed too.
        run_dir: where the dump goes; defaults to `$DISTCHECK_RUN_DIR`. With neither,
            the probe stays off.
        options: what to record; defaults to `ProbeOptions.from_env()`.
        world: how ranks talk; defaults to `default_world()`.
        meta: extra run metadata, merged over what the probe finds itself.
        optimizer: the optimizer, when not given through `wrap()`; only described
            in the metadata (``meta["static"]``, see `describe_training`).
        replica_groups: which ranks must hold identical copies of which parameters,
            in the config's form: ``[[0, 2], [1, 3]]`` for every parameter, or
            ``[{"params": "mid.*", "groups": [[0, 2, 4], [1, 3, 5]]}, {"params": "*",
            "groups": [[0, 1, 2, 3, 4, 5]]}]`` (first matching glob wins). Overrides
            ``$DISTCHECK_REPLICA_GROUPS``. Without it: MindSpore's compiled layouts in
            semi/auto parallel, every rank otherwise.
    """

    def __init__(self, network: nn.Cell, *, run_dir: str | None = None, options: ProbeOptions | None = None,
                 world: World | None = None, meta: dict[str, Any] | None = None,
                 optimizer: nn.Cell | None = None, replica_groups: list | None = None) -> None:
        self.network = network
        self.replica_groups = replica_groups
        #: The compiled train cell, where semi/auto parallel keeps the parameters' layouts.
        self.train_network: nn.Cell | None = None
        self._layouts_known = False
        self._computes_loss = True  # False on pipeline stages before the last
        self.run_dir = run_dir or run_dir_from_env()
        self.options = options
        self.world = world
        self.meta = dict(meta or {})
        self.optimizer = optimizer
        self.capture: GradCapture | None = None
        self.taps: list[ActivationTap] = []
        self.enabled = True
        self._recorder: Recorder | None = None
        self._params: list[Parameter] = []
        self._grad_slots: list[int | None] = []
        self._pending: int | None = None  # run step of a completed update not yet recorded
        self._no_update = False  # the step just completed applied no update
        self._updates_seen: int | None = None  # the capture's update count at the last step
        #: Label steps by the updates applied (the capture's count), not by the loop's
        #: step: set by `DistcheckCallback`, as `cur_step_num` counts micro-steps too.
        self.labels_by_updates = False

    # -- setup -------------------------------------------------------------------
    def wrap(self, optimizer: nn.Cell) -> GradCapture:
        """A `GradCapture` around `optimizer` whose gradients this probe records.

        Call before `begin()`. Passing a `GradCapture` adopts it as is.
        """
        capture = optimizer if isinstance(optimizer, GradCapture) else GradCapture(optimizer)
        self.capture = capture
        return capture

    def tap_activations(self) -> list[ActivationTap]:
        """Tap the network's activation cells, if activation statistics are asked for.

        They are asked for with ``DISTCHECK_ACTIVATIONS=1`` (`ProbeOptions.activations`);
        otherwise, or with no run directory, the network is left alone. Call before the
        first step: a graph compiled earlier runs without the taps. Idempotent. See
        `distcheck.mindspore.activations` for what is measured and what cannot be.
        """
        if not self.enabled or self.run_dir is None or self._recorder is not None:
            return self.taps
        if not (self.options or ProbeOptions.from_env()).activations:
            return self.taps
        with self.guard("cannot tap activations"):
            self.taps = install_activation_probes(self.network)
        return self.taps

    def begin(self, step: int = 0) -> None:
        """Open the dump and record the state before the first update (`step`, normally 0).

        In a process that already recorded a training call into the same run
        directory, the record continues as a new segment (see `distcheck.recording.step_numbering`).
        """
        if self._recorder is not None or not self.enabled:
            return
        if self.run_dir is None:
            self._disable("no run directory: pass run_dir or set DISTCHECK_RUN_DIR")
            return
        options = self.options or ProbeOptions.from_env()
        try:
            faults.plant("world", _int_or_none(rank_hint()))
            self.world = self.world or default_world()
        except Exception as exc:
            why = f"cannot set up communication between ranks: {type(exc).__name__}: {exc}"
            # Tell the other ranks through the run directory, so none waits for this one,
            # and leave a dump that says why this rank recorded nothing.
            self._recorder = Recorder.offline(None, options, run_dir=self.run_dir, why=why)
            self.enabled = False
            log(f"probe disabled on rank {self.rank}: {why}")
            with self.guard("cannot write the dump"):
                alone = SingleWorld(rank=_int_or_none(rank_hint()) or 0, size=_world_size_hint())
                infos = [self._param_info(p, None) for p in network_parameters(self.network)]
                Recorder.stopped(self.run_dir, alone, infos, framework_meta(alone.size), options, why)
            if options.strict:
                raise ProbeError(f"rank {self.rank}: {why}") from exc
            return
        with self.guard("cannot start"):
            self._params = network_parameters(self.network)
            if options.perturb:  # a noise run: before step 0 is recorded
                moved = perturb_once(self._params)
                if moved:
                    self.meta["perturbed"] = f"{moved} trainable parameter(s) moved by one ulp before step 0 and after every update"
            self._grad_slots = self._match_grads()
            infos = [self._param_info(p, slot) for p, slot in zip(self._params, self._grad_slots)]
            static = self._static()
            meta = {**framework_meta(self.world.size), "static": static, **self.meta}
            self._computes_loss = on_last_stage(self.world.rank, self.world.size, meta["pipeline_stages"])
            if not self._computes_loss:
                meta["loss"] = "not recorded: this rank is not on the last pipeline stage, which computes the loss"
            if static is not None and self.world.rank == 0:
                report_static(static)
            taps = [(tap.name, tap.kind) for tap in self.taps]
            if self.replica_groups is not None:
                options = dataclasses.replace(options, replica_groups=json.dumps(self.replica_groups))
            layouts = self._layouts()
            self._recorder = Recorder.open(self.run_dir, self.world, infos, meta, options, activations=taps,
                                           layouts=layouts)
        if self._recorder is None:
            # Still join the online checks, saying "nothing from me", so no rank waits for this one.
            self._recorder = Recorder.offline(self.world, options, run_dir=self.run_dir, why="probe failed to start")
        with self.guard("cannot read the update count"):
            self._updates_seen = self.capture.updates() if self.capture is not None else None
        if self.labels_by_updates and self._updates_seen is not None:
            step = self._updates_seen
        run_step = self._recorder.step_done(step, update=False)
        if self.enabled:
            with self.guard(f"step {step}"):
                self._record(run_step, grads_valid=False, loss=None, batch=None, forward_ran=False)
        self._join_online(run_step)
        self._copy_grads_for(run_step + 1)
        self._recorder.enter(Phase.STARTING)

    # -- per step ----------------------------------------------------------------
    def step_done(self, step: int) -> None:
        """Note that update number `step` completed, before anything else runs.

        `step_end` does this itself; call it earlier (as `DistcheckCallback` does,
        before the script's own callbacks) so that a rank stuck afterwards is known
        to have completed `step`.
        """
        if self._recorder is None or self._pending is not None or self._no_update:
            return
        if self.capture is not None and self._updates_seen is not None:
            count = self.capture.updates()  # one read per step
            if count == self._updates_seen:  # no optimizer call: a micro-step, or an overflow skip
                self._no_update = True
                self._recorder.still_alive()
                return
            self._updates_seen = count
            if self.labels_by_updates:
                step = count
        self._pending = self._recorder.step_done(step)

    def enter(self, phase: Phase) -> None:
        """Say where the training thread is now; heartbeats carry it (see `Phase`)."""
        if self._recorder is not None:
            self._recorder.enter(phase)

    def step_end(self, step: int, loss: Any = None, batch: Sequence[Any] | None = None,
                 grads_valid: bool = True, then: Phase = Phase.LOOP) -> None:
        """Record the state after update number `step` (1-based), if it is due.

        `loss` may be a Tensor, a number or None; `batch` a sequence of Tensors or
        arrays. Pass `grads_valid=False` for a step whose update a loss-scale overflow
        skipped: it is noted in the dump as skipped, and no row is recorded. `then` is
        where the training thread goes next (the heartbeats say so while it is there).
        """
        if self._recorder is None:
            return
        if not grads_valid and self.capture is None and self._pending is None:
            # An overflow skip seen without a capture: no update, so no row either.
            self._recorder.still_alive()
            self._no_update = True
        self.step_done(step)
        if self._no_update:  # nothing new to record, and every rank skips the same steps
            self._no_update = False
            if not grads_valid:
                with self.guard("cannot note a skipped update"):
                    self._recorder.skipped()
            self._recorder.enter(then)
            return
        run_step, self._pending = self._pending, None
        if not self._layouts_known and self.enabled:  # compiled by the first step
            with self.guard("cannot read the parallel layouts"):
                layouts = self._layouts()
                if layouts:
                    self._recorder.set_replicas(layouts, _parallel_mode())
        if self.wants(run_step):
            with self.guard(f"step {step}"):
                loss = loss_value(loss) if self._computes_loss else None
                self._record(run_step, grads_valid, loss, batch_arrays(batch))
        if (self.options or ProbeOptions.from_env()).perturb and self.enabled:
            with self.guard("cannot perturb the weights"):
                perturb(self._params, run_step)  # a noise run: rounding made at every step
        self._join_online(run_step)
        self._copy_grads_for(run_step + 1)
        self._recorder.enter(then)

    def _copy_grads_for(self, run_step: int) -> None:
        """Have the compiled step copy its gradients only if `run_step`, the next update,
        is recorded: an unrecorded step then costs no copy."""
        if self.capture is not None:
            with self.guard("cannot switch the gradient copy"):
                self.capture.keep_next(self.wants(run_step))

    def wants(self, run_step: int) -> bool:
        """Whether run step `run_step` will be recorded."""
        return self.enabled and self._recorder is not None and self._recorder.wants(run_step)

    def _join_online(self, run_step: int) -> None:
        """Take part in a due online check that recording did not reach (after a failure)."""
        recorder = self._recorder
        if recorder is not None and recorder.online_due(run_step):
            recorder.record(run_step)

    def end(self) -> None:
        """The training call ended cleanly. The dump stays open for a later call in this
        process and is closed as finished when the process exits."""
        if self._recorder is not None:
            with self.guard("cannot end"):
                self._recorder.end_segment()

    def close(self, clean: bool = True) -> None:
        """Close the dump now; `clean=False` marks it as aborted."""
        recorder, self._recorder = self._recorder, None
        self.enabled = False
        if recorder is not None:
            with self.guard("cannot close"):
                recorder.close(clean=clean)

    # -- internals ---------------------------------------------------------------
    def _record(self, step: int, grads_valid: bool, loss: float | None, batch: list[np.ndarray] | None,
                forward_ran: bool = True) -> None:
        # Views: summarised at once, and the recorder copies what it keeps.
        params = [to_numpy(p, copy=False) for p in self._params]
        grads = None
        if grads_valid and self.capture is not None:
            shadows = self.capture.shadows
            grads = [None if slot is None else to_numpy(shadows[slot], copy=False) for slot in self._grad_slots]
        # The taps hold the forward pass of the step just taken (also one whose update
        # a loss-scale overflow skipped); before the first step they hold zeros.
        activations = [tap.stats() for tap in self.taps] if self.taps and forward_ran else None
        self._recorder.record(step, params, grads, loss, batch, activations=activations)

    def _layouts(self) -> dict[str, tuple[int, ...]] | None:
        """Replica groups from the compiled parallel layouts (semi/auto parallel only);
        None until they are known."""
        if _parallel_mode() not in SHARDED_MODES or self.world is None:
            self._layouts_known = True
            return None
        groups = layout_groups([self.train_network, self.network], self.world.rank)
        self._layouts_known = bool(groups)
        return groups or None

    def _static(self) -> dict[str, Any] | None:
        """`describe_training` for the metadata; None (and one log line) if it fails."""
        try:
            optimizer = self.capture if self.capture is not None else self.optimizer
            return describe_training(self.network, optimizer)
        except Exception as exc:  # a description is not worth the recording
            log(f"training setup not described on rank {self.rank}: {type(exc).__name__}: {exc}")
            return None

    def _match_grads(self) -> list[int | None]:
        """For each recorded parameter, its slot among the captured gradients."""
        if self.capture is None:
            return [None] * len(self._params)
        slot_of = {id(p): i for i, p in enumerate(self.capture.parameters)}
        return [slot_of.get(id(p)) for p in self._params]

    @staticmethod
    def _param_info(param: Parameter, slot: int | None) -> ParamInfo:
        return ParamInfo(name=param.name, shape=tuple(int(d) for d in param.shape), dtype=dtype_name(param.dtype),
                         trainable=bool(param.requires_grad), has_grad=slot is not None)

    def guard(self, what: str) -> "_Guard":
        """Context manager: an error inside logs one line and disables the probe."""
        return _Guard(self, what)

    def _disable(self, why: str, strict: bool = False) -> None:
        """Stop recording on this rank. The recorder stays, to join online checks.
        With `strict` (the user's `--strict`), raise `ProbeError` instead of going on."""
        if self.enabled:
            self.enabled = False
            if self._recorder is not None and self._recorder.enabled:
                self._recorder.disable(why)  # logs the line and closes the dump as "recording stopped"
            else:
                log(f"probe disabled on rank {self.rank}: {why}")
        if strict:
            raise ProbeError(f"rank {self.rank}: {why}")

    @property
    def strict(self) -> bool:
        return (self.options or ProbeOptions.from_env()).strict

    @property
    def rank(self) -> str:
        """This rank's number as text (from the environment before the world is known)."""
        if self.world is not None:
            return str(self.world.rank)
        return rank_hint()


class _Guard:
    """Turns any error except `ConsistencyError` into one log line and a disabled probe
    (or, with `strict`, into a `ProbeError` that stops the job)."""

    def __init__(self, probe: Probe, what: str) -> None:
        self.probe, self.what = probe, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, (ConsistencyError, ProbeError)) or not isinstance(exc, Exception):
            return False
        self.probe._disable(f"{self.what}: {type(exc).__name__}: {exc}", strict=self.probe.strict)
        return True


def _world_size_hint() -> int:
    """The number of ranks as the launcher says (msrun, mpirun), for a rank without a World."""
    for name in ("MS_WORKER_NUM", "RANK_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = _int_or_none(os.environ.get(name, ""))
        if value:
            return value
    return 1


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def report_static(static: dict[str, Any]) -> None:
    """Log the static rules' findings at the start of training, before compute is spent."""
    try:
        from distcheck.config import load_config
        from distcheck.rules import static_findings

        findings = static_findings(static, 0, load_config(os.environ.get("DISTCHECK_CONFIG") or None))
    except Exception as exc:  # the same rules run again after the job
        log(f"static checks skipped: {type(exc).__name__}: {exc}")
        return
    for f in findings:
        log(f"{f.severity.value} {f.code}: {f.message}")


# -- what to record ------------------------------------------------------------------
def dtype_name(dtype: Any) -> str:
    """numpy's name for a MindSpore dtype, or "bfloat16"."""
    if dtype == ms.bfloat16:
        return "bfloat16"
    try:  # MindSpore's names are numpy's, capitalised ("Float32"); dtype_to_nptype warns of its end
        return np.dtype(str(dtype).lower()).name
    except TypeError:
        return np.dtype(ms.dtype_to_nptype(dtype)).name


def to_numpy(value: Any, copy: bool = True) -> np.ndarray:
    """Host array of a Tensor/Parameter/array; bfloat16 comes back as its uint16 bits.

    A copy by default: on CPU `asnumpy()` of a Parameter is a view of its memory, which
    the next update overwrites in place. `copy=False` serves arrays that are hashed and
    summarised at once (the recorder copies what it keeps).
    """
    array = value.asnumpy() if isinstance(value, Tensor) else np.asarray(value)
    if copy and isinstance(value, Tensor):
        array = array.copy()
    if array.dtype.name == "bfloat16":  # MindSpore's own numpy bfloat16 type
        array = array.view(np.uint16)
    return array


def loss_value(loss: Any) -> float | None:
    """A float from a loss Tensor/number (the mean if it is not a scalar), or None."""
    if loss is None:
        return None
    array = to_numpy(loss) if isinstance(loss, Tensor) else np.asarray(loss)
    if array.dtype == np.uint16 and isinstance(loss, Tensor) and loss.dtype == ms.bfloat16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return float(array.reshape(-1)[0]) if array.size == 1 else float(np.mean(array, dtype=np.float64))


def batch_arrays(batch: Sequence[Any] | None) -> list[np.ndarray] | None:
    """The batch as host arrays, or None when there is nothing usable (e.g. sink mode)."""
    if batch is None:
        return None
    if isinstance(batch, (Tensor, np.ndarray)):
        batch = [batch]
    items = list(batch)
    if not items or not all(isinstance(x, (Tensor, np.ndarray)) for x in items):
        return None
    return [to_numpy(x) for x in items]


def split_outputs(outputs: Any) -> tuple[Any, bool]:
    """(loss, overflowed) from a train network's outputs.

    `nn.TrainOneStepWithLossScaleCell` returns `(loss, overflow, loss_scale)`; on
    overflow it skips the optimizer, so that step has no new gradients.
    """
    if isinstance(outputs, (tuple, list)):
        if not outputs:
            return None, False
        overflow = False
        if len(outputs) >= 2 and isinstance(outputs[1], Tensor) and outputs[1].dtype == ms.bool_:
            overflow = bool(np.any(outputs[1].asnumpy()))
        return outputs[0], overflow
    return outputs, False


# -- where and how ---------------------------------------------------------------------
def default_world() -> World:
    """MPI if `DISTCHECK_COMM=mpi`; MindSpore's world if `init()` ran with >1 rank; else one rank."""
    if os.environ.get(ENV_COMM, "").lower() == "mpi":
        return MpiWorld()
    if communication_ready():
        world = MindSporeWorld()
        if world.size > 1:
            return world
        return SingleWorld(rank=world.rank, size=1)
    # Without init() every process is alone; RANK_ID (set by msrun) keeps file names apart.
    return SingleWorld(rank=int(os.environ.get("RANK_ID", "0") or 0), size=1)


def framework_meta(world_size: int, sink_size: int | None = None) -> dict[str, Any]:
    """Run metadata the recorder stores: parallel setup, execution mode, seeds."""
    parallel_mode = _parallel_mode()
    return {
        "framework": "mindspore",
        "framework_version": ms.__version__,
        "device_target": str(ms.get_context("device_target")),
        "mode": "GRAPH_MODE" if ms.get_context("mode") == ms.GRAPH_MODE else "PYNATIVE_MODE",
        "parallel_mode": parallel_mode,
        "gradients_mean": bool(ms.get_auto_parallel_context("gradients_mean")),
        "pipeline_stages": _pipeline_stages(),
        "sink_size": sink_size,
        "seeds": seeds(),
    }


def _parallel_mode() -> str:
    return str(ms.get_auto_parallel_context("parallel_mode"))


def _pipeline_stages() -> int:
    try:
        return max(1, int(ms.get_auto_parallel_context("pipeline_stages")))
    except Exception:  # not every version or mode has it
        return 1


def seeds() -> dict[str, Any]:
    """Seeds that decide initial weights and data order, as far as they can be read.

    numpy's and Python's global generators have no readable seed; a fingerprint of
    their current state shows whether ranks were seeded alike.
    """
    result: dict[str, Any] = {"mindspore": ms.get_seed()}
    try:
        result["mindspore_dataset"] = int(ms.dataset.config.get_seed())
    except Exception:  # the dataset engine may be unavailable; the seed is then moot
        result["mindspore_dataset"] = None
    _, keys, pos, *_ = np.random.get_state()
    result["numpy_state_xxh64"] = xxhash.xxh64_hexdigest(keys.tobytes() + int(pos).to_bytes(4, "little"))
    result["python_random_state_xxh64"] = xxhash.xxh64_hexdigest(repr(random.getstate()).encode())
    return result
