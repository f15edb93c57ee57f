"""Shared fixtures of the tokenize_jobs tests: one small toy corpus per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from terraloom.tokenize_jobs.testing import make_toy_corpus

TOY_MODALITIES = ("S2L2A", "S1GRD", "DEM", "LULC", "NDVI", "GEO", "CAPTION")


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: 8 rows, val: 3 rows, the last row of each invalid; fixed seed."""
    root = tmp_path_factory.mktemp("toy_corpus")
    return make_toy_corpus(
        root,
        {"train": 8, "val": 3},
        seed=0,
        shard_samples=4,
        modalities=TOY_MODALITIES,
        n_invalid=1,
    )


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """These tests run tiny kernels; one intra-op thread avoids OpenMP oversubscription
    (orders of magnitude slower on a loaded 2-core machine, or under pytest-xdist)."""
    torch.set_num_threads(1)
