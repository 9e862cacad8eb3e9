"""The device path's replica comparison (`distcheck.mindspore.equality`) on real ranks.

Run under msrun with 2 or more ranks. Every rank builds the same tensors from one seed;
rank 1 then changes some of them: one flipped bit (lowest mantissa, sign, exponent; float32,
float16, int32), a negative zero, NaN on one or both ranks, and 200 small tensors each
with one random bit flipped or left alone. Every rank runs `ReplicaEquality` in
GRAPH_MODE and saves the table it got with the raw bits of every tensor, so that a test can
check the answer against numpy tensor by tensor. With ``--time`` it also times the
comparison of about 10.5M float32 parameters against the host path (xxh3 digests and an
all-gather), as ``scripts/bench/equality.py`` does.

    msrun --worker_num=2 --local_worker_num=2 --join=True scripts/equality_job.py OUT_DIR [--time]

As in train_mlp.py, nothing is written before ``init()`` returns, because msrun also
runs this file in its scheduler process.
"""

import json
import os
import sys
import time

import numpy as np

import mindspore as ms
from mindspore import Tensor
from mindspore.communication import get_rank, init

from distcheck.digest import digest
from distcheck.mindspore.equality import ReplicaEquality, compare
from distcheck.mindspore.world import MindSporeWorld

FLIPS = 200


def flip(array: np.ndarray, index: int, bit: int) -> None:
    """Flip bit ``bit`` of element ``index`` of ``array``, in place."""
    words = array.reshape(-1).view(f"u{array.itemsize}")
    words[index] ^= words.dtype.type(1 << bit)


def cases(rank: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    f32 = lambda n: rng.standard_normal(n).astype(np.float32)  # noqa: E731
    out = {
        "same_f32": f32(1000),
        "lowest_bit_f32": f32(1000),
        "sign_bit_f32": f32(1000),
        "exponent_bit_f32": f32(1000),
        "zero_sign_f32": np.zeros(100, np.float32),
        "nan_on_one_rank": f32(100),
        "nan_on_both": f32(100),
        "same_f16": f32(300).astype(np.float16),
        "lowest_bit_f16": f32(300).astype(np.float16),
        "same_i32": rng.integers(-1000, 1000, 500).astype(np.int32),
        "lowest_bit_i32": rng.integers(-1000, 1000, 500).astype(np.int32),
    }
    out["nan_on_both"][3] = np.nan
    flips = [f32(64) for _ in range(FLIPS)]
    where = rng.integers(0, 64, FLIPS)
    bits = rng.integers(0, 32, FLIPS)
    if rank == 1:
        flip(out["lowest_bit_f32"], 500, 0)
        flip(out["sign_bit_f32"], 10, 31)
        flip(out["exponent_bit_f32"], 999, 23)
        out["zero_sign_f32"][50] = -0.0
        out["nan_on_one_rank"][7] = np.nan
        flip(out["lowest_bit_f16"], 299, 0)
        flip(out["lowest_bit_i32"], 0, 0)
        for i in range(1, FLIPS, 2):  # every other small tensor: one random bit
            flip(flips[i], int(where[i]), int(bits[i]))
    out.update({f"flip_{i:03d}": a for i, a in enumerate(flips)})
    return out


def timings(cell: ReplicaEquality, world: MindSporeWorld) -> dict[str, float]:
    """Median seconds to compare about 10.5M float32 parameters: device path, host path."""
    rng = np.random.default_rng(0)
    shapes = [(1600, 1600), (1600,)] * 4 + [(64, 1600), (64,)]
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    tensors = [Tensor(a) for a in arrays]
    compare(cell, tensors)  # compile

    def device():
        compare(cell, tensors)

    def host():
        world.allgather(np.array([digest(t.asnumpy()) for t in tensors], np.uint64))

    result = {}
    for name, run in (("device_path_s", device), ("host_path_s", host)):
        times = []
        for _ in range(7):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        result[name] = float(np.median(times))
    result["bytes"] = int(sum(a.nbytes for a in arrays))
    return result


def main() -> None:
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    init()
    out_dir = sys.argv[1]
    rank = get_rank()
    arrays = cases(rank)
    cell = ReplicaEquality()
    differs, nan = compare(cell, [Tensor(a) for a in arrays.values()])
    names = list(arrays)
    np.savez(os.path.join(out_dir, f"equality_{rank}.npz"), differs=differs, nan=nan, names=np.array(names),
             **{f"bits_{i}": a.reshape(-1).view(f"u{a.itemsize}") for i, a in enumerate(arrays.values())})
    if "--time" not in sys.argv:
        return
    timed = timings(cell, MindSporeWorld())
    with open(os.path.join(out_dir, f"timings_{rank}.json"), "w") as fh:
        json.dump(timed, fh)


if __name__ == "__main__":
    main()
