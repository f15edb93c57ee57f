"""Reading and writing the weight files interop hands between terraloom and terratorch.

A terraloom weights directory holds ``model.safetensors`` + ``config.json`` (what
``TerraloomModel.save_pretrained`` and every training checkpoint write); a run directory
points at its newest checkpoint. TerraMind checkpoints are ``torch.save`` state dicts
(the released ``TerraMind_v1_*.pt``), read with ``weights_only=True`` so a pickle that
would run code is refused, or safetensors files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from terraloom.model.checkpoint import CONFIG_FILE, MODEL_FILE, latest_checkpoint
from terraloom.model.config import ModelConfig, from_dict
from terraloom.model.interop.terramind import InteropError


def weights_dir(path: str | os.PathLike[str]) -> Path:
    """The directory holding ``model.safetensors`` + ``config.json`` for ``path``."""
    p = Path(path)
    if (p / MODEL_FILE).exists() and (p / CONFIG_FILE).exists():
        return p
    ckpt = latest_checkpoint(p) if p.is_dir() else None
    if ckpt is None:
        raise FileNotFoundError(f"{path}: no {MODEL_FILE} + {CONFIG_FILE} and no checkpoint")
    return ckpt


def read_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    meta = json.loads((weights_dir(path) / CONFIG_FILE).read_text())
    cfg: ModelConfig = from_dict(ModelConfig, meta.get("model", meta))
    return cfg


def load_weights(path: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    d = weights_dir(path)
    return read_model_config(d), load_file(str(d / MODEL_FILE))


def init_overrides(path: str | os.PathLike[str]) -> list[str]:
    """``--set`` overrides that make a run's model the one stored at ``path`` (and start
    from its weights): ``train --init DIR``."""
    from terraloom.model.config import to_dict

    cfg = read_model_config(path)
    out = [f"model.{k}={json.dumps(v)}" for k, v in to_dict(cfg).items()]
    return [*out, f"init_from={json.dumps(str(Path(path).resolve()))}"]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A TerraMind state dict from ``.pt``/``.pth`` (weights only) or ``.safetensors``.

    A ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper (training checkpoints) is unwrapped.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(p)))
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or not a torch file
        first = str(exc).strip().splitlines()
        raise InteropError(
            f"{path}: not a weights-only torch state dict ({first[0] if first else exc})"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InteropError(f"{path}: not a state dict of tensors")
    return obj


def write_state_dict(sd: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """``torch.save`` (``.pt``, what terratorch loads) or safetensors (``.safetensors``;
    tensors shared under two names are stored twice, as the format requires)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    if p.suffix == ".safetensors":
        from terraloom.storage.files import save_safetensors

        save_safetensors({k: v.contiguous().clone() for k, v in sd.items()}, tmp)
    else:
        torch.save(sd, tmp)
    os.replace(tmp, p)
