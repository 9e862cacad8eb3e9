import numpy as np

from distcheck.steps import rows_for, take


def test_rows_for_finds_each_recorded_step_and_marks_the_rest():
    rank_steps = np.array([0, 2, 4, 10])
    steps = np.array([0, 1, 2, 4, 9, 10, 11])
    assert rows_for(rank_steps, steps).tolist() == [0, -1, 1, 2, -1, 3, -1]


def test_rows_for_a_rank_that_recorded_nothing():
    assert rows_for(np.zeros(0, np.int64), np.array([0, 1])).tolist() == [-1, -1]
    assert rows_for(np.array([3]), np.zeros(0, np.int64)).tolist() == []


def test_take_fills_the_missing_rows():
    series = np.array([[1.0, 2.0], [3.0, 4.0]])
    out = take(series, np.array([1, -1, 0]), np.nan)
    assert out[0].tolist() == [3.0, 4.0] and np.isnan(out[1]).all() and out[2].tolist() == [1.0, 2.0]
    assert take(np.zeros((0, 2)), np.array([-1, -1]), 0.0).shape == (2, 2)
