"""tokenize_jobs/distributed.py: the ranks of a torchrun job (the two-rank runs themselves are
the encode job's torchrun test)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from terraloom.tokenize_jobs.distributed import DistInfo, init_distributed


def test_a_single_process_is_rank_0_of_1_and_joins_no_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed(nccl=True)  # no group is created, so no NCCL is needed
    assert info == DistInfo(rank=0, world=1, local_rank=0, owns_group=False)
    assert info.is_main and not dist.is_initialized()
    info.barrier()  # nothing to wait for
    info.close()  # nothing to destroy


def test_a_group_made_by_the_caller_is_joined_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun with a group someone else initialised (a test, an embedding caller):
    the ranks come from the group and ``close`` does not destroy what it did not create."""
    dist.init_process_group(
        "gloo", init_method=(tmp_path / "rendezvous").as_uri(), rank=0, world_size=1
    )
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's word; the group says otherwise
        monkeypatch.setenv("LOCAL_RANK", "0")
        info = init_distributed(nccl=False)
        assert info == DistInfo(rank=0, world=1, local_rank=0, owns_group=False)
        info.barrier()
        info.close()
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
