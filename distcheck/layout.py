"""Replica groups derived from MindSpore's parallel layout of a parameter.

In semi/auto parallel, every parameter has a layout (``train_network.parameter_layout_dict``,
and the strategy checkpoint files):

- ``dev_matrix``: the devices of one pipeline stage arranged as a matrix; its product is
  the stage's device count. A rank's coordinates in it are its index within the stage in
  row-major order (the last axis varies fastest).
- ``tensor_map``: for each tensor dimension, the device-matrix axis it is split along,
  counted from the *right* (0 is the last axis), -1 for not split, or a list of axes.
- optimizer sharding (``opt_shard_step``, ``opt_shard_size``): the slice is split once
  more among ranks that would otherwise hold it whole; the ranks of one optimizer-shard
  group are ``step`` apart within the stage, and a rank holds piece
  ``(index // step) % size``. A size of -1 means all of those ranks.
- pipeline stages: stage ``s`` holds ranks ``s * D .. s * D + D - 1`` for a stage of ``D``
  devices; a parameter lives on one stage.

Two ranks replicate a parameter when they are on the same stage, hold the same slice
(equal coordinates on every axis the tensor map uses) and the same optimizer piece.
This follows MindSpore's documented formats and its own slicing code
(``mindspore.parallel._tensor``); it has not yet run on Ascend or GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

from distcheck.replicas import Group

Axis = Union[int, Sequence[int]]


@dataclass(frozen=True)
class ParamLayout:
    dev_matrix: tuple[int, ...]
    tensor_map: tuple[Axis, ...]
    opt_shard_step: int = 0
    opt_shard_size: int = 0

    @property
    def stage_devices(self) -> int:
        return math.prod(int(d) for d in self.dev_matrix)

    def split_axes(self) -> set[int]:
        """The device-matrix axes (as indices from the left) the tensor is split along."""
        axes: set[int] = set()
        for dim in self.tensor_map:
            for a in (dim if isinstance(dim, (list, tuple)) else (dim,)):
                if a != -1:
                    axes.add(len(self.dev_matrix) - 1 - int(a))
        return axes

    def slice_shards(self) -> int:
        return math.prod(int(self.dev_matrix[axis]) for axis in self.split_axes())


def coordinates(index: int, dev_matrix: Sequence[int]) -> list[int]:
    """A stage-local rank index as coordinates in the device matrix (last axis fastest)."""
    coords = [0] * len(dev_matrix)
    for axis in range(len(dev_matrix) - 1, -1, -1):
        index, coords[axis] = divmod(index, int(dev_matrix[axis]))
    return coords


def replica_group(rank: int, layout: ParamLayout) -> Group:
    """The global ranks holding the same bytes of the parameter as ``rank``."""
    devices = layout.stage_devices
    stage, local = divmod(rank, devices)
    axes = sorted(layout.split_axes())
    step, size = int(layout.opt_shard_step), int(layout.opt_shard_size)
    if size == -1:
        size = devices // layout.slice_shards()
    sharded = step > 0 and size > 1

    def key(index: int) -> tuple:
        coords = coordinates(index, layout.dev_matrix)
        piece = (index // step) % size if sharded else 0
        return tuple(coords[a] for a in axes), piece

    mine = key(local)
    return tuple(stage * devices + i for i in range(devices) if key(i) == mine)


def on_last_stage(rank: int, world_size: int, stages: int) -> bool:
    """Whether ``rank`` is on the last pipeline stage, the one that computes the loss
    (with ``stages`` stages of ``world_size / stages`` ranks each)."""
    if stages <= 1 or world_size % stages:
        return True
    return rank // (world_size // stages) == stages - 1


def from_layout_tuple(layout: Sequence, opt_group_ranks: Sequence[int] = ()) -> ParamLayout:
    """A :class:`ParamLayout` from an entry of ``parameter_layout_dict``: ``(dev_matrix,
    tensor_map, slice_shape, field_size, uniform_split, opt_shard_group, ...)``, with the
    ranks of its optimizer-shard group (``get_process_group_ranks``) if it has one."""
    dev_matrix = tuple(int(d) for d in layout[0])
    tensor_map = tuple(tuple(int(a) for a in d) if isinstance(d, (list, tuple)) else int(d) for d in layout[1])
    ranks = sorted(int(r) for r in opt_group_ranks)
    if len(ranks) > 1:
        return ParamLayout(dev_matrix, tensor_map, ranks[1] - ranks[0], len(ranks))
    return ParamLayout(dev_matrix, tensor_map)


def from_strategy_item(item: Sequence) -> ParamLayout:
    """A :class:`ParamLayout` from MindSpore's strategy-file list form
    ``[dev_matrix, tensor_map, param_split_shape, field_size, opt_shard_step,
    opt_shard_size, pipeline_stages]`` (``mindspore.parallel._parallel_serialization``)."""
    dev_matrix = tuple(int(d) for d in item[0])
    tensor_map = tuple(tuple(int(a) for a in d) if isinstance(d, (list, tuple)) else int(d) for d in item[1])
    step = int(item[4]) if len(item) > 4 else 0
    size = int(item[5]) if len(item) > 5 else 0
    return ParamLayout(dev_matrix, tensor_map, step, size)
