"""Fetch the part of a diverging tensor that differs, and say what kind of difference it is.

When the online check stops a job (``--fail-fast``), the culprit's copy of the first
diverging parameter is still in memory, and so is a majority rank's. Two all-gathers,
which every rank joins, tell a flipped bit from a software cause without moving the
whole tensor:

1. every rank sends a digest of each block of its copy (at most :data:`MAX_BLOCKS`
   blocks of about :data:`BLOCK_BYTES`), so every rank learns which blocks of the
   culprit differ from the reference rank's;
2. every rank sends the first differing block (only the two ranks' rows are used), and
   the two copies of that block are compared bit for bit
   (:func:`distcheck.difference.compare_tensors`).

Each rank moves at most ``16 * MAX_BLOCKS + BLOCK_BYTES``-ish bytes times the world size,
whatever the tensor's size. Every rank computes the same answer from the same gathered
data, so no rank waits for another.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from distcheck.difference import Difference, compare_tensors
from distcheck.digest import digest
from distcheck.world import World

#: Target bytes of one block, and the most blocks a tensor is cut into.
BLOCK_BYTES = 16 * 1024
MAX_BLOCKS = 1024


def blocks_of(nbytes: int, itemsize: int) -> tuple[int, int]:
    """(number of blocks, elements per block) for a tensor of ``nbytes``."""
    elements = max(1, nbytes // itemsize)
    count = max(1, min(MAX_BLOCKS, -(-nbytes // BLOCK_BYTES)))
    per_block = -(-elements // count)
    return -(-elements // per_block), per_block


def block_digests(flat: np.ndarray, per_block: int, count: int) -> np.ndarray:
    """(count, 2) uint64: the digest of each block of ``flat``'s elements."""
    out = np.zeros((count, 2), np.uint64)
    for b in range(count):
        out[b] = digest(flat[b * per_block:(b + 1) * per_block])
    return out


def storage_dtype(dtype: str) -> np.dtype:
    """How a parameter of ``dtype`` (numpy's name, or "bfloat16") is held in numpy."""
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def fetch_difference(world: World, tensor: Optional[np.ndarray], size: int, dtype: str, culprit: int,
                     reference: int) -> Optional[Difference]:
    """The kind of difference between ``culprit``'s and ``reference``'s copies of one
    tensor of ``size`` elements of ``dtype``. Every rank must call it with the same
    ``size``, ``dtype`` and ranks; ``tensor`` is this rank's copy, or None if it has none
    (it still takes part). None if either of the two had no copy, or they agree."""
    storage = storage_dtype(dtype)
    count, per_block = blocks_of(size * storage.itemsize, storage.itemsize)
    flat = None if tensor is None else np.ascontiguousarray(tensor).reshape(-1).view(storage)
    mine = np.zeros((count + 1, 2), np.uint64)
    if flat is not None and flat.size == size:
        mine[:count] = block_digests(flat, per_block, count)
        mine[count, 0] = 1  # this rank has a copy
    gathered = world.allgather(mine)
    differing = np.flatnonzero((gathered[culprit, :count] != gathered[reference, :count]).any(axis=1))
    usable = bool(gathered[culprit, count, 0] == 1 and gathered[reference, count, 0] == 1 and len(differing))
    first = int(differing[0]) if usable else 0
    length = min(per_block, size - first * per_block)
    block = np.zeros(per_block, storage)
    if mine[count, 0] == 1:
        block[:length] = flat[first * per_block:first * per_block + length]
    rows = world.allgather(block)  # every rank joins, whatever it found
    if not usable:
        return None
    found = compare_tensors(rows[culprit][:length], rows[reference][:length], dtype)
    return None if found is None else _whole(found, len(differing), size)


def _whole(found: Difference, blocks_differing: int, size: int) -> Difference:
    """The block's difference, stated for the whole tensor."""
    if blocks_differing == 1:
        return Difference(found.kind, True, found.differing, size, found.max_abs, found.bit, found.field,
                          found.factor)
    kind = found.kind if found.kind in ("scaled", "offset", "every_element") else "few_elements"
    return Difference(kind, True, None, size, found.max_abs, factor=found.factor)
