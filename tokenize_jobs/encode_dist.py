"""What the ranks of an encode job (``torchrun``) agree on, and the device each one encodes
on (the ranks themselves: :mod:`terraloom.tokenize_jobs.distributed`)."""

from __future__ import annotations

from typing import Any

import torch

from terraloom.tokenize_jobs.distributed import DistInfo
from terraloom.tokenize_jobs.encode_config import EncodeConfig, EncodeError, TokenizerMismatchError


def agree(d: DistInfo, error: EncodeError | None) -> EncodeError | None:
    """Share rank 0's error (or None) with every rank, so all fail or go on together."""
    if d.world <= 1:
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


def job_device(cfg: EncodeConfig, dist_: DistInfo) -> torch.device:
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
