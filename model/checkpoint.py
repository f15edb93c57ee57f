"""Training checkpoints: weights (safetensors), config, optimizer, loader position and RNG.

Layout of ``<out_dir>/step_00001000/``: ``model.safetensors`` + ``config.json`` (loadable
by ``TerraloomModel.from_pretrained``) and ``train_state.pt`` (step, optimizer, loader
state, RNG states). A checkpoint is written to a temporary directory and renamed, and
``<out_dir>/latest`` names the newest complete one, so a run killed mid-write resumes from
the previous checkpoint. Under FSDP the full (unsharded) state is gathered to rank 0.

A run directory is data, never code: ``train_state.pt`` holds only tensors and plain
containers (RNG states as tensors) and is read with ``torch.load(weights_only=True)``, so a
pickle that would run code is refused; ``latest`` must name a checkpoint inside the run
directory. ``config.json`` records the data paths absolute, so a run can be used from any
working directory.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from terraloom.model.config import TrainConfig, to_dict
from terraloom.model.transformer import TerraloomModel
from terraloom.storage.location import Location, LocationError

STATE_FILE = "train_state.pt"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LATEST = "latest"
_STEP_NAME = re.compile(r"step_\d{8,}")


class CheckpointError(ValueError):
    """A checkpoint or run directory that cannot be trusted or read (bad input, exit 2)."""


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain numbers (loadable with ``weights_only``)."""
    mt, key, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the legacy global state is what libraries use
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "algorithm": str(mt),
            "key": torch.from_numpy(np.asarray(key, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["algorithm"],
            np.asarray(n["key"].numpy(), np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(py["state"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def anchored_data(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with local data paths made absolute, so a run's recorded config does not
    depend on the working directory it was trained from (URLs stay as they are)."""

    def anchor(path: str) -> str:
        return path if not path or "://" in path else str(Path(path).expanduser().resolve())

    d = cfg.data
    return replace(cfg, data=replace(d, tokens=anchor(d.tokens), corpus=anchor(d.corpus)))


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
    from terraloom.storage.files import save_safetensors

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
    save_safetensors(
        tensors,
        str(tmp / MODEL_FILE),
        metadata={"format": "terraloom-model", "version": "1", "step": str(step)},
    )
    (tmp / CONFIG_FILE).write_text(json.dumps(to_dict(anchored_data(cfg)), indent=2))
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


def _inside(out: Path, p: Path) -> bool:
    """Whether ``p`` (symlinks followed) lies inside the run directory ``out``."""
    return p.resolve().is_relative_to(out.resolve())


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run directory, or None.

    ``latest`` must hold the bare name of a ``step_*`` directory that resolves inside the
    run directory; anything else (an absolute path, ``..``, a symlink out of the run) is
    refused with :class:`CheckpointError` rather than followed.
    """
    out = Path(out_dir)
    marker = out / LATEST
    if marker.is_file():
        name = marker.read_text().strip()
        if not _STEP_NAME.fullmatch(name):
            raise CheckpointError(
                f"{marker} names {name[:80]!r}, not a step_<n> checkpoint of this run; refusing to follow it"
            )
        p = out / name
        if p.exists() and not _inside(out, p):
            raise CheckpointError(
                f"{marker} names {name}, which resolves outside the run directory; refusing to follow it"
            )
        if (p / STATE_FILE).exists():
            return p
    ckpts = sorted(p for p in out.glob("step_*") if (p / STATE_FILE).exists())
    if ckpts and not _inside(out, ckpts[-1]):
        raise CheckpointError(
            f"{ckpts[-1]} resolves outside the run directory; refusing to follow it"
        )
    return ckpts[-1] if ckpts else None


def read_train_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``train_state.pt`` of a checkpoint directory, read without running any code.

    ``weights_only=True`` refuses every pickled object but tensors and plain containers; a
    file that needs more (a crafted pickle, or a checkpoint written before train states
    were plain data) is a :class:`CheckpointError`, never unpickled.
    """
    f = Path(path) / STATE_FILE
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as exc:
        raise CheckpointError(
            f"{f}: refusing to load a train state that holds more than tensors and plain data "
            "(an untrusted or pre-safe-format checkpoint); start a new run (--no-resume or another --out-dir)"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{f}: not a terraloom train state (no integer 'step')")
    return state


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
    state = read_train_state(p)
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


def fetch_checkpoint(location: Location) -> Path:
    """The weights and config of a remote checkpoint (or of a remote run's ``latest``) in
    the local cache: generation and evaluation load a checkpoint URL through it. Files
    already cached with their remote size are not copied again."""
    from terraloom.model.rundir import RunDir
    from terraloom.storage.transfer import cache_dir, download_file

    ck = location
    if not ((ck / MODEL_FILE).exists() and (ck / CONFIG_FILE).exists()):
        try:
            name = RunDir(location, Path()).remote_latest()
        except LocationError as exc:
            raise CheckpointError(str(exc)) from None
        if name is None or not (location / f"{name}/{MODEL_FILE}").exists():
            raise FileNotFoundError(
                f"{location} is neither a checkpoint (model.safetensors + config.json) nor a run directory with one"
            )
        ck = location / name
    dest = cache_dir(ck, "checkpoints")
    for f in (CONFIG_FILE, MODEL_FILE):
        target = dest / f
        if not target.exists() or target.stat().st_size != (ck / f).size():
            download_file(ck / f, target)
    return dest


def resolve_checkpoint(path: str | os.PathLike[str] | Location) -> Path:
    """A checkpoint directory (``model.safetensors`` + ``config.json``) or a run directory;
    a URL (``s3://bkt/run``) is read through the local cache (:func:`fetch_checkpoint`)."""
    loc = Location.parse(path)
    if not loc.is_local:
        return fetch_checkpoint(loc)
    p = loc.local_path
    if (p / "model.safetensors").is_file() and (p / "config.json").is_file():
        return p
    if p.is_dir():
        ck = latest_checkpoint(p)
        if ck is not None:
            return ck
    raise FileNotFoundError(
        f"{p} is neither a checkpoint (model.safetensors + config.json) nor a run directory with one"
    )


def checkpoint_data_paths(ckpt: Path) -> dict[str, str]:
    """``data.tokens`` / ``data.corpus`` recorded in a training checkpoint's config, if any.

    Training records them absolute; a relative one (an older or hand-written checkpoint) is
    taken relative to the run directory (the checkpoint's parent) when it exists there, so
    a run moved together with its data keeps working from any working directory.
    """
    meta = json.loads((ckpt / "config.json").read_text())
    data = meta.get("data") or {}
    out = {k: str(data[k]) for k in ("tokens", "corpus") if data.get(k)}
    for k, v in out.items():
        if "://" not in v and not Path(v).is_absolute() and (ckpt.parent / v).exists():
            out[k] = str(ckpt.parent / v)
    return out


def load_model(
    path: str | os.PathLike[str] | Location, device: str | torch.device = "cpu"
) -> TerraloomModel:
    """The model of a checkpoint or of a run's latest checkpoint, in eval mode."""
    return TerraloomModel.from_pretrained(resolve_checkpoint(path), map_location=device).eval()
