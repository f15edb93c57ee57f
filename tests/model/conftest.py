"""Shared fixtures: a small learnable toy world and a reduced tiny model config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from terraloom.model.config import DataConfig, MaskingConfig, ModelConfig, OptimConfig, TrainConfig
from terraloom.model.testing import ToyWorld, make_toy_world

#: Reduced tiny config for fast CPU tests: few modalities (small tables/heads), shallow.
SMALL_MODEL = ModelConfig(
    dim=64,
    enc_depth=2,
    dec_depth=1,
    heads=2,
    pixel_inputs=("S2L2A", "S1GRD"),
    token_inputs=("S1GRD", "LULC", "GEO", "CAPTION"),
    targets=("S1GRD", "LULC", "GEO", "CAPTION"),
)
SMALL_MASKING = MaskingConfig(input_budget=48, target_budget=48)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory: pytest.TempPathFactory) -> ToyWorld:
    return make_toy_world(
        tmp_path_factory.mktemp("toy"),
        n_samples=32,
        n_crops=2,
        pixel_modalities=("S2L2A", "S1GRD"),
        shard_samples=16,
        seed=0,
    )


@pytest.fixture(scope="session")
def small_model() -> ModelConfig:
    return SMALL_MODEL


@pytest.fixture(scope="session")
def small_masking() -> MaskingConfig:
    return SMALL_MASKING


@pytest.fixture(scope="session")
def small_batch(toy_world: ToyWorld) -> dict[str, torch.Tensor]:
    """Batch (0, 0) of the toy world's train split under the small model and masking (4
    samples, seed 7): read-only in the tests that share it."""
    from terraloom.model.data import MaskedBatches

    return MaskedBatches(
        toy_world.tokens / "train.zarr",
        toy_world.corpus / "train.zarr",
        SMALL_MODEL,
        SMALL_MASKING,
        global_batch=4,
        seed=7,
    )[(0, 0)]


@pytest.fixture
def train_config(toy_world: ToyWorld):  # noqa: ANN201 - factory fixture
    """``train_config(out_dir, **overrides)`` -> a small CPU TrainConfig on the toy world."""

    def make(out_dir: Path, **overrides: object) -> TrainConfig:
        return small_train_config(toy_world, out_dir, **overrides)

    return make


def small_train_config(world: ToyWorld, out_dir: Path, **overrides: object) -> TrainConfig:
    base = dict(
        model=SMALL_MODEL,
        masking=SMALL_MASKING,
        data=DataConfig(tokens=str(world.tokens), corpus=str(world.corpus), num_workers=0),
        optim=OptimConfig(lr=2e-3, warmup_steps=2, weight_decay=0.01),
        out_dir=str(out_dir),
        steps=6,
        batch_size=8,
        log_every=1,
        eval_every=0,
        ckpt_every=0,
        peak_tflops=1.0,
        seed=0,
    )
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]
