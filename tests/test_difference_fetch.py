import numpy as np
import pytest

from distcheck.recording.difference_fetch import BLOCK_BYTES, MAX_BLOCKS, blocks_of, fetch_difference
from distcheck.world import FakeWorld
from synthetic import play


def _fetch(copies, dtype, culprit=2, reference=0):
    """Every rank of a fake world calls fetch_difference with its own copy."""
    worlds = FakeWorld.create(len(copies))
    found, sent = {}, {}
    size = next(c.size for c in copies if c is not None)

    def main(world):
        original = world.allgather

        def counting(array):
            sent.setdefault(world.rank, []).append(np.asarray(array).nbytes)
            return original(array)

        world.allgather = counting
        found[world.rank] = fetch_difference(world, copies[world.rank], size, dtype, culprit, reference)

    play(worlds, main)
    assert all(found[r] == found[0] for r in found)  # every rank reaches the same verdict
    return found[0], sent


def _weights(n, dtype=np.float32):
    return np.random.default_rng(0).normal(0, 0.05, n).astype(dtype)


@pytest.mark.parametrize("dtype,unsigned,bit", [("float32", np.uint32, 30), ("float32", np.uint32, 0),
                                                ("float16", np.uint16, 14), ("bfloat16", np.uint16, 0)])
def test_a_flipped_bit_in_a_large_tensor_is_found_exactly(dtype, unsigned, bit):
    if dtype == "bfloat16":
        clean = (_weights(300_001).view(np.uint32) >> 16).astype(np.uint16)
    else:
        clean = _weights(300_001, np.dtype(dtype))
    flipped = clean.copy()
    flipped.view(unsigned)[123_457] ^= unsigned(1 << bit)
    kind, sent = _fetch([clean, clean.copy(), flipped], dtype)
    assert (kind.kind, kind.bit, kind.differing, kind.size, kind.exact) == ("bit_flip", bit, 1, clean.size, True)
    # What moved is two small gathers, not the tensor.
    assert max(sum(v) for v in sent.values()) <= 16 * (MAX_BLOCKS + 1) + 2 * BLOCK_BYTES
    assert clean.nbytes > 4 * max(sum(v) for v in sent.values())


def test_every_element_scaled_is_software_and_agreeing_copies_give_none():
    clean = _weights(50_000)
    kind, _ = _fetch([clean, clean.copy(), clean * np.float32(0.5)], "float32")
    assert kind.kind == "scaled" and kind.factor == pytest.approx(0.5) and not kind.hardware_suspect
    assert _fetch([clean, clean.copy(), clean.copy()], "float32")[0] is None


def test_a_rank_without_its_copy_takes_part_and_nobody_waits():
    clean = _weights(1000)
    flipped = clean.copy()
    flipped.view(np.uint32)[5] ^= np.uint32(1)
    kind, _ = _fetch([clean, None, flipped], "float32")
    assert kind.kind == "bit_flip"
    assert _fetch([None, clean, flipped], "float32")[0] is None  # the reference had none


def test_blocks_cover_every_element():
    for n, itemsize in ((1, 4), (7, 2), (4096, 4), (10_000_019, 4)):
        count, per_block = blocks_of(n * itemsize, itemsize)
        assert count <= MAX_BLOCKS and count * per_block >= n > (count - 1) * per_block
