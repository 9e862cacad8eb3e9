"""The Probe API in a hand-written GRAPH_MODE loop (value_and_grad + DistributedGradReducer)."""
import pytest

from e2e.jobs import launch, only

pytestmark = pytest.mark.slow


def test_missing_gradient_reduction_in_a_custom_loop(tmp_path):
    result = launch(str(tmp_path), "custom_loop.py", "--bug", "noreduce", n=2)
    f = only(result, "grad_divergence")
    assert (f["step"], f["ranks"]) == (1, [0, 1])  # two ranks: no majority, both named
    assert only(result, "param_divergence")["caused_by"] == "grad_divergence@1"


def test_clean_custom_loop_records_reduced_gradients(tmp_path):
    result = launch(str(tmp_path), "custom_loop.py", n=2)
    assert result.code == 0 and result.report["findings"] == []
    assert result.report["run"]["ranks"]["0"]["steps_recorded"] == 13
