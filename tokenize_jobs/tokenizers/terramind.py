"""TerraMind v1's image tokenizers, encoder side: ViT encoder + FSQ, as a tokenizer kind.

Pre-tokenizing with terraloom's own FSQ-VAEs gives ids TerraMind v1 never saw; continuing
its pretraining needs its own tokenizers' ids. This module runs the encoder half of
terratorch's ``terramind_v1_tokenizer_*`` (``VQ.encode``: ViT encoder with a tanh
post-MLP, a 1x1 projection to the latent, finite scalar quantisation with levels 8-8-8-6-5,
or 7-5-5-5-5 for LULC) from their released weights, so ``terraloom-tokenize encode`` writes
ids identical to terratorch's tokenizer on the same input. The diffusion decoders stay
terratorch's: ``decode`` refuses with a pointer to them.

Inputs are the corpus's stored values; standardisation uses TerraMind's v1 statistics from
the registry (``schemas.modalities.TERRAMIND_V1``), nodata becomes 0 (the band mean). LULC
legend values become TerraMind's class channels (one-hot over 10) through the registry's
``lulc_channels``.

``convert_checkpoint`` turns a released ``TerraMind_Tokenizer_*.pt`` into a terraloom
tokenizer directory (encoder weights as safetensors + ``config.json``, kind
``terramind_vit_fsq``), read back by ``tokenizers.io.load_tokenizer``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from terraloom.schemas.modalities import get_modality, lulc_to_index, terramind_modality

KIND = "terramind_vit_fsq"
_KEEP = ("encoder.", "quant_proj.")


@dataclass(frozen=True)
class TerraMindTokenizerConfig:
    """Shapes of a TerraMind tokenizer encoder (read from its weights) and its modality."""

    modality: str
    in_channels: int
    dim: int
    depth: int
    heads: int
    mlp_hidden: int
    patch_size: int
    pos_grid: int
    latent_dim: int
    levels: tuple[int, ...]

    @classmethod
    def from_state_dict(
        cls, modality: str, sd: Mapping[str, torch.Tensor], heads: int | None = None
    ) -> TerraMindTokenizerConfig:
        t = terramind_modality(modality)
        try:
            proj = sd["encoder.proj.weight"]
            dim = int(proj.shape[0])
            depth = len({k.split(".")[2] for k in sd if k.startswith("encoder.blocks.")})
            cfg = cls(
                modality=t.modality,
                in_channels=int(proj.shape[1]),
                dim=dim,
                depth=depth,
                heads=heads or max(dim // 64, 1),
                mlp_hidden=int(sd["encoder.blocks.0.mlp.fc1.weight"].shape[0]),
                patch_size=int(proj.shape[-1]),
                pos_grid=int(sd["encoder.pos_emb"].shape[-1]),
                latent_dim=int(sd["quant_proj.weight"].shape[0]),
                levels=tuple(t.fsq_levels),
            )
        except KeyError as exc:
            raise ValueError(f"not a TerraMind tokenizer state dict: no {exc.args[0]!r}") from None
        if cfg.latent_dim != len(cfg.levels):
            raise ValueError(
                f"{modality}: latent has {cfg.latent_dim} channels, FSQ levels {cfg.levels} need {len(cfg.levels)}"
            )
        if cfg.in_channels != t.tokenizer_channels:
            raise ValueError(
                f"{modality}: tokenizer takes {cfg.in_channels} channels, TerraMind's {t.tokenizer_channels}"
            )
        return cfg

    @property
    def vocab_size(self) -> int:
        return int(np.prod(self.levels))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden, nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Encoder(nn.Module):
    """ViT over 16 px patches; the sin-cos grid is resized bicubically to the input."""

    pos_emb: torch.Tensor

    def __init__(self, c: TerraMindTokenizerConfig) -> None:
        super().__init__()
        self.register_buffer("pos_emb", torch.zeros(1, c.dim, c.pos_grid, c.pos_grid))
        self.proj = nn.Conv2d(c.in_channels, c.dim, c.patch_size, c.patch_size)
        self.blocks = nn.Sequential(*[_Block(c.dim, c.heads, c.mlp_hidden) for _ in range(c.depth)])
        self.norm_mlp = nn.LayerNorm(c.dim, eps=1e-6)
        self.post_mlp = _Mlp(c.dim, c.mlp_hidden, nn.Tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        _, d, nh, nw = x.shape
        pos = F.interpolate(self.pos_emb, size=(nh, nw), mode="bicubic", align_corners=False)
        x = x.flatten(2).transpose(1, 2) + pos.flatten(2).transpose(1, 2)
        x = self.blocks(x)
        x = x.float() + self.post_mlp(self.norm_mlp(x.float()))
        return x.transpose(1, 2).reshape(x.shape[0], d, nh, nw)


class TerraMindTokenizerEncoder(nn.Module):
    """Standardised input (B, C, H, W) -> (B, H/16, W/16) TerraMind token ids."""

    basis: torch.Tensor
    levels: torch.Tensor

    def __init__(self, c: TerraMindTokenizerConfig) -> None:
        super().__init__()
        self.config = c
        self.encoder = _Encoder(c)
        self.quant_proj = nn.Conv2d(c.dim, c.latent_dim, 1)
        lv = torch.tensor(c.levels, dtype=torch.int)
        self.register_buffer("levels", lv, persistent=False)
        basis = torch.cumprod(torch.tensor([1, *c.levels[:-1]]), dim=0, dtype=torch.int)
        self.register_buffer("basis", basis, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.quant_proj(self.encoder(x)).permute(0, 2, 3, 1)  # (B, h, w, latent)
        y = torch.sigmoid(z) * (self.levels - 1)
        # the same float arithmetic as TerraMind's FSQ (straight-through rounding, then a
        # truncating cast of the weighted sum), so ids agree exactly, rounding ties included
        number = y + (y.round() - y)
        return (number * self.basis).sum(-1).to(torch.int).long()


class TerraMindImageTokenizer:
    """The ``ImageTokenizer`` protocol around :class:`TerraMindTokenizerEncoder`."""

    def __init__(self, model: TerraMindTokenizerEncoder, identity: dict[str, str]) -> None:
        self.model = model.eval()
        c = model.config
        self.modality = c.modality
        self.vocab_size = c.vocab_size
        self.patch_size = c.patch_size
        self.identity = identity
        t = terramind_modality(c.modality)
        self._mean = torch.tensor(t.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(t.std, dtype=torch.float32).view(1, -1, 1, 1)
        self._lulc = t.lulc_channels
        self._channels = t.tokenizer_channels

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """Stored values -> the tensor TerraMind's tokenizer takes (standardised, or one-hot)."""
        dev = next(self.model.parameters()).device
        x = pixels.to(dev)
        if self._lulc:
            lut = torch.zeros(256, dtype=torch.long)
            lut[: len(self._lulc)] = torch.tensor(self._lulc)
            idx = torch.from_numpy(
                lulc_to_index(np.asarray(x[:, 0].cpu(), np.uint8)).astype(np.int64)
            )
            cls = lut[idx].to(dev)
            return F.one_hot(cls, self._channels).permute(0, 3, 1, 2).float()
        m = get_modality(self.modality)
        out = (x.float() - self._mean.to(dev)) / self._std.to(dev)
        bad = ~torch.isfinite(out)
        if m.nodata is not None and not (isinstance(m.nodata, float) and np.isnan(m.nodata)):
            bad |= x == m.nodata
        return torch.where(bad, torch.zeros_like(out), out)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(pixels))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            f"{self.modality}: TerraMind's tokenizer decoders (diffusion) are terratorch's; "
            "decode with terratorch's terramind_v1_tokenizer_* (decode_tokens)"
        )

    def to(self, device: torch.device | str) -> TerraMindImageTokenizer:
        self.model.to(device)
        return self


# --------------------------------------------------------------------------- files


def encoder_state(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder + latent projection of a TerraMind tokenizer state dict (decoder dropped)."""
    return {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in sd.items()
        if k.startswith(_KEEP)
    }


def build_encoder(
    modality: str, sd: Mapping[str, torch.Tensor], heads: int | None = None
) -> TerraMindTokenizerEncoder:
    cfg = TerraMindTokenizerConfig.from_state_dict(modality, sd, heads)
    model = TerraMindTokenizerEncoder(cfg)
    model.load_state_dict(encoder_state(sd), strict=True)
    return model.eval()


def convert_checkpoint(
    checkpoint: str | os.PathLike[str],
    modality: str,
    out: str | os.PathLike[str],
    heads: int | None = None,
) -> dict[str, str]:
    """A released ``TerraMind_Tokenizer_<M>.pt`` -> a terraloom tokenizer directory."""
    from terraloom.storage.files import save_safetensors
    from terraloom.tokenize_jobs.protocol import TOKENIZER_FORMAT_VERSION
    from terraloom.tokenize_jobs.tokenizers.io import (
        CONFIG_NAME,
        TOKENIZER_FORMAT,
        WEIGHTS_NAME,
        sha256_file,
    )

    try:
        sd: Any = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(
            f"{checkpoint}: not a weights-only torch state dict ({first[0] if first else exc})"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    model = build_encoder(modality, sd, heads)  # validates shapes
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (WEIGHTS_NAME + ".tmp")
    save_safetensors(encoder_state(sd), tmp, metadata={"modality": model.config.modality})
    os.replace(tmp, d / WEIGHTS_NAME)
    sha = sha256_file(d / WEIGHTS_NAME)
    identity = {
        "id": f"{model.config.modality}-terramind-v1",
        "version": f"terramind-v1.{sha[:12]}",
        "sha256": sha,
    }
    config = {
        "format": TOKENIZER_FORMAT,
        "format_version": TOKENIZER_FORMAT_VERSION,
        "modality": model.config.modality,
        "kind": KIND,
        "identity": identity,
        "training": {"source": Path(checkpoint).name},
        "weights": WEIGHTS_NAME,
        "vocab_size": model.config.vocab_size,
        "patch_size": model.config.patch_size,
        "levels": list(model.config.levels),
        "model": {**asdict(model.config), "levels": list(model.config.levels)},
    }
    (d / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return identity


def load_terramind_tokenizer(
    root: Path, config: Mapping[str, Any], device: torch.device | str = "cpu"
) -> TerraMindImageTokenizer:
    """Build from a directory written by :func:`convert_checkpoint` (sha checked by the caller)."""
    from safetensors.torch import load_file

    m = dict(config["model"])
    m["levels"] = tuple(m["levels"])
    cfg = TerraMindTokenizerConfig(**m)
    model = TerraMindTokenizerEncoder(cfg)
    model.load_state_dict(load_file(str(root / config["weights"])), strict=True)
    return TerraMindImageTokenizer(model, dict(config["identity"])).to(device)
