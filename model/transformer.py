"""The terraloom model: a TerraMind/4M-style encoder-decoder, in one readable file.

Encoder: pre-norm transformer over the selected input tokens (pixel and token scales in
one sequence). Decoder: queries for the target tokens; self-attention restricted to tokens
of the same target modality (causal inside sequence modalities), cross-attention to the
projected encoder output plus the encoder's position/modality embeddings (as 4M);
per-modality output heads; cross-entropy per modality averaged over modalities.

Attention is ``F.scaled_dot_product_attention`` everywhere. Masks:

* encoder/cross-attention key padding: a (B, 1, 1, N) boolean, and only when the batch
  has padding at all (static budgets are normally filled exactly, so no mask, flash path);
* decoder self-attention: a FlexAttention ``BlockMask`` from a ``mask_mod`` comparing
  segment ids (``dec_attn="flex"``; block-sparse, no dense mask; used when compiled on
  CUDA), or, where FlexAttention cannot run (no backward on CPU; slow uncompiled), one
  (B, 1, N_tgt, N_tgt) boolean mask built once per step and shared by all layers
  (``dec_attn="dense"``).

Static shapes end to end except the pixel patch embeddings and the output heads, which
see exactly the tokens of their modality (sizes known on the host from the loader), so
no FLOPs go to dropped patches or to other modalities' vocabularies; the compiled region
(`trunk`) is the static encoder-decoder stack.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from terraloom.model.config import (
    TOKEN_SUFFIX,
    Kind,
    ModelConfig,
    from_dict,
    modality_specs,
    to_dict,
)
from terraloom.model.embeddings import InputEmbedding, QueryEmbedding
from terraloom.model.ordinal import OrdinalTarget, ordinal_cross_entropy

try:  # FlexAttention (torch >= 2.5)
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older torch
    BlockMask = None  # type: ignore[assignment,misc]
    create_block_mask = flex_attention = None  # type: ignore[assignment]

Mask = Any  # None | bool tensor broadcastable to (B, H, Nq, Nk) | BlockMask


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask) -> torch.Tensor:
    if BlockMask is not None and isinstance(mask, BlockMask):
        return flex_attention(q, k, v, block_mask=mask)  # type: ignore[misc,return-value]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, mask: Mask) -> torch.Tensor:
        b, n, d = x.shape
        # unbind (backward: one stack) rather than tuple-unpacking (three zero-filled selects)
        q, k, v = (
            self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        )
        y = attend(q, k, v, mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: Mask) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        y = attend(q, k, v, mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """GELU MLP (tiny/small) or SwiGLU (base/large)."""

    def __init__(self, dim: int, hidden: int, kind: str, bias: bool) -> None:
        super().__init__()
        self.gated = kind == "swiglu"
        self.fc1 = nn.Linear(dim, 2 * hidden if self.gated else hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            a, g = self.fc1(x).chunk(2, -1)
            return self.fc2(F.silu(a) * g)
        return self.fc2(F.gelu(self.fc1(x)))


def _norm(cfg: ModelConfig) -> nn.LayerNorm:
    bias = cfg.bias if cfg.norm_bias is None else cfg.norm_bias
    return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=bias)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = _norm(cfg)
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.bias)
        self.norm2 = _norm(cfg)
        self.mlp = MLP(cfg.dim, cfg.hidden, cfg.mlp, cfg.bias)

    def forward(self, x: torch.Tensor, mask: Mask) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = _norm(cfg)
        self.self_attn = SelfAttention(cfg.dim, cfg.heads, cfg.bias)
        self.query_norm = _norm(cfg)
        self.context_norm = _norm(cfg)
        self.cross_attn = CrossAttention(cfg.dim, cfg.heads, cfg.bias)
        self.norm2 = _norm(cfg)
        self.mlp = MLP(cfg.dim, cfg.hidden, cfg.mlp, cfg.bias)

    def forward(
        self, y: torch.Tensor, ctx: torch.Tensor, self_mask: Mask, ctx_mask: Mask
    ) -> torch.Tensor:
        y = y + self.self_attn(self.norm1(y), self_mask)
        y = y + self.cross_attn(self.query_norm(y), self.context_norm(ctx), ctx_mask)
        return y + self.mlp(self.norm2(y))


class TiedModalityEmbedding(nn.Module):
    """Decoder-query modality embeddings whose token modalities read the encoder's rows.

    TerraMind shares one modality embedding between a token modality's encoder input and
    its decoder target (``share_modality_embeddings``); with ``tie_modality_emb`` a target
    that is also a token input uses the input table's row (one parameter, one gradient), so
    training keeps the model exactly exportable. ``weight`` keeps the state-dict key and
    serves the targets without a token input; its tied rows mirror the input rows on save.
    """

    src: torch.Tensor
    tied: torch.Tensor

    def __init__(self, own: nn.Embedding, inputs: nn.Embedding, specs: Any) -> None:
        super().__init__()
        self.weight = nn.Parameter(own.weight.detach().clone())
        # a plain attribute, not a submodule: the input table is saved once, under inputs.*
        object.__setattr__(self, "_inputs", inputs)
        keys = [s.key for s in specs.inputs]
        src = [
            keys.index(t.modality + TOKEN_SUFFIX) if t.modality + TOKEN_SUFFIX in keys else -1
            for t in specs.targets
        ]
        self.register_buffer(
            "src", torch.tensor(src, dtype=torch.long).clamp(min=0), persistent=False
        )
        self.register_buffer("tied", torch.tensor([i >= 0 for i in src]), persistent=False)

    def table(self) -> torch.Tensor:
        inp: nn.Embedding = self._inputs  # type: ignore[assignment]
        return torch.where(self.tied[:, None], inp.weight[self.src], self.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table()[idx]

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.table() if keep_vars else self.table().detach()


@dataclass
class Encoded:
    """Encoder output ready for cross-attention."""

    ctx: torch.Tensor  # (B, N_in, D) projected encoder output + input pos/mod embeddings
    pad: torch.Tensor  # (B, N_in) bool, True = padding
    any_pad: bool

    def __iter__(self):  # ``ctx, pad = model.forward_encoder(batch)``
        return iter((self.ctx, self.pad))


@dataclass
class Queries:
    """Decoder queries: one per target token, (B, N_tgt) each."""

    mod: torch.Tensor
    pos: torch.Tensor
    prev: torch.Tensor  # previous token (sequence targets; ignored for images)
    pad: torch.Tensor

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor]) -> Queries:
        return cls(batch["tgt_mod"], batch["tgt_pos"], batch["tgt_prev"], batch["tgt_pad"])


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate
    mod_sum: torch.Tensor  # (M_t,) summed cross-entropy per target modality (detached)
    mod_count: torch.Tensor  # (M_t,) tokens per target modality (this process)


class TerraloomModel(nn.Module):
    """Dual-scale any-to-any encoder-decoder (TerraMind v1 shapes, see ``model.config``)."""

    tgt_is_seq: torch.Tensor

    def __init__(self, cfg: ModelConfig, *, init: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.specs = modality_specs(cfg)
        self.inputs = InputEmbedding(cfg, self.specs)
        self.queries = QueryEmbedding(cfg, self.specs)
        self.encoder = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.enc_depth)])
        self.encoder_norm = _norm(cfg)
        self.context_proj = nn.Linear(
            cfg.dim, cfg.dim, bias=cfg.bias if cfg.context_bias is None else cfg.context_bias
        )
        self.decoder = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.dec_depth)])
        self.decoder_norm = _norm(cfg)
        #: Output heads without bias, as TerraMind/4M's ``to_logits``.
        self.heads = nn.ModuleList(
            [nn.Linear(cfg.dim, t.vocab, bias=False) for t in self.specs.targets]
        )
        self.register_buffer(
            "tgt_is_seq",
            torch.tensor([t.kind is Kind.SEQUENCE for t in self.specs.targets]),
            persistent=False,
        )
        self.activation_checkpointing = False
        #: Target index -> its ordinal soft target (``set_ordinal_targets``; training only).
        self.ordinal: dict[int, OrdinalTarget] = {}
        #: Set by ``compile_trunk``; the decoder mask backend follows it under "auto".
        self._compiled = False
        self._trunk = self.trunk
        if init:  # skipped when every weight is loaded next (truncated normals are slow)
            self.reset_parameters()
        if cfg.tie_modality_emb:
            self.queries.modality = TiedModalityEmbedding(  # type: ignore[assignment]
                self.queries.modality, self.inputs.modality, self.specs
            )

    def set_ordinal_targets(self, targets: Mapping[str, OrdinalTarget]) -> None:
        """Train these target modalities against Gaussians over neighbouring FSQ levels
        (``model.ordinal``) instead of the exact code; the others keep plain cross-entropy."""
        ordinal: dict[int, OrdinalTarget] = {}
        for name, t in targets.items():
            j = self.specs.target_index(name)
            if self.specs.targets[j].vocab != t.vocab:
                raise ValueError(
                    f"ordinal target of {name} has {t.vocab} codes, its head {self.specs.targets[j].vocab}"
                )
            ordinal[j] = t
        self.ordinal = ordinal

    # ------------------------------------------------------------------ init / io

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """``config.json`` + ``model.safetensors`` (fp32 weights as held)."""
        from terraloom.storage.files import save_safetensors

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"model": to_dict(self.cfg)}, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_safetensors(
            state,
            str(d / "model.safetensors"),
            metadata={"format": "terraloom-model", "version": "1"},
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
    ) -> TerraloomModel:
        from safetensors.torch import load_file

        d = Path(directory)
        meta = json.loads((d / "config.json").read_text())
        cfg = from_dict(ModelConfig, meta.get("model", meta))
        model = cls(cfg, init=False)
        model.load_state_dict(
            load_file(str(d / "model.safetensors"), device=str(map_location)), strict=True
        )
        return model.to(map_location)

    def compile_trunk(self, **kwargs: Any) -> None:
        """``torch.compile`` the static-shape encoder-decoder stack."""
        self._compiled = True
        self._trunk = torch.compile(self.trunk, **kwargs)  # type: ignore[assignment]

    # ------------------------------------------------------------------ masks

    def _dec_mode(self, device: torch.device) -> str:
        mode = self.cfg.dec_attn
        if mode == "auto":
            mode = (
                "flex"
                if (device.type == "cuda" and self._compiled and flex_attention is not None)
                else "dense"
            )
        return mode

    def segments(self, q: Queries) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) segment id (target modality; padding its own segment) and causal flag."""
        seg = q.mod + len(self.specs.targets) * q.pad.long()
        return seg, self.tgt_is_seq[q.mod] & ~q.pad

    def decoder_mask(self, seg: torch.Tensor, causal: torch.Tensor) -> Mask:
        """Same-segment (and causal inside sequence modalities) decoder self-attention mask.

        Built inside the compiled region (``trunk``) so FlexAttention's block mask is traced
        with the step's tensors instead of guarding on a new closure every step.
        """
        b, n = seg.shape
        if self._dec_mode(seg.device) == "flex":

            def mask_mod(bi: Any, hi: Any, qi: Any, ki: Any) -> Any:
                return (seg[bi, qi] == seg[bi, ki]) & (~causal[bi, qi] | (ki <= qi))

            return create_block_mask(mask_mod, b, None, n, n, device=seg.device)  # type: ignore[misc]
        ar = torch.arange(n, device=seg.device)
        lower = ar[None, :] <= ar[:, None]
        same = seg[:, :, None] == seg[:, None, :]
        return (same & (~causal[:, :, None] | lower))[:, None]

    @staticmethod
    def pad_mask(pad: torch.Tensor, any_pad: bool) -> Mask:
        """(B, 1, 1, N) key-padding mask (True = attend), or None without padding."""
        return (~pad)[:, None, None, :] if any_pad else None

    # ------------------------------------------------------------------ forward

    def trunk(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        enc_mask: Mask,
        y: torch.Tensor | None = None,
        dec_seg: torch.Tensor | None = None,
        dec_causal: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder stack -> context; decoder stack over queries ``y`` (if given)."""
        ckpt = self.activation_checkpointing and self.training
        x = x + emb
        for blk in self.encoder:
            x = checkpoint(blk, x, enc_mask, use_reentrant=False) if ckpt else blk(x, enc_mask)
        ctx = self.context_proj(self.encoder_norm(x)) + emb
        if y is None:
            return ctx, None
        assert dec_seg is not None and dec_causal is not None
        dec_mask = self.decoder_mask(dec_seg, dec_causal)
        for dblk in self.decoder:
            y = (
                checkpoint(dblk, y, ctx, dec_mask, enc_mask, use_reentrant=False)
                if ckpt
                else dblk(y, ctx, dec_mask, enc_mask)
            )
        return ctx, self.decoder_norm(y)

    def forward_encoder(
        self, batch: dict[str, torch.Tensor], any_pad: bool | None = None
    ) -> Encoded:
        """Encode the input tokens of ``batch`` (``enc_*`` and ``pix.*`` entries)."""
        pad = batch["enc_pad"]
        any_pad = bool(pad.any()) if any_pad is None else any_pad
        x, emb = self.inputs(batch)
        ctx, _ = self._trunk(x, emb, self.pad_mask(pad, any_pad))
        return Encoded(ctx, pad, any_pad)

    def decode_hidden(self, enc: Encoded, queries: Queries) -> torch.Tensor:
        y = self.queries(queries.mod, queries.pos, queries.prev)
        enc_mask = self.pad_mask(enc.pad, enc.any_pad)
        dec_mask = self.decoder_mask(*self.segments(queries))
        for dblk in self.decoder:
            y = dblk(y, enc.ctx, dec_mask, enc_mask)
        return self.decoder_norm(y)

    def decode_logits(
        self, enc: Encoded | tuple[torch.Tensor, torch.Tensor], queries: Queries
    ) -> dict[str, torch.Tensor]:
        """Logits per target modality present in ``queries``: name -> (B, N_tgt, V).

        Rows of other modalities (and padding) in a modality's tensor are meaningless;
        callers select with ``queries.mod == index``. For generation (MaskGIT / TiM).
        """
        if not isinstance(enc, Encoded):
            ctx, pad = enc
            enc = Encoded(ctx, pad, bool(pad.any()))
        h = self.decode_hidden(enc, queries)
        present = torch.unique(queries.mod[~queries.pad]).tolist()
        return {self.specs.targets[j].modality: self.heads[j](h) for j in present}

    def loss(
        self,
        batch: dict[str, torch.Tensor],
        *,
        enc_any_pad: bool | None = None,
        global_count: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> LossOutput:
        """:meth:`forward` as a :class:`LossOutput`."""
        return LossOutput(
            *self(batch, enc_any_pad=enc_any_pad, global_count=global_count, scale=scale)
        )

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        *,
        enc_any_pad: bool | None = None,
        global_count: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, per-modality summed CE, per-modality counts): mean over modalities of the per-modality mean cross-entropy.

        ``global_count`` (M_t,) are the token counts per modality over all data-parallel
        ranks and ``scale`` the world size: each rank then returns its share of the global
        loss (times the world size, which DDP's gradient averaging divides out), so a DDP
        step equals a single-process step on the same global batch.
        """
        pad = batch["enc_pad"]
        any_pad = bool(pad.any()) if enc_any_pad is None else enc_any_pad
        q = Queries.from_batch(batch)
        x, emb = self.inputs(batch)
        y = self.queries(q.mod, q.pos, q.prev)
        _, h = self._trunk(x, emb, self.pad_mask(pad, any_pad), y, *self.segments(q))
        assert h is not None
        h = h.reshape(-1, h.shape[-1])
        labels = batch["tgt_ids"].reshape(-1)
        sums = []
        for j, t in enumerate(self.specs.targets):
            head: nn.Linear = self.heads[j]  # type: ignore[assignment]
            idx = batch[f"tgt_idx.{t.modality}"]
            if idx.numel() == 0:  # keep the head in the graph with a zero gradient (DDP)
                sums.append(0.0 * head.weight.sum().float())
                continue
            logits = head(h.index_select(0, idx))
            if j in self.ordinal:
                sums.append(
                    ordinal_cross_entropy(logits, labels.index_select(0, idx), self.ordinal[j])
                )
                continue
            sums.append(
                F.cross_entropy(logits.float(), labels.index_select(0, idx), reduction="sum")
            )
        mod_sum = torch.stack(sums)
        count = batch["tgt_count"].to(mod_sum.device)
        norm = (global_count if global_count is not None else count).to(
            mod_sum.device, mod_sum.dtype
        )
        present = (norm > 0).to(mod_sum.dtype)
        loss = (mod_sum / norm.clamp(min=1) * present).sum() / present.sum().clamp(min=1) * scale
        return loss, mod_sum.detach(), count

    # ------------------------------------------------------------------ accounting

    def block_params(self) -> tuple[int, int]:
        """Parameters of the encoder and decoder stacks (the anchors' FLOP convention)."""
        enc = sum(p.numel() for p in self.encoder.parameters())
        dec = sum(p.numel() for p in self.decoder.parameters())
        return enc, dec

    def train_flops(
        self,
        batch_size: int,
        n_in: int,
        n_tgt: int,
        tgt_count: torch.Tensor | None = None,
        pixel_tokens: int = 0,
        seg_sq: float | None = None,
    ) -> float:
        """Model FLOPs of one training step (6 x multiply-adds of all matmuls).

        Counts linear layers, attention scores/values (decoder self-attention over the
        same-modality segments: ``seg_sq`` = mean over samples of sum of squared segment
        sizes; all N_tgt^2 if unknown), the context projection, patch embeddings and output
        heads for the tokens actually routed to each head. Embedding gathers are free.
        """
        c = self.cfg
        d, hdim = c.dim, c.hidden
        mlp = (3 if c.mlp == "swiglu" else 2) * d * hdim
        seg = float(n_tgt * n_tgt) if seg_sq is None else seg_sq
        enc = c.enc_depth * (n_in * (4 * d * d + mlp) + 2 * n_in * n_in * d)
        dec = c.dec_depth * (
            n_tgt * (6 * d * d + mlp) + n_in * 2 * d * d + 2 * seg * d + 2 * n_tgt * n_in * d
        )
        per_sample = enc + dec + n_in * d * d
        heads = 0.0
        if tgt_count is not None:
            for j, t in enumerate(self.specs.targets):
                heads += float(tgt_count[j]) * d * t.vocab
        else:
            heads = batch_size * n_tgt * d * max(t.vocab for t in self.specs.targets)
        patch = 0.0
        if pixel_tokens:
            patch = pixel_tokens * d * max(s.patch_dim for s in self.specs.inputs)
        return 6.0 * (batch_size * per_sample + heads + patch)
