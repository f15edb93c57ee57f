"""The ranks of an encode job (``torchrun``) and the device each one encodes on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from terraloom.tokenize_jobs.encode_config import EncodeConfig, EncodeError, TokenizerMismatchError


@dataclass
class Dist:
    """Rank/world of a ``torchrun`` job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
            owns = True
        return cls(rank, world, local, owns)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def agree(self, error: EncodeError | None) -> EncodeError | None:
        """Share rank 0's error (or None) with every rank, so all fail or go on together."""
        if self.world <= 1:
            return error
        import torch.distributed as dist

        box: list[Any] = [
            None if error is None else (isinstance(error, TokenizerMismatchError), str(error))
        ]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return None
        mismatch, message = box[0]
        return TokenizerMismatchError(message) if mismatch else EncodeError(message)

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def job_device(cfg: EncodeConfig, dist_: Dist) -> torch.device:
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EncodeError(
                "--device cuda requested but CUDA is not available (use --device cpu)"
            )
        if dev.index is None:
            dev = torch.device("cuda", dist_.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev
