"""The online check on FakeWorld ranks: buffers the network updates itself (BatchNorm's
moving statistics) differ across replicas by design and never cost the per-parameter
round; a differing weight, trainable or frozen, still gets there and is named."""
import numpy as np

from distcheck.digest import digest
from distcheck.recording.online import ConsistencyError, OnlineCheck
from distcheck.store.schema import ParamInfo
from distcheck.world import FakeWorld
from synthetic import play

PARAMS = [ParamInfo("fc.weight", (4, 4), "float32", True, True),
          ParamInfo("bn.moving_mean", (4,), "float32", False, False),
          ParamInfo("bn.moving_variance", (4,), "float32", False, False),
          ParamInfo("backbone.weight", (4, 4), "float32", False, False),  # a frozen weight
          ParamInfo("ema.shadow", (4,), "float32", False, False)]  # a buffer with its own name
STEPS = 4


def _values(rank: int, step: int, bug: str) -> list[np.ndarray]:
    """Every rank's parameters at ``step``: the weights alike, the buffers from each rank's
    own batches (equal at step 0), and the planted bug on rank 2 from step 2 on."""
    weight = np.full((4, 4), 0.5 - 0.01 * step, np.float32)
    local = np.float32(0.1 * step * (rank + 1))
    frozen = np.ones((4, 4), np.float32)
    if rank == 2 and step >= 2:
        if bug == "weight":
            weight = weight + np.float32(1e-3)
        if bug == "frozen":
            frozen = frozen + np.float32(1e-3)
    return [weight, np.full(4, local), np.full(4, 1 + local), frozen, np.full(4, 2 * local)]


def _play(bug: str):
    """Run an online check at every step on 3 ranks; return the shapes every rank
    all-gathered and the mismatch messages (fail_fast stops at the first)."""
    worlds = FakeWorld.create(3)
    gathered, messages = [], []
    for world in worlds:
        allgather = world.allgather

        def recording(array, allgather=allgather):
            gathered.append(np.shape(array))
            return allgather(array)

        world.allgather = recording

    def rank_main(world):
        check = OnlineCheck(world, PARAMS, every=1, online_every=1, fail_fast=True)
        check.set_groups([(0, 1, 2)] * len(PARAMS))
        try:
            for step in range(STEPS):
                rows = np.array([digest(v) for v in _values(world.rank, step, bug)], np.uint64)
                check.run(step, rows, on_mismatch=lambda why, _: messages.append(why))
        except ConsistencyError:
            pass

    play(worlds, rank_main)
    per_parameter = [s for s in gathered if len(s) == 2 and s[0] == len(PARAMS)]
    return per_parameter, messages


def test_a_healthy_batchnorm_job_never_gathers_per_parameter_digests():
    per_parameter, messages = _play("none")
    assert per_parameter == [] and messages == []


def test_a_differing_trainable_weight_is_still_found_and_named():
    per_parameter, messages = _play("weight")
    assert per_parameter and len(messages) == 3  # every rank stops
    assert "step 2 on rank(s) [2] in 1 parameter(s): fc.weight" in messages[0]


def test_a_frozen_weight_written_to_on_one_rank_is_found_not_taken_for_a_buffer():
    per_parameter, messages = _play("frozen")
    assert per_parameter and len(messages) == 3
    assert "step 2 on rank(s) [2] in 1 parameter(s): backbone.weight" in messages[0]
