import numpy as np

from distcheck.vote import majority, outlier_mask


def test_majority_names_the_odd_one_out():
    assert majority(["a", "a", "b"]).outliers == (2,)
    assert majority(["a", "a", "a"]).agree


def test_without_a_majority_every_rank_is_a_suspect():
    assert majority(["a", "b"]).outliers == (0, 1)
    assert majority(["a", "a", "b", "b"]).outliers == (0, 1, 2, 3)
    assert not majority(["a", "b", "c"]).has_majority


def _oracle(column):
    return set(majority([tuple(x) for x in column]).outliers)


def test_vectorised_vote_matches_the_scalar_vote():
    rng = np.random.default_rng(1)
    for r in (2, 3, 4, 5, 8):
        digests = rng.integers(0, 3, size=(r, 50, 2)).astype(np.uint64)
        outliers, _ = outlier_mask(digests)
        for col in range(50):
            assert set(np.flatnonzero(outliers[:, col])) == _oracle(digests[:, col])


def test_absent_replicas_neither_vote_nor_are_blamed():
    digests = np.array([[1, 0], [1, 0], [2, 0]], np.uint64)[:, None, :]
    present = np.array([[True], [False], [True]])
    outliers, has_majority = outlier_mask(digests, present)
    assert outliers[:, 0].tolist() == [True, False, True]  # 1 vs 1 voter: no majority
    assert not has_majority[0]
    present = np.array([[True], [True], [False]])
    outliers, has_majority = outlier_mask(digests, present)
    assert not outliers.any() and has_majority[0]


def test_vectorised_vote_with_absent_replicas_and_many_columns_matches_the_scalar_vote():
    rng = np.random.default_rng(2)
    for r in (1, 2, 3, 7, 64):
        digests = rng.integers(0, 3, size=(r, 4, 30, 2)).astype(np.uint64)
        present = rng.random((r, 4, 30)) < 0.8
        outliers, has_majority = outlier_mask(digests, present)
        for t in range(4):
            for col in range(30):
                ranks = np.flatnonzero(present[:, t, col])
                vote = majority([tuple(digests[i, t, col]) for i in ranks])
                assert set(np.flatnonzero(outliers[:, t, col])) == {int(ranks[i]) for i in vote.outliers}
                assert has_majority[t, col] == (vote.has_majority or vote.agree)
