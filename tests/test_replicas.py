"""Per-parameter replica groups: declarations, layouts, the dump, the online check and the
analysis, on synthetic hybrid jobs played by FakeWorld ranks (the real 6-rank msrun job
is in e2e/test_hybrid.py)."""
import json

import numpy as np
import pytest

from distcheck.analysis import analyze
from distcheck.config import load_config
from distcheck.layout import ParamLayout, from_layout_tuple, from_strategy_item, on_last_stage, replica_group
from distcheck.recording import ConsistencyError, ParamInfo, ProbeOptions, Recorder
from distcheck.replicas import Declaration, DeclarationError, Source, leaders, resolve
from distcheck.world import FakeWorld
from synthetic import play

HYBRID = [{"params": "mid.*", "groups": [[0, 2, 4], [1, 3, 5]]}, {"params": "*", "groups": [[0, 1, 2, 3, 4, 5]]}]


# -- declarations ----------------------------------------------------------------
def test_a_declaration_gives_each_parameter_the_first_matching_entry():
    d = Declaration.parse(HYBRID)
    assert d.group_of("mid.weight", 4) == (0, 2, 4) and d.group_of("mid.bias", 1) == (1, 3, 5)
    assert d.group_of("head.weight", 4) == (0, 1, 2, 3, 4, 5)
    flat = Declaration.parse([[0, 2], [1, 3]])  # the old form: every parameter
    assert flat.group_of("anything", 3) == (1, 3)
    partial = Declaration.parse([{"params": "emb*", "groups": [[0, 1]]}])
    assert partial.group_of("emb.table", 2) == (2,)  # not listed: its own copy
    assert partial.group_of("fc.weight", 0) is None  # no entry matches: decided elsewhere


def test_bad_declarations_name_the_entry():
    for value, message in [([{"params": "a*"}], "entry 1 (params: 'a*'): 'groups' must be a list"),
                           ([{"params": "", "groups": [[0]]}], "entry 1: 'params' must be a glob"),
                           ([[0, 1], [1]], "rank 1 is in more than one group"),
                           ("0,1", "must be a list")]:
        with pytest.raises(DeclarationError) as caught:
            Declaration.parse(value)
        assert message in str(caught.value)
    d = Declaration.parse(HYBRID)
    with pytest.raises(DeclarationError, match="rank\\(s\\) 4, 5 do not exist in a job of 4"):
        d.check_ranks(4)
    assert d.unmatched(["fc.weight"]) == ["replica_groups entry 1 (params: 'mid.*')"]


def test_resolve_prefers_the_declaration_then_the_layout_then_the_parallel_mode():
    names = ["mid.weight", "emb.table", "fc.weight"]
    d = Declaration.parse([{"params": "mid.*", "groups": [[0, 2], [1, 3]]}])
    groups, sources = resolve(names, 1, 4, d, layouts={"emb.table": (1,), "mid.weight": (0, 1, 2, 3)},
                              replicated=False)
    assert groups == [(1, 3), (1,), None]
    assert sources == [Source.DECLARED, Source.LAYOUT, Source.UNKNOWN]
    assert resolve(names, 1, 4)[0] == [(0, 1, 2, 3)] * 3
    assert leaders([(1, 3), (1,), None]) == [1, 1, -1]


# -- layouts ---------------------------------------------------------------------
def test_data_parallel_layout_replicates_on_every_rank():
    layout = ParamLayout(dev_matrix=(8,), tensor_map=(-1, -1))
    assert all(replica_group(r, layout) == tuple(range(8)) for r in range(8))


def test_model_parallel_layout_groups_ranks_holding_the_same_slice():
    # dev_matrix (dp=4, mp=2); the weight's dim 0 is split along axis 0 from the right (mp)
    layout = ParamLayout(dev_matrix=(4, 2), tensor_map=(0, -1))
    assert replica_group(0, layout) == (0, 2, 4, 6) and replica_group(5, layout) == (1, 3, 5, 7)
    # split along both axes: every rank holds its own slice
    assert replica_group(3, ParamLayout((4, 2), (1, 0))) == (3,)
    # a tensor dimension split along several axes at once (a nested tensor map)
    assert replica_group(6, ParamLayout((2, 2, 2), ((2, 1), -1))) == (6, 7)


def test_optimizer_sharding_splits_the_replicas_once_more():
    # (dp=4, mp=2), sharded along mp; the optimizer splits each slice over 2 ranks, 2 apart
    layout = ParamLayout((4, 2), (0, -1), opt_shard_step=2, opt_shard_size=2)
    assert replica_group(0, layout) == (0, 4) and replica_group(2, layout) == (2, 6)
    assert replica_group(7, layout) == (3, 7)
    # size -1: all the ranks holding the slice share it out; nobody has a replica
    assert replica_group(2, ParamLayout((4, 2), (0, -1), 2, -1)) == (2,)


def test_pipeline_stages_replicate_only_within_their_stage():
    layout = ParamLayout(dev_matrix=(4,), tensor_map=(-1,))  # a stage of 4 devices, data parallel
    assert replica_group(1, layout) == (0, 1, 2, 3) and replica_group(6, layout) == (4, 5, 6, 7)
    assert replica_group(13, ParamLayout((2, 2), (0,))) == (13, 15)  # stage 3 of 2x2
    # only the last stage computes the loss
    assert [on_last_stage(r, 8, 2) for r in (0, 3, 4, 7)] == [False, False, True, True]
    assert on_last_stage(0, 8, 1)


def test_layouts_in_mindspore_s_own_formats():
    # parameter_layout_dict: (dev_matrix, tensor_map, slice_shape, field, uniform_split, opt_group, full_shape)
    live = ([4, 2], [0, -1], [8, 16], 0, 1, "opt_group_0", [16, 16])
    assert from_layout_tuple(live, opt_group_ranks=[4, 0]) == ParamLayout((4, 2), (0, -1), 4, 2)
    assert from_layout_tuple(live[:5] + ("",) + live[6:]) == ParamLayout((4, 2), (0, -1))
    # strategy files: [dev_matrix, tensor_map, param_split_shape, field, opt step, opt size, stages]
    assert from_strategy_item([[8], [-1, -1], [], 0, 2, 4, [0]]) == ParamLayout((8,), (-1, -1), 2, 4)


# -- a synthetic hybrid job --------------------------------------------------------
PARAMS = [ParamInfo("fc.weight", (4, 4), "float32", True, True),
          ParamInfo("mid.weight", (2, 4), "float32", True, True),
          ParamInfo("head.weight", (2, 4), "float32", True, True)]


def _hybrid(path, bug="none", declare=True, fail_fast=False):
    """6 ranks, 2-way model parallel x 3-way data parallel: rank r holds shard r % 2 of
    mid.weight; a model-parallel pair reads one batch, the pairs read different ones."""
    worlds = FakeWorld.create(6)
    stopped = []
    options = ProbeOptions(flush_seconds=0.0, fail_fast=fail_fast,
                           replica_groups=json.dumps(HYBRID) if declare else "")

    def rank_main(world):
        r = world.rank
        shard_seed = 100 + r % 2 + (7 if bug == "seed" and r == 4 else 0)
        params = [np.full((4, 4), 0.5, np.float32), np.random.default_rng(shard_seed).normal(size=(2, 4)).astype(
            np.float32), np.full((2, 4), 0.25, np.float32)]
        try:
            rec = Recorder.open(path, world, PARAMS, {"parallel_mode": "stand_alone"}, options)
            rec.record(0, params)
            for step in range(1, 7):
                batch = np.random.default_rng(1000 * step + r // 2).normal(size=(8, 4)).astype(np.float32)
                grads = [np.full(p.shape, 0.001 * step, np.float32) for p in params]
                params = [p - g for p, g in zip(params, grads)]
                if bug == "nudge" and r == 3 and step == 4:
                    params[0] = params[0] + np.float32(1e-3)
                rec.record(step, params, grads, loss=1.0 / step, batch=[batch])
            rec.close()
        except ConsistencyError:
            stopped.append(r)

    play(worlds, rank_main)
    return sorted(stopped)


def _errors_and_warnings(path):
    from distcheck.rules import health_checks

    analysis = analyze([str(path)], load_config(), checks=[health_checks])
    return [(f.code, f.step, list(f.ranks), list(f.params)) for f in analysis.findings
            if f.severity.value != "info"], analysis


def test_a_healthy_hybrid_job_is_quiet(tmp_path):
    assert _hybrid(str(tmp_path), fail_fast=True) == []  # the online check compares shards within their groups
    findings, _ = _errors_and_warnings(tmp_path)
    assert findings == []  # no init_mismatch of shards, no data_not_sharded for model-parallel pairs


def test_a_seeded_replica_of_a_shard_is_named_alone(tmp_path):
    _hybrid(str(tmp_path), bug="seed")
    findings, _ = _errors_and_warnings(tmp_path)
    assert findings == [("init_mismatch", 0, [4], ["mid.weight"])]


def test_fail_fast_stops_every_rank_of_a_seeded_hybrid_job_at_step_0(tmp_path):
    assert _hybrid(str(tmp_path), bug="seed", fail_fast=True) == [0, 1, 2, 3, 4, 5]


def test_a_nudged_replicated_parameter_is_named_alone(tmp_path):
    _hybrid(str(tmp_path), bug="nudge")
    findings, _ = _errors_and_warnings(tmp_path)
    assert findings == [("param_divergence", 4, [3], ["fc.weight"])]


def test_undeclared_shards_are_explained(tmp_path):
    _hybrid(str(tmp_path), declare=False)
    findings, analysis = _errors_and_warnings(tmp_path)
    (mismatch,) = [f for f in analysis.findings if f.code == "init_mismatch"]
    assert "{0, 2, 4} and {1, 3, 5}" in mismatch.message and "declare" in mismatch.message
    # declared post-mortem instead, the same dumps are healthy
    config = load_config()
    config["replica_groups"] = HYBRID
    from distcheck.rules import health_checks

    again = analyze([str(tmp_path)], config, checks=[health_checks])
    assert [f.code for f in again.findings if f.severity.value != "info"] == []


def test_the_dump_records_each_parameters_group_and_its_source(tmp_path):
    from distcheck.store.reader import DumpReader

    _hybrid(str(tmp_path))
    with DumpReader(str(tmp_path / "rank_00003.h5")) as reader:
        assert reader.replica_groups() == [((0, 1, 2, 3, 4, 5), Source.DECLARED), ((1, 3, 5), Source.DECLARED),
                                           ((0, 1, 2, 3, 4, 5), Source.DECLARED)]


def test_parameters_without_a_replica_are_counted_in_a_note(tmp_path):
    _hybrid(str(tmp_path))
    config = load_config()
    config["replica_groups"] = [{"params": "mid.*", "groups": [[0], [1], [2], [3], [4], [5]]},
                                {"params": "*", "groups": [[0, 1, 2, 3, 4, 5]]}]
    analysis = analyze([str(tmp_path)], config)
    assert [n.message for n in analysis.notes if n.code == "replica_groups"] == [
        "1 parameter(s) are held by one rank each (a replica group of one), so they were health-checked but "
        "not compared across ranks: mid.weight"]


def test_a_healthy_sharded_check_never_gathers_per_parameter_digests(tmp_path, monkeypatch):
    shapes = []
    gather = FakeWorld.allgather

    def counting(self, array):
        shapes.append(np.shape(array))
        return gather(self, array)

    monkeypatch.setattr(FakeWorld, "allgather", counting)
    assert _hybrid(str(tmp_path), fail_fast=True) == []
    # header, then one rollup per replica group (65 x 3 words), never (parameters x 4)
    assert (len(PARAMS), 4) not in shapes and (65, 3) in shapes
    shapes.clear()
    assert _hybrid(str(tmp_path / "seeded"), bug="seed", fail_fast=True) == [0, 1, 2, 3, 4, 5]
    assert (len(PARAMS), 4) in shapes  # a group disagrees: the digests are voted on
