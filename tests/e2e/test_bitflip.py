"""What kind of difference a divergence is, on real 3-rank msrun jobs: a flipped bit
(hardware) told from a software cause, exactly from kept or fetched tensors, inferred
from the statistics otherwise."""
import pytest

from distcheck.store.reader import DumpReader
from e2e.jobs import launch, only

pytestmark = pytest.mark.slow


def _difference(result):
    f = only(result, "param_divergence")
    assert (f["step"], f["ranks"], f["params"]) == (5, [2], ["fc2.weight"]), f
    (kind,) = [d for d in f["detail"]["difference"] if d["param"] == "fc2.weight"]
    return f, kind


def test_fail_fast_fetches_the_flipped_bit_from_the_culprit_and_a_majority_rank(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "bitflip", "--bug-step", "5", "--steps", "8",
                    options=("--fail-fast", "--online-every", "1"))
    f, kind = _difference(result)
    assert (kind["kind"], kind["exact"], kind["bit"], kind["field"], kind["differing"]) == \
        ("bit_flip", True, 30, "exponent", 1)
    assert "silent data corruption" in f["message"] and "node" in f["message"]
    ended = result.report["run"]["ranks"]["2"]
    assert ended["last_step"] == 5, ended
    with DumpReader(ended["file"]) as reader:  # the online check said it too, before stopping
        assert "single flipped bit" in reader.status_message
        assert reader.online_difference()["reference_rank"] == 0


def test_kept_tensors_classify_the_lowest_mantissa_bit_exactly(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "bitflip", "--flip-bit", "0",
                    options=("--full-steps", "5"))
    _, kind = _difference(result)
    assert (kind["kind"], kind["exact"], kind["bit"], kind["field"]) == ("bit_flip", True, 0, "mantissa")


def test_without_tensors_the_kind_is_inferred_and_says_so(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "bitflip", "--steps", "6")
    f, kind = _difference(result)
    assert (kind["kind"], kind["exact"]) == ("few_elements", False)
    assert "Inferred from the statistics" in f["message"]


def test_a_write_to_every_element_is_a_software_cause_not_a_bit_flip(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "nudge", "--bug-step", "5",
                    options=("--full-steps", "5"))
    f = only(result, "param_divergence")
    (kind,) = f["detail"]["difference"]
    assert kind["kind"] in ("offset", "every_element") and kind["exact"], kind
    assert "software cause" in f["message"] and "silent data corruption" not in f["message"]
