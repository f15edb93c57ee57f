"""Training checkpoints: weights (safetensors), config, optimizer, loader position and RNG.

Layout of ``<out_dir>/step_00001000/``: ``model.safetensors`` + ``config.json`` (loadable
by ``TerraloomModel.from_pretrained``) and ``train_state.pt`` (step, optimizer, loader
state, RNG states). A checkpoint is written to a temporary directory and renamed, and
``<out_dir>/latest`` names the newest complete one, so a run killed mid-write resumes from
the previous checkpoint. Under FSDP the full (unsharded) state is gathered to rank 0.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.config import TrainConfig, to_dict

STATE_FILE = "train_state.pt"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LATEST = "latest"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the legacy global state is what libraries use
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_fsdp(model: nn.Module) -> bool:
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, Any], Any]:
    """Unsharded model and optimizer state (collective under FSDP; call on every rank)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = (
            get_optimizer_state_dict(model, optimizer, options=opts)
            if optimizer is not None
            else None
        )
        return msd, osd
    return unwrap(model).state_dict(), (optimizer.state_dict() if optimizer is not None else None)


def save_checkpoint(
    out_dir: str | os.PathLike[str],
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    cfg: TrainConfig,
    loader_state: dict[str, int] | None = None,
    *,
    rank: int = 0,
    keep: int = 3,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``step_<step>`` atomically (rank 0) and point ``latest`` at it."""
    from safetensors.torch import save_file

    msd, osd = full_state(model, optimizer)
    out = Path(out_dir)
    final = out / f"step_{step:08d}"
    if rank != 0:
        return final
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in msd.items()}
    save_file(
        tensors,
        str(tmp / MODEL_FILE),
        metadata={"format": "terraloom-model", "version": "1", "step": str(step)},
    )
    (tmp / CONFIG_FILE).write_text(json.dumps(to_dict(cfg), indent=2))
    torch.save(
        {
            "step": step,
            "optimizer": osd,
            "loader": loader_state,
            "rng": rng_state(),
            "extra": extra or {},
        },
        tmp / STATE_FILE,
    )
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (out / (LATEST + ".tmp")).write_text(final.name)
    (out / (LATEST + ".tmp")).replace(out / LATEST)
    _prune(out, keep)
    return final


def _prune(out: Path, keep: int) -> None:
    if keep <= 0:
        return
    ckpts = sorted(p for p in out.glob("step_*") if p.is_dir())
    for p in ckpts[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    out = Path(out_dir)
    marker = out / LATEST
    if marker.exists():
        p = out / marker.read_text().strip()
        if (p / STATE_FILE).exists():
            return p
    ckpts = sorted(p for p in out.glob("step_*") if (p / STATE_FILE).exists())
    return ckpts[-1] if ckpts else None


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights (+ optimizer, RNG) into ``model``; return the train state dict."""
    from safetensors.torch import load_file

    p = Path(path)
    weights: dict[str, Any] = load_file(str(p / MODEL_FILE))
    state = torch.load(p / STATE_FILE, map_location="cpu", weights_only=False)
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=opts)
        if optimizer is not None and state.get("optimizer") is not None:
            set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
    else:
        unwrap(model).load_state_dict(weights, strict=True)
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
    if restore_rng and state.get("rng") is not None:
        set_rng_state(state["rng"])
    return state
