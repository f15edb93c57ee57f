"""The ranks of a ``torchrun`` job, spelt once for every job that has ranks: tokenizer
training, the encode job, the model's training and its embedding job.

It lives in ``tokenize_jobs``, the lowest stage that runs jobs on ranks: the model may import
it (stage order), the pipeline never needs ranks (its engines are Beam and Dask), and
``schemas`` and ``storage`` hold no process groups.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DistInfo", "init_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Rank and world of a ``torchrun`` job (a single process is rank 0 of 1).

    ``owns_group``: this process created the process group, so it is the one to destroy it
    (a caller that joined a group someone else made leaves it alone).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank; nothing to wait for in a single process."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this process created it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def init_distributed(nccl: bool) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    ``nccl``: the ranks compute on CUDA, so the group uses NCCL (else gloo). A group that is
    already initialised (a caller's, or a test's) is joined, not created again.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if nccl else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, owns)
