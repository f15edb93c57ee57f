"""Dual-scale early fusion: pixel patches and token codes of all modalities in one sequence.

* Pixel inputs: a per-modality linear patch embedding of the normalised 16x16 patches
  (no bias, so the modality embedding alone marks the modality, as in TerraMind). Only the
  selected patches arrive (``pix.<key>`` with flat slot indices ``pix_idx.<key>``), so no
  FLOPs are spent on patches the masking dropped.
* Token inputs: one embedding table holding every token modality's rows at an offset (one
  gather for the whole sequence); row 0 is a zero row used by pixel slots.
* Positions: fixed 2-D sin-cos for image positions, 1-D sin-cos for sequence positions,
  plus a learned embedding per input modality. ``S2L2A@px`` and ``S2L2A@tok`` are distinct
  input modalities.
* Decoder queries: a learned mask token for image targets; for sequence targets the
  previous target token (teacher forcing); plus position and target-modality embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from terraloom.model.config import Kind, ModalitySpecs, ModelConfig


def sincos_1d(n: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(n, dim) fixed 1-D sin-cos position table."""
    if dim % 2:
        raise ValueError("dim must be even for sin-cos positions")
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(temperature) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = pos * freq
    return torch.cat([ang.sin(), ang.cos()], 1).float()


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(grid*grid, dim) fixed 2-D sin-cos table (half the channels per axis, row-major)."""
    if dim % 4:
        raise ValueError("dim must be divisible by 4 for 2-D sin-cos positions")
    one = sincos_1d(grid, dim // 2, temperature)
    y = one[:, None, :].expand(grid, grid, dim // 2)
    x = one[None, :, :].expand(grid, grid, dim // 2)
    return torch.cat([y, x], -1).reshape(grid * grid, dim)


def _position_table(specs: ModalitySpecs, dim: int) -> torch.Tensor:
    grid = int(round(math.sqrt(specs.n_image_positions)))
    return torch.cat([sincos_2d(grid, dim), sincos_1d(specs.max_seq_positions, dim)])


class InputEmbedding(nn.Module):
    """(enc_ids, enc_mod, enc_pos, pixel patches) -> token embeddings x and pos+mod emb."""

    tok_offset: torch.Tensor
    pos_offset: torch.Tensor
    pos_table: torch.Tensor

    def __init__(self, cfg: ModelConfig, specs: ModalitySpecs) -> None:
        super().__init__()
        self.specs = specs
        d = cfg.dim
        offsets, seq, rows = [], [], 1
        for s in specs.inputs:
            offsets.append(rows if s.kind is not Kind.PIXELS else 0)
            seq.append(s.kind is Kind.SEQUENCE)
            rows += s.vocab if s.kind is not Kind.PIXELS else 0
        self.tokens = nn.Embedding(rows, d, padding_idx=0)
        self.patch = nn.ModuleDict(
            {
                _key(s.key): nn.Linear(s.patch_dim, d, bias=False)
                for s in specs.inputs
                if s.kind is Kind.PIXELS
            }
        )
        self.modality = nn.Embedding(len(specs.inputs), d)
        self.register_buffer(
            "tok_offset", torch.tensor(offsets, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "pos_offset",
            torch.tensor([specs.n_image_positions if q else 0 for q in seq], dtype=torch.long),
            persistent=False,
        )
        self.register_buffer("pos_table", _position_table(specs, d), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mod, pos, ids = batch["enc_mod"], batch["enc_pos"], batch["enc_ids"]
        emb = self.pos_table[self.pos_offset[mod] + pos] + self.modality(mod)
        x = self.tokens(self.tok_offset[mod] + ids * (self.tok_offset[mod] > 0))
        b, n, d = x.shape
        idx, vals = [], []
        zero = x.new_zeros(())
        for s in self.specs.inputs:
            if s.kind is not Kind.PIXELS:
                continue
            lin: nn.Linear = self.patch[_key(s.key)]  # type: ignore[assignment]
            i = batch.get(f"pix_idx.{s.key}")
            if i is None or i.numel() == 0:
                zero = zero + 0.0 * lin.weight.sum()  # keep every parameter in the graph (DDP)
                continue
            patches = batch[f"pix.{s.key}"].to(lin.weight.dtype)
            idx.append(i)
            vals.append(lin(patches))
        if idx:
            flat = x.reshape(b * n, d)
            flat = flat.index_add(0, torch.cat(idx), torch.cat(vals).to(flat.dtype))
            x = flat.view(b, n, d)
        return x + zero, emb


class QueryEmbedding(nn.Module):
    """Decoder queries: mask token (images) or previous token (sequences) + pos + modality."""

    tok_offset: torch.Tensor
    is_seq: torch.Tensor
    pos_offset: torch.Tensor
    pos_table: torch.Tensor

    def __init__(self, cfg: ModelConfig, specs: ModalitySpecs) -> None:
        super().__init__()
        d = cfg.dim
        offsets, seq, rows = [], [], 1
        for t in specs.targets:
            offsets.append(rows if t.kind is Kind.SEQUENCE else 0)
            seq.append(t.kind is Kind.SEQUENCE)
            rows += t.dec_vocab if t.kind is Kind.SEQUENCE else 0
        #: Row 0 is the mask token; sequence modalities' input tokens follow at offsets.
        self.tokens = nn.Embedding(rows, d)
        self.modality = nn.Embedding(len(specs.targets), d)
        self.register_buffer(
            "tok_offset", torch.tensor(offsets, dtype=torch.long), persistent=False
        )
        self.register_buffer("is_seq", torch.tensor(seq, dtype=torch.bool), persistent=False)
        self.register_buffer(
            "pos_offset",
            torch.tensor([specs.n_image_positions if q else 0 for q in seq], dtype=torch.long),
            persistent=False,
        )
        self.register_buffer("pos_table", _position_table(specs, d), persistent=False)

    def forward(
        self, tgt_mod: torch.Tensor, tgt_pos: torch.Tensor, tgt_prev: torch.Tensor
    ) -> torch.Tensor:
        seq = self.is_seq[tgt_mod]
        tok = self.tokens(torch.where(seq, self.tok_offset[tgt_mod] + tgt_prev, 0))
        return tok + self.pos_table[self.pos_offset[tgt_mod] + tgt_pos] + self.modality(tgt_mod)


def _key(key: str) -> str:
    """ModuleDict keys may not contain '@' or '.'."""
    return key.replace("@", "_").replace(".", "_")
