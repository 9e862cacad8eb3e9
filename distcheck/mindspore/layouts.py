"""Replica groups from the layouts MindSpore compiles in semi/auto parallel.

After a sharded network is compiled, ``cell.parameter_layout_dict`` maps each
parameter's name to its layout tuple ``(dev_matrix, tensor_map, slice_shape,
field_size, uniform_split, opt_shard_group, full_shape, ...)``. The optimizer-shard
group is a communication group's name; its ranks come from
``get_process_group_ranks``. ``distcheck.layout`` turns each layout into the ranks that
hold the same bytes.

Semi/auto parallel does not run on CPU, so this path has not yet run on Ascend or GPU;
its derivation is unit-tested on layouts in MindSpore's documented formats.
"""
from __future__ import annotations

from collections.abc import Iterable

from mindspore import nn

from distcheck.layout import from_layout_tuple, replica_group
from distcheck.replicas import Group

SHARDED_MODES = ("semi_auto_parallel", "auto_parallel")


def layout_groups(cells: Iterable[nn.Cell | None], rank: int) -> dict[str, Group]:
    """Parameter name -> replica group, from every compiled layout the cells hold
    (empty before compilation, and outside semi/auto parallel)."""
    groups: dict[str, Group] = {}
    for cell in cells:
        layouts = getattr(cell, "_parameter_layout_dict", None) if cell is not None else None
        for name, layout in (layouts or {}).items():
            if name in groups or not isinstance(layout, (tuple, list)) or len(layout) < 6:
                continue
            groups[name] = replica_group(rank, from_layout_tuple(layout, _group_ranks(layout[5])))
    return groups


def _group_ranks(group: str) -> list[int]:
    if not group:
        return []
    from mindspore.communication import get_process_group_ranks

    return list(get_process_group_ranks(group))
