"""Running under torchrun: which process this is, and the few collective steps gradsift needs.

``torchrun --nproc-per-node N -m gradsift build ...`` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set; `World.current()` joins them into one process group (gloo on CPUs, NCCL on GPUs).
Started any other way, the world is this one process and every collective is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gradsift.utils.locks import FolderLockedError, folder_locks


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes what is written once (layouts, manifests, merged progress)."""
        return self.rank == 0

    @classmethod
    def current(cls, device: torch.device | None = None) -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = device is not None and device.type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: cuda means this process's local GPU."""
        if device.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def share(self, value):
        """The main process's ``value``, on every process (any picklable object)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the processes, in place (gradients: data parallelism)."""
        if self.size > 1:
            import torch.distributed as dist

            for tensor in tensors:
                dist.all_reduce(tensor)

    def gather(self, value) -> list:
        """Every process's ``value``, in rank order, on every process."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out


@contextmanager
def world_locks(world: World, folders: list[Path]) -> Iterator[None]:
    """The folders' write locks for a job of one or many processes: the main process holds them for
    the whole job, and if it is refused every process stops with its message."""
    with ExitStack() as stack:
        refused = None
        if world.main:
            try:
                stack.enter_context(folder_locks(folders))
            except FolderLockedError as e:
                refused = str(e)
        refused = world.share(refused)
        if refused:
            raise FolderLockedError(refused)
        yield


def shard_bounds(tokens: Sequence[int], chunk_size: int, parts: int) -> list[tuple[int, int]]:
    """Split rows 0..len(tokens) into ``parts`` contiguous [start, end) shards of about equal total
    tokens (the cost of a row's gradient grows with its length), cut only at multiples of
    ``chunk_size``: every process then computes exactly the chunks a single process would, so a
    sharded build writes the same bytes."""
    rows = len(tokens)
    cuts = list(range(0, rows, chunk_size)) + [rows]
    tokens = np.asarray(tokens, dtype=np.int64)  # a 10M-row pool's total overflows int32
    chunk_tokens = np.add.reduceat(tokens, cuts[:-1]).tolist() if rows else []
    total = sum(chunk_tokens)
    bounds, start, seen, k = [], 0, 0, 0
    for part in range(1, parts):
        goal = total * part / parts
        while k < len(chunk_tokens) and seen + chunk_tokens[k] / 2 <= goal:  # a chunk goes where most of it falls
            seen += chunk_tokens[k]
            k += 1
        bounds.append((start, cuts[k]))
        start = cuts[k]
    bounds.append((start, rows))
    return bounds
