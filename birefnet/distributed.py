"""Several processes on one job (`torchrun ... -m birefnet segment`): each takes every N-th input.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the job is one process. The
inputs are listed and their output names chosen before sharding, so every input is processed
exactly once and lands where a single process would write it. Counts are summed over the
processes (gloo: CPU-only machines too) for one summary at the end.
"""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device(device: str) -> str:
    """'auto' under torchrun on a machine with GPUs: this process's own GPU (LOCAL_RANK)."""
    _, world = rank_and_world()
    if device == "auto" and world > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return device


def shard(items: list, rank: int, world: int) -> list:
    return items[rank::world]


def summed(counts: list[int]) -> list[int]:
    """`counts` added up over all processes (every process gets the totals)."""
    _, world = rank_and_world()
    if world == 1:
        return counts
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo")
    try:
        totals = torch.tensor(counts, dtype=torch.long)
        dist.all_reduce(totals)
        return totals.tolist()
    finally:
        if started:
            dist.destroy_process_group()
