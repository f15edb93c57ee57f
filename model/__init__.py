"""terraloom model: dual-scale any-to-any encoder-decoder trained from the token store.

The public surface: configs, the model, the loader, training, checkpoints and generation.
Submodules keep their own names (``terraloom.model.evaluate`` is the evaluation module;
the training loop is ``terraloom.model.train.train``, its validation pass
``terraloom.model.train.evaluate``): a function exported under a submodule's name would
replace that submodule as the package's attribute.
"""

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
from terraloom.model.data import MaskedBatches, TokenLoader
from terraloom.model.generate import GREEDY, Conditioning, SamplingConfig
from terraloom.model.masking import assemble, plan_masks, span_mask, split_budget
from terraloom.model.train import TrainResult
from terraloom.model.transformer import Encoded, Queries, TerraloomModel

__all__ = [
    "GREEDY",
    "MODEL_PRESETS",
    "AlphaMixture",
    "Conditioning",
    "DataConfig",
    "Encoded",
    "MaskedBatches",
    "MaskingConfig",
    "ModelConfig",
    "OptimConfig",
    "Queries",
    "SamplingConfig",
    "TerraloomModel",
    "TokenLoader",
    "TrainConfig",
    "TrainResult",
    "assemble",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "model_preset",
    "modality_specs",
    "plan_masks",
    "save_checkpoint",
    "save_config",
    "span_mask",
    "split_budget",
]
