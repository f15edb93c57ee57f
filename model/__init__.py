"""terraloom model: dual-scale any-to-any encoder-decoder trained from the token store."""

from __future__ import annotations

from terraloom.model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from terraloom.model.config import (
    MODEL_PRESETS,
    AlphaMixture,
    DataConfig,
    MaskingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    load_config,
    modality_specs,
    model_preset,
    save_config,
)
from terraloom.model.data import MaskedBatches, TokenLoader, ZarrTokenReader, open_token_store
from terraloom.model.masking import assemble, plan_masks, span_mask, split_budget
from terraloom.model.train import TrainResult, evaluate, train
from terraloom.model.transformer import Encoded, Queries, TerraloomModel

__all__ = [
    "MODEL_PRESETS",
    "AlphaMixture",
    "DataConfig",
    "Encoded",
    "MaskedBatches",
    "MaskingConfig",
    "ModelConfig",
    "OptimConfig",
    "Queries",
    "TerraloomModel",
    "TokenLoader",
    "TrainConfig",
    "TrainResult",
    "ZarrTokenReader",
    "assemble",
    "evaluate",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "model_preset",
    "modality_specs",
    "open_token_store",
    "plan_masks",
    "save_checkpoint",
    "save_config",
    "span_mask",
    "split_budget",
    "train",
]
