"""Finite scalar quantisation (Mentzer et al., 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple").

Each latent channel is bounded with a shifted tanh to ``L_i`` levels and rounded with a
straight-through estimator; a code's index is the mixed-radix number of its per-channel
level indices. There is no codebook to learn, so there is nothing to collapse, and the
index <-> code maps are exact integer arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def round_ste(
    z: torch.Tensor, low: torch.Tensor | None = None, high: torch.Tensor | None = None
) -> torch.Tensor:
    """Round (and clamp to ``[low, high]`` if given) in the forward pass, identity in the
    backward pass.

    Written as ``round(z) + (z - z.detach())`` so the forward value is exactly the
    rounded one (``z + (round(z) - z)`` can be off by an ulp).
    """
    r = torch.round(z)
    if low is not None and high is not None:
        r = torch.minimum(torch.maximum(r, low), high)
    return r.detach() + (z - z.detach())


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum()


class FSQ(nn.Module):
    """Quantise the last dimension of ``z`` (size ``len(levels)``) to a finite grid.

    ``forward(z) -> (z_q, indices)``: ``z_q`` has the shape of ``z`` with values in
    [-1, 1]; ``indices`` drops the last dimension and holds int64 ids in
    ``[0, codebook_size)``.
    """

    _levels: torch.Tensor
    _basis: torch.Tensor
    _half_l: torch.Tensor
    _offset: torch.Tensor
    _shift: torch.Tensor
    _half_width: torch.Tensor
    _low: torch.Tensor
    _high: torch.Tensor

    def __init__(self, levels: Sequence[int], eps: float = 1e-3) -> None:
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be >= 2 each, got {levels}")
        self.levels = levels
        self.eps = eps
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        lv = torch.tensor(levels, dtype=torch.int64)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1]), dtype=torch.int64), 0)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        half_l = (lv.double() - 1) * (1 + eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0).double()
        self.register_buffer("_half_l", half_l.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l).float(), persistent=False)
        self.register_buffer("_half_width", (lv // 2).float(), persistent=False)
        # Valid rounded levels. The bound's ``1 + eps`` stretch reaches past them once
        # (L - 1) * eps / 2 > 0.5, i.e. for the grouped scalars of 3,072 and 15,360
        # levels, when a latent saturates the tanh; the clamp keeps every code a code.
        self.register_buffer("_low", -(lv // 2).float(), persistent=False)
        self.register_buffer("_high", (lv - 1 - lv // 2).float(), persistent=False)

    @property
    def shift(self) -> torch.Tensor:
        """(d,) offsets inside each channel's tanh (non-zero for even level counts, whose
        levels straddle 0); a compander targets ``tanh(z + shift)``."""
        return self._shift

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each channel into (-L/2, L/2) so that rounding yields exactly L values."""
        return torch.tanh(z + self._shift) * self._half_l - self._offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Continuous (..., d) -> quantised codes (..., d) in [-1, 1], straight-through."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"last dimension {z.shape[-1]} != number of FSQ levels {self.dim}")
        return round_ste(self.bound(z.float()), self._low, self._high) / self._half_width

    def unbound(self, codes: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`bound` on quantised codes: the continuous latent whose bounded
        value is the code's level.

        A decoder that reads its linear path through this sees latents that are linear
        in a linearly encoded input (up to rounding) instead of their tanh, so a linear
        encoder/decoder pair round-trips exactly at every level, tails included.
        """
        u = (codes.float() * self._half_width + self._offset) / self._half_l
        return torch.atanh(u) - self._shift

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Quantised codes (..., d) -> int64 indices (...)."""
        level_idx = torch.round(codes.float() * self._half_width + self._half_width).long()
        return (level_idx * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """int64 indices (...) -> quantised codes (..., d) in [-1, 1]."""
        indices = indices.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"FSQ indices must lie in [0, {self.codebook_size})")
        level_idx = (indices.unsqueeze(-1) // self._basis) % self._levels
        return (level_idx.float() - self._half_width) / self._half_width

    def entropy_loss(
        self,
        z: torch.Tensor,
        temperature: float = 0.5,
        max_tokens: int = 1024,
        joint: bool = True,
        max_levels: int = 64,
    ) -> torch.Tensor:
        """Codebook-usage regulariser: mean per-token entropy minus the entropy of the
        batch-average code distribution (as MAGVIT-v2's LFQ entropy loss).

        Soft assignments put each channel's bounded value on its levels with
        ``softmax(-(u - level)^2 / temperature)``; the joint over all codes is their
        product. Minimising it makes tokens commit to one code while the batch spreads
        over many, i.e. it spends the fixed bit budget instead of leaving codes unused.
        At most ``max_tokens`` evenly strided tokens are used (memory ~ tokens x codes).
        ``joint=False`` spreads each channel's levels separately (sum of the marginals'
        entropies) instead of the joint codes: weaker, but it does not push channels
        apart. Channels with more than ``max_levels`` levels (grouped fine scalars such
        as the level scalars of DEM, NDVI and S1) are left out: they are regression
        channels whose spread is the data's, and the pull towards level centres would
        fight precision.
        """
        u = self.bound(z.float()).reshape(-1, self.dim)
        if u.shape[0] > max_tokens:
            u = u[:: -(-u.shape[0] // max_tokens)]
        product = u.new_ones(u.shape[0], 1)
        per_token = u.new_zeros(())
        batch_entropy = u.new_zeros(())
        for c, n_levels in enumerate(self.levels):
            if n_levels > max_levels:
                continue
            values = torch.arange(n_levels, device=u.device, dtype=u.dtype) - self._half_width[c]
            logits = -(u[:, c : c + 1] - values).square() / temperature
            p = torch.softmax(logits, dim=-1)
            per_token = per_token - (p * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
            if joint:
                product = (product.unsqueeze(-1) * p.unsqueeze(1)).reshape(u.shape[0], -1)
            else:
                batch_entropy = batch_entropy + _entropy(p.mean(0))
        if joint:
            batch_entropy = _entropy(product.mean(0))
        return per_token - batch_entropy

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_q = self.quantize(z)
        return z_q, self.codes_to_indices(z_q.detach())
