"""The device path's replica comparison, on two real msrun ranks, against numpy bit for bit
(scripts/equality_job.py): every tensor, including 200 random single-bit flips."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from e2e.jobs import SCRIPTS

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("equality")
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
    argv = [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={_port()}",
            f"--log_dir={out / 'logs'}", "--join=True", "--cluster_time_out=120",
            os.path.join(SCRIPTS, "equality_job.py"), str(out)]
    env = {**os.environ, "MS_RETRY_INTERVAL_LOWER": "1", "MS_RETRY_INTERVAL_UPPER": "2",
           "PATH": os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=out, env=env)
    logs = "".join(open(os.path.join(out, "logs", f)).read()[-2000:] for f in sorted(os.listdir(out / "logs")))
    assert done.returncode == 0, logs
    return [np.load(out / f"equality_{r}.npz") for r in (0, 1)]


def test_the_device_comparison_agrees_with_numpy_on_every_tensor(ranks):
    names = list(ranks[0]["names"])
    differs, nan = ranks[0]["differs"], ranks[0]["nan"]
    assert differs.shape == nan.shape == (2, len(names))
    assert all(np.array_equal(d["differs"], differs) and np.array_equal(d["nan"], nan) for d in ranks)
    for i, name in enumerate(names):
        bits = [d[f"bits_{i}"] for d in ranks]
        values = [b.view(np.int32 if name.endswith("i32") else f"f{b.itemsize}") for b in bits]
        for r in (0, 1):
            has_nan = values[r].dtype.kind == "f" and bool(np.isnan(values[r]).any())
            assert nan[r, i] == has_nan, (name, r)
            both_nan = np.isnan(values[r]) & np.isnan(values[0]) if values[r].dtype.kind == "f" else False
            # numpy's answer, bit for bit: any element whose bits differ from the leader's
            # (rank 0), where both are not NaN.
            other_bits = (bits[r] != bits[0]) & ~both_nan
            if name == "zero_sign_f32" and r == 1:  # the one difference of bits it cannot see, as documented
                assert other_bits.any() and not differs[r, i]
                continue
            assert differs[r, i] == other_bits.any(), (name, r)
    assert not differs[0].any()  # the leader never differs from itself
    flipped = [n for i, n in enumerate(names) if n.startswith("flip_") and differs[1, i]]
    assert len(flipped) >= 90  # about half of the 200 small tensors had one bit flipped
    for name in ("lowest_bit_f32", "sign_bit_f32", "exponent_bit_f32", "lowest_bit_f16", "lowest_bit_i32"):
        assert differs[1, names.index(name)], name
    from distcheck.mindspore.equality import same

    agree = same(differs, nan)
    assert agree[names.index("same_f32")] and not agree[names.index("nan_on_both")]
    assert not agree[names.index("lowest_bit_f32")]
