"""Shared fixtures: the ``tiny`` world is generated once (cached across sessions by generator
version, preset and seed) and every test reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from terraloom.pipeline.world import World, cached_world, load_world


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return cached_world("tiny", 0)


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> World:
    return load_world(tiny_dir)
