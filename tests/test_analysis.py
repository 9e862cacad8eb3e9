"""The analyzer on synthetic runs written by the real recorder (tests/synthetic.py)."""
import pytest

from distcheck.analysis import analyze
from distcheck.config import load_config
from synthetic import EXPECTED, make_run


def _findings(path, **config):
    return analyze([str(path)], {**load_config(), **config}).findings


@pytest.mark.parametrize("bug", sorted(EXPECTED))
def test_each_planted_bug_is_found_exactly(tmp_path, bug):
    make_run(str(tmp_path), bug)
    findings = _findings(tmp_path)
    expected = EXPECTED[bug]
    if expected is None:
        assert findings == []
        return
    code, step, ranks, params = expected
    first = [f for f in findings if f.code == code]
    assert first, [f.code for f in findings]
    f = first[0]
    assert (f.step, list(f.ranks), list(f.params)) == (step, ranks, params)


def test_seed_mismatch_is_one_root_cause_not_a_pile_of_symptoms(tmp_path):
    make_run(str(tmp_path), "seed", steps=40)
    assert [f.code for f in _findings(tmp_path)] == ["init_mismatch"]


def test_update_divergence_says_the_gradients_agreed(tmp_path):
    make_run(str(tmp_path), "lr")
    (f,) = _findings(tmp_path)
    assert "gradients of that step agreed" in f.message and f.caused_by is None


def test_param_divergence_from_unreduced_gradients_is_explained_by_them(tmp_path):
    make_run(str(tmp_path), "standalone")
    codes = {f.code: f for f in _findings(tmp_path)}
    assert codes["param_divergence"].caused_by == "grad_divergence@1"
    assert "stand_alone" not in codes["grad_divergence"].message  # the run said data_parallel


def test_two_ranks_without_a_majority_name_both(tmp_path):
    make_run(str(tmp_path), "lr", size=2)
    (f,) = _findings(tmp_path)
    assert f.ranks == (0, 1) and "no majority" in f.message


def test_every_k_locates_the_divergence_between_recorded_steps(tmp_path):
    make_run(str(tmp_path), "nudge", every=3, steps=12)
    (f,) = _findings(tmp_path)
    assert f.step == 6 and "agreed at step 3" in f.message


def test_full_tensors_give_the_size_of_the_divergence(tmp_path):
    make_run(str(tmp_path), "nudge", full_steps=(5,))
    (f,) = _findings(tmp_path)
    assert "max |diff| 0.001" in f.message
    (kind,) = f.detail["difference"]
    assert (kind["kind"], kind["exact"], kind["rank"]) == ("offset", True, f.ranks[0])
    assert "software cause" in f.message


def test_a_flipped_bit_is_named_exactly_from_kept_tensors_and_inferred_without(tmp_path):
    make_run(str(tmp_path / "kept"), "bitflip", full_steps=(5,))
    (f,) = _findings(tmp_path / "kept")
    (kind,) = f.detail["difference"]
    assert (f.code, f.step, kind["kind"], kind["bit"], kind["field"], kind["differing"]) == \
        ("param_divergence", 5, "bit_flip", 30, "exponent", 1)
    assert "silent data corruption" in f.message and "MS_NPU_ASD_CONFIG" in f.message
    make_run(str(tmp_path / "stats"), "bitflip")
    (f,) = _findings(tmp_path / "stats")
    (kind,) = f.detail["difference"]
    assert (kind["kind"], kind["exact"]) == ("few_elements", False) and "Inferred" in f.message


def test_a_missing_rank_file_is_reported_and_the_rest_analysed(tmp_path):
    make_run(str(tmp_path), "nudge", size=4)
    (tmp_path / "rank_00001.h5").unlink()
    findings = {f.code: f for f in _findings(tmp_path)}
    assert findings["rank_missing"].ranks == (1,)
    assert findings["param_divergence"].ranks == (3,)


def test_configured_replica_groups_compare_within_each_group(tmp_path):
    make_run(str(tmp_path), "lr", size=4)
    findings = _findings(tmp_path, replica_groups=[[0, 2], [1, 3]])
    (f,) = [f for f in findings if f.code == "param_divergence"]
    assert f.ranks == (1, 3)  # two replicas: no majority inside the group


def test_other_parallel_modes_need_replica_groups(tmp_path):
    make_run(str(tmp_path), "lr", parallel_mode="semi_auto_parallel")
    codes = [f.code for f in _findings(tmp_path)]
    assert codes == ["replica_groups_unknown"]


def test_several_directories_merge_into_one_run(tmp_path):
    make_run(str(tmp_path / "all"), "nudge", size=4)
    (tmp_path / "node0").mkdir()
    (tmp_path / "node1").mkdir()
    for r in range(4):
        (tmp_path / "all" / f"rank_0000{r}.h5").rename(tmp_path / f"node{r // 2}" / f"rank_0000{r}.h5")
    result = analyze([str(tmp_path / "node0"), str(tmp_path / "node1")], load_config())
    assert result.run["ranks_found"] == [0, 1, 2, 3]
    assert [(f.code, f.step, f.ranks) for f in result.findings] == [("param_divergence", 5, (3,))]


def test_ranks_with_other_parameters_are_a_structure_mismatch(tmp_path):
    import threading

    import numpy as np

    from distcheck.recording import ParamInfo, ProbeOptions, Recorder
    from distcheck.world import FakeWorld

    worlds = FakeWorld.create(3)

    def rank_main(world):
        shape = (4, 3) if world.rank != 1 else (3, 4)
        params = [ParamInfo("w", shape, "float32", True, True), ParamInfo("b", (3,), "float32", True, True)]
        rec = Recorder.open(str(tmp_path), world, params, {"parallel_mode": "data_parallel"}, ProbeOptions())
        for step in range(4):
            rec.record(step, [np.full(shape, step, np.float32), np.zeros(3, np.float32)])
        rec.close()

    threads = [threading.Thread(target=rank_main, args=(w,)) for w in worlds]
    [t.start() for t in threads]
    [t.join() for t in threads]
    (f,) = _findings(tmp_path)
    assert (f.code, f.ranks, f.params) == ("structure_mismatch", (1,), ("w",))


def test_the_rank_whose_heartbeats_stopped_first_is_named(tmp_path):
    import h5py

    make_run(str(tmp_path), "none", size=3)
    for rank in range(3):  # as if every rank was killed in the same step, rank 1 first
        with h5py.File(tmp_path / f"rank_0000{rank}.h5", "r+") as f:
            f["status"][0] = 0
            beats = f["heartbeat"]
            beats.resize(beats.shape[0] + 1, axis=0)
            last = f["steps/time"][-1]
            beats[-1] = (last + (5 if rank == 1 else 120), f["steps/step"][-1], 1, last)
    (f,) = _findings(tmp_path)
    assert (f.code, f.ranks) == ("rank_stopped", (1,))
    assert "rank 1 was killed without warning" in f.message and "ranks 0, 2 waited for it" in f.message


def test_a_rank_outside_the_training_step_is_blamed_over_the_waiting_ones(tmp_path):
    import h5py

    make_run(str(tmp_path), "none", size=3)
    for rank in range(3):  # rank 2 stuck in its callbacks after the last step; 0 and 1 in the step
        with h5py.File(tmp_path / f"rank_0000{rank}.h5", "r+") as f:
            f["status"][0] = 0
            beats = f["heartbeat"]
            beats.resize(beats.shape[0] + 1, axis=0)
            last = f["steps/time"][-1]
            beats[-1] = (last + 30, f["steps/step"][-1], 3 if rank == 2 else 1, last)
    (f,) = _findings(tmp_path)
    assert (f.code, f.ranks, f.step) == ("rank_stopped", (2,), 12)
    assert "in the training script's callbacks" in f.message


def test_a_job_stopped_from_outside_blames_no_rank(tmp_path):
    import h5py

    from distcheck.store.sidecars import job_path, write_json

    make_run(str(tmp_path), "none", size=3)
    for rank in range(3):
        with h5py.File(tmp_path / f"rank_0000{rank}.h5", "r+") as f:
            f["status"][0], f["status_signal"][0] = 3, 15
    write_json(job_path(str(tmp_path)), {"stopped_by": "SIGTERM"})
    (f,) = _findings(tmp_path)
    assert (f.code, f.ranks, f.severity.value) == ("job_stopped", (), "info")
    assert "SIGTERM to distcheck launch" in f.message


def test_causes_come_first_and_within_a_window():
    from distcheck.analysis.causes import link_causes
    from distcheck.rules.registry import finding

    diverging = finding("loss_diverging", 261, [0], [], "loss ran away")
    nearby = finding("grad_exploding", 300, [0], [], "spike")
    far = finding("grad_exploding", 8603, [0], [], "spike")
    before = finding("loss_nonfinite", 250, [0], [], "nan")
    linked = {f.key: f.caused_by for f in link_causes([diverging, nearby, far, before], window=100)}
    assert linked["grad_exploding@300"] == "loss_nonfinite@250"
    assert linked["grad_exploding@8603"] is None  # thousands of steps later: explained by neither
    assert linked["loss_nonfinite@250"] is None  # the divergence at 261 came after it
    alone = {f.key: f.caused_by for f in link_causes([diverging, nearby], window=100)}
    assert alone["grad_exploding@300"] == "loss_diverging@261"


def test_a_message_about_ten_thousand_ranks_stays_a_line():
    from distcheck.findings import rank_list

    assert rank_list([0, 2, 5]) == "0, 2, 5"  # a few: as they are
    assert rank_list(range(10240)) == "0..10239"
    assert rank_list([*range(9), 20, 21, 22, 40]) == "0..8, 20..22, 40"
    assert rank_list(range(0, 8000, 8)) == "0, 8, 16, 24, 32, 40, 48, 56 and more (1000 ranks in all)"


def test_batches_gathered_a_step_at_a_time_give_what_all_at_once_gives(tmp_path, monkeypatch):
    from distcheck.analysis import data

    make_run(str(tmp_path), "unsharded", size=3)
    whole = _findings(tmp_path)
    assert [f.code for f in whole] == ["data_not_sharded"]
    monkeypatch.setattr(data, "BATCH_BUDGET", 1)  # one step a round
    assert _findings(tmp_path) == whole
    assert "(" in whole[0].message and "compared steps had duplicates" in whole[0].message
