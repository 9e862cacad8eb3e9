"""What kind of difference a diverging tensor shows: a flipped bit, or a software cause.

Silent data corruption in hardware (a bit flipped in memory, a faulty core) changes a
few bits of a few elements; a software bug (another learning rate, a missing
reduction, a stale checkpoint) moves every element, or a systematic share of them. So
the kind of the difference points at the cause:

- ``bit_flip``: one element differs, and the XOR of its two bit patterns has one bit
  set. The node is suspect.
- ``one_element``: one element differs in several bits (a flip the next updates have
  carried on, or one stray write).
- ``few_elements``: at most :data:`FEW` of the elements differ.
- ``scaled``: every differing element is the other side's times one factor.
- ``offset``: every differing element is the other side's plus one constant.
- ``every_element``: most elements moved, with no common factor or offset.

From whole tensors (kept with ``--full-steps``, or fetched by the online check) the
kind is exact. From the statistics alone (min, max, mean, L2) it is inferred, and says
so: an extreme element that changed alone moves min or max and the L2 norm, while the
mean of a large tensor barely moves; a change of every element moves them all.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

#: At most this share of the elements differing (and at most 16 of them) is "a few".
FEW = 0.01
_FEW_MAX = 16
_UNSIGNED = {2: np.uint16, 4: np.uint32, 8: np.uint64}
#: Bit layout per storage dtype: (exponent bits, mantissa bits).
_LAYOUT = {"float16": (5, 10), "bfloat16": (8, 7), "float32": (8, 23), "float64": (11, 52)}
HARDWARE = ("bit_flip", "one_element")


@dataclass(frozen=True)
class Difference:
    """How two copies of one tensor differ. ``exact`` is False when inferred from statistics."""

    kind: str
    exact: bool
    differing: Optional[int] = None  # elements that differ (exact only)
    size: Optional[int] = None
    max_abs: Optional[float] = None
    bit: Optional[int] = None  # bit_flip: which bit, 0 = lowest
    field: Optional[str] = None  # bit_flip: "sign", "exponent" or "mantissa"
    factor: Optional[float] = None  # scaled
    moved: tuple[str, ...] = ()  # inferred: which statistics moved

    @property
    def hardware_suspect(self) -> bool:
        return self.kind in HARDWARE

    def describe(self) -> str:
        """One sentence for a finding's message."""
        if not self.exact:
            moved = ", ".join(self.moved) if self.moved else "none of min, max, mean, L2"
            guess = {"few_elements": "a few elements changed (a NaN, an Inf or an extreme one at least)",
                     "every_element": "many elements changed"}.get(
                         self.kind, "the change is below the statistics' resolution (a rounding-level change, "
                                    "such as a flipped low mantissa bit; --full-steps or --fail-fast tell exactly)")
            return f"Inferred from the statistics (no whole tensors kept): {moved} moved, so {guess}."
        if self.kind == "bit_flip":
            return (f"A single flipped bit: 1 of {self.size} elements differs, in bit {self.bit} "
                    f"({self.field}).")
        if self.kind == "one_element":
            return f"One element of {self.size} differs (by {self.max_abs:.3g}), in several bits."
        counted = f"{self.differing} of {self.size}" if self.differing is not None else f"of {self.size}"
        if self.kind == "scaled":
            return f"Every differing element ({counted}) is scaled by {self.factor:.6g}."
        if self.kind == "offset":
            return f"Every differing element ({counted}) is offset by one constant."
        if self.differing is None:
            return f"Elements in several places of the {self.size} differ, by up to {self.max_abs:.3g}."
        return f"{self.differing} of {self.size} elements differ, by up to {self.max_abs:.3g}."

    def advice(self) -> str:
        if self.hardware_suspect:
            return ("That is the mark of silent data corruption in hardware, not of a software bug: the node of "
                    "that rank is suspect. Rerun (on other nodes if you can); on Ascend, MindSpore's silent "
                    "data corruption detection (MS_NPU_ASD_CONFIG) checks the devices.")
        if self.kind in ("scaled", "offset", "every_element"):
            return "A difference in every element points at a software cause, not at the hardware."
        return ""

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, ())}

    @classmethod
    def from_json(cls, record: dict) -> Optional["Difference"]:
        """The difference :meth:`to_json` wrote (other keys ignored), or None if it is not one."""
        try:
            fields = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
            fields["moved"] = tuple(fields.get("moved", ()))
            return cls(**fields)
        except (TypeError, KeyError):
            return None


def bits_of(array: np.ndarray, dtype: Optional[str] = None) -> np.ndarray:
    """The raw bit patterns of a float array as unsigned integers (bfloat16 arrives as uint16)."""
    array = np.ascontiguousarray(array)
    if array.dtype.kind == "u":
        return array.reshape(-1)
    return array.reshape(-1).view(_UNSIGNED[array.dtype.itemsize])


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per element of an unsigned array."""
    as_bytes = words.astype(np.uint64).view(np.uint8).reshape(len(words), 8)
    return np.unpackbits(as_bytes, axis=1).sum(axis=1)


def compare_tensors(mine: np.ndarray, theirs: np.ndarray, dtype: Optional[str] = None) -> Optional[Difference]:
    """The exact kind of difference between two copies of a tensor (None if equal or
    not comparable). ``dtype`` "bfloat16" marks uint16 arrays as bfloat16 bits."""
    if mine.shape != theirs.shape or mine.dtype != theirs.dtype or mine.size == 0:
        return None
    xor = bits_of(mine) ^ bits_of(theirs)
    where = np.flatnonzero(xor)
    if not len(where):
        return None
    size = int(mine.size)
    name = dtype or mine.dtype.name
    with np.errstate(invalid="ignore", over="ignore"):
        a = _floats(mine, name).reshape(-1)[where].astype(np.float64)
        b = _floats(theirs, name).reshape(-1)[where].astype(np.float64)
        gaps = np.abs(a - b)
    max_abs = float("nan") if np.isnan(gaps).all() else float(np.nanmax(gaps))
    if len(where) == 1:
        bits = int(popcount(xor[where])[0])
        if bits == 1:
            bit = int(xor[where[0]]).bit_length() - 1
            return Difference("bit_flip", True, 1, size, max_abs, bit, _field(name, bit))
        return Difference("one_element", True, 1, size, max_abs)
    if len(where) <= max(1, min(_FEW_MAX, int(FEW * size))):
        return Difference("few_elements", True, len(where), size, max_abs)
    systematic = _systematic(a, b)
    if systematic is not None:
        kind, factor = systematic
        return Difference(kind, True, len(where), size, max_abs, factor=factor)
    return Difference("every_element", True, len(where), size, max_abs)


def infer_from_stats(mine: np.ndarray, theirs: np.ndarray, size: int, rtol: float = 1e-6) -> Difference:
    """The likely kind from two statistics rows (columns of ``distcheck.digest.STAT_NAMES``:
    min, max, mean, l2, ...). A few changed elements move an extreme or the L2 norm while
    the mean stays within what one element can move it; many changed elements move the
    mean past that too."""
    names = ("min", "max", "mean", "l2")
    moved = []
    for k, name in enumerate(names):
        x, y = float(mine[k]), float(theirs[k])
        if not (x == y or (np.isnan(x) and np.isnan(y)) or abs(x - y) <= rtol * max(abs(x), abs(y))):
            moved.append(name)
    if len(mine) > 5 and len(theirs) > 5:  # NaN and Inf counts: a changed count is a count of elements
        changed = sum(abs(float(mine[k]) - float(theirs[k])) for k in (4, 5) if np.isfinite(mine[k] - theirs[k]))
        if changed:
            counts = tuple(n for k, n in ((4, "NaN count"), (5, "Inf count")) if mine[k] != theirs[k])
            kind = "few_elements" if changed <= max(1, min(_FEW_MAX, FEW * size)) else "every_element"
            return Difference(kind, False, size=size, moved=counts + tuple(moved))
    if not moved:
        return Difference("unknown", False, size=size, moved=())
    if {"min", "max"} <= set(moved) and size > 2:  # one changed element moves one extreme at most
        return Difference("every_element", False, size=size, moved=tuple(moved))
    spread = max(abs(float(mine[1]) - float(theirs[0])), abs(float(theirs[1]) - float(mine[0])))
    mean_shift = abs(float(mine[2]) - float(theirs[2]))
    # One element changing by at most the spread of values moves the mean by spread / size.
    few = size > 1 and np.isfinite(spread) and mean_shift * size <= 2 * spread
    if "mean" not in moved or few:
        return Difference("few_elements", False, size=size, moved=tuple(moved))
    return Difference("every_element", False, size=size, moved=tuple(moved))


def _floats(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _field(dtype: str, bit: int) -> str:
    exponent, mantissa = _LAYOUT.get(dtype, (0, 0))
    if not mantissa:
        return "unknown"
    if bit < mantissa:
        return "mantissa"
    if bit < mantissa + exponent:
        return "exponent"
    return "sign"


def _systematic(a: np.ndarray, b: np.ndarray) -> Optional[tuple[str, Optional[float]]]:
    """("scaled", factor) or ("offset", None) if the differing elements share one."""
    finite = np.isfinite(a) & np.isfinite(b)
    if finite.sum() < 2:
        return None
    a, b = a[finite], b[finite]
    nonzero = b != 0
    if nonzero.sum() >= 2:
        ratios = a[nonzero] / b[nonzero]
        if np.allclose(ratios, ratios[0], rtol=1e-4, atol=0):
            return "scaled", float(ratios[0])
    shifts = a - b
    if np.allclose(shifts, shifts[0], rtol=1e-4, atol=1e-7 * float(np.abs(b).max() or 1.0)):
        return "offset", None
    return None
