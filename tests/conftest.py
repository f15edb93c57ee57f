"""Suite-wide settings.

Hypothesis draws its examples from a fixed seed (``derandomize``) so that every run of the
suite, CI included, checks the same cases: a failure is reproducible, never a coin toss.
Set ``HYPOTHESIS_PROFILE=explore`` to search with fresh random examples locally.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# A real S3-compatible server on loopback (moto) and memory:// roots, for any test folder:
# fixtures ``s3_server``, ``s3_bucket``, ``memory_root``.
pytest_plugins = ["tests.storage.s3server"]

settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped, with the reason, on machines without it (CI)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run bench/gpu.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
