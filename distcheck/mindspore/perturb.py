"""``--perturb``: move the weights by one ulp, so that the run measures rounding noise.

Before step 0 is recorded (once per process, by the first probe that begins), and again
after every update: rounding differences between two correct runs (another reduction
order) are made at every step, not once, so a noise run perturbed once drifts from its
reference later than they do (on the example job, up to 40x less far at the same step).
See :mod:`distcheck.reference.ulp` for what moves and why. Only trainable floating
parameters move: buffers such as BatchNorm's moving statistics follow the weights.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor

from distcheck.reference.ulp import bfloat16_one_ulp_apart, one_ulp_apart

_done = False


def perturb_once(params: list[Parameter]) -> int:
    """Move every trainable floating parameter of ``params`` by one ulp, the first time
    this is called in the process; the number of parameters moved (0 on later calls)."""
    global _done
    if _done:
        return 0
    _done = True
    return perturb(params, 0)


def perturb(params: list[Parameter], step: int) -> int:
    """Move every trainable floating parameter of ``params`` by one ulp (signs drawn from
    the parameter's index and ``step``); the number of parameters moved."""
    moved = 0
    for index, param in enumerate(params):
        if not param.requires_grad:
            continue
        if param.dtype == ms.bfloat16:
            bits = param.float().asnumpy().view("uint32") >> 16
            new_bits = bfloat16_one_ulp_apart(bits.astype("uint16"), index, step=step)
            values = (new_bits.astype("uint32") << 16).view("float32")
            param.set_data(Tensor(values, dtype=ms.bfloat16))
        elif param.dtype in (ms.float16, ms.float32, ms.float64):
            param.set_data(Tensor(one_ulp_apart(param.asnumpy(), index, step=step)))
        else:
            continue
        moved += 1
    return moved
