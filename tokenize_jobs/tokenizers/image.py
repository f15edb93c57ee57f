"""FSQ-VAE image tokenizers: the model, its config, the stored <-> model space maps, the
losses, and the :class:`FSQImageTokenizer` wrapper that implements the
``ImageTokenizer`` protocol on *stored* values.

Continuous modalities (S2L2A, S1GRD, S1RTC, DEM, NDVI) are normalised with the
modality's mean/std, nodata becomes 0 and is excluded from the L1 + MSE loss. LULC is
fed as a one-hot over the model class indices and decoded from class logits with
cross-entropy; nodata is ignored. The normalisation travels in the config, so a
tokenizer keeps working if the registry's statistics change later.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from terraloom.schemas.modalities import (
    LULC_CLASSES,
    PATCH_PX,
    TokenizerKind,
    get_modality,
    lulc_to_index,
)
from terraloom.tokenize_jobs.protocol import TOKENIZER_FORMAT_VERSION
from terraloom.tokenize_jobs.tokenizers.compand import Compander
from terraloom.tokenize_jobs.tokenizers.fsq import FSQ
from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig, Encoder, build_decoder

IGNORE_INDEX = 255
"""Class target of nodata / unknown legend values (ignored by the loss and metrics)."""


#: Per-modality FSQ channel grouping (see :func:`group_levels`). A patch's level must be
#: nearly exact to beat the patch-mean baseline, and 8 levels per channel are far too
#: coarse for it. DEM: one 15,360-level elevation scalar (sub-metre steps over its range
#: instead of 440 m; its shape inside a patch comes from the neighbours' levels). NDVI and
#: S1 (whose two bands move together): a 3,072-level scalar for the level and a 5-level
#: channel for the rest (NDVI's main shape inside the patch, S1's second component).
#: S2L2A, whose patch means have three strong principal components: (64, 8, 30) levels.
#: LULC keeps the plain [7, 5, 5, 5, 5].
DEFAULT_FSQ_GROUPS: dict[str, tuple[int, ...]] = {
    "DEM": (5,),
    "NDVI": (4, 1),
    "S1GRD": (4, 1),
    "S1RTC": (4, 1),
    "S2L2A": (2, 1, 2),
}


def group_levels(levels: tuple[int, ...], groups: tuple[int, ...]) -> tuple[int, ...]:
    """Levels of grouped FSQ scalars: ``(8, 8, 8, 6, 5)`` with groups ``(3, 1, 1)`` ->
    ``(512, 6, 5)``.

    Grouping consecutive channels (least significant first) leaves the code index
    unchanged: the mixed-radix index over the grouped levels equals the one over the
    original levels, so the vocabulary, the ids and their round trips are the same
    15,360 codes; only the encoder's continuous latent has fewer, finer dimensions.
    """
    if not groups:
        return tuple(levels)
    if min(groups) < 1 or sum(groups) != len(levels):
        raise ValueError(
            f"FSQ groups {groups} must be positive and cover the {len(levels)} levels {levels}"
        )
    out, i = [], 0
    for g in groups:
        out.append(math.prod(levels[i : i + g]))
        i += g
    return tuple(out)


@dataclass(frozen=True)
class FSQVAEConfig:
    """Everything that defines an image tokenizer's behaviour (hashed into its version)."""

    modality: str
    kind: str
    levels: tuple[int, ...]
    in_channels: int
    out_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: Stored nodata value; NaN for float modalities, None when every value is data.
    nodata: float | None
    value_range: tuple[float, float]
    #: Class legend values in model index order (LULC); empty for continuous modalities.
    classes: tuple[int, ...] = ()
    net: ConvNetConfig = field(default_factory=ConvNetConfig)
    decoder: str = "conv"
    patch_size: int = PATCH_PX
    #: Consecutive FSQ channels quantised jointly as one scalar with the product of their
    #: levels (empty: one scalar per channel). See :func:`group_levels`.
    fsq_groups: tuple[int, ...] = ()
    #: Knots of the compander in front of the quantiser (0: none). See
    #: ``tokenize_jobs.tokenizers.compand``; fitted by the linear start.
    compand_knots: int = 0

    def __post_init__(self) -> None:
        group_levels(self.levels, self.fsq_groups)  # validates
        if self.compand_knots and (self.compand_knots < 2 or self.is_classes):
            raise ValueError("compand_knots must be 0 or >= 2, and 0 for class maps")

    @classmethod
    def for_modality(
        cls,
        modality: str,
        net: ConvNetConfig | None = None,
        decoder: str = "conv",
        fsq_groups: tuple[int, ...] | None = None,
        compand_knots: int = 0,
    ) -> FSQVAEConfig:
        """Config of the tokenizer of a registry modality (levels, bands, statistics)."""
        m = get_modality(modality)
        if m.tokenizer not in (TokenizerKind.FSQ_VAE, TokenizerKind.FSQ_VAE_CLASSES):
            raise ValueError(f"{m.name} has no FSQ-VAE image tokenizer (tokenizer: {m.tokenizer})")
        is_classes = m.tokenizer is TokenizerKind.FSQ_VAE_CLASSES
        n_in = m.n_classes if is_classes else m.n_bands
        return cls(
            modality=m.name,
            kind=str(m.tokenizer),
            levels=tuple(m.fsq_levels),
            in_channels=n_in,
            out_channels=n_in,
            mean=tuple(float(v) for v in m.mean),
            std=tuple(float(v) for v in m.std),
            nodata=None if m.nodata is None else float(m.nodata),
            value_range=(float(m.value_range[0]), float(m.value_range[1])),
            classes=tuple(m.classes) if is_classes else (),
            net=net or ConvNetConfig(),
            decoder=decoder,
            patch_size=m.patch_size,
            fsq_groups=DEFAULT_FSQ_GROUPS.get(m.name, ())
            if fsq_groups is None
            else tuple(fsq_groups),
            compand_knots=compand_knots,
        )

    @property
    def is_classes(self) -> bool:
        return self.kind == str(TokenizerKind.FSQ_VAE_CLASSES)

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels)

    @property
    def quant_levels(self) -> tuple[int, ...]:
        """Levels of the scalars the quantiser rounds (the groups' level products)."""
        return group_levels(self.levels, self.fsq_groups)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.nodata is not None and math.isnan(self.nodata):
            d["nodata"] = "nan"
        if not self.compand_knots:
            # tokenizers from before companding keep their config digest (identity)
            d.pop("compand_knots")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FSQVAEConfig:
        d = dict(d)
        net = d.pop("net")
        nodata = d.pop("nodata")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        net_fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in net.items()
        }
        return cls(
            **fields,
            nodata=float(nodata) if nodata is not None else None,
            net=ConvNetConfig(**net_fields),
        )

    def digest(self) -> str:
        """Stable hash of the config: part of the tokenizer's identity version."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def version(self) -> str:
        return f"{TOKENIZER_FORMAT_VERSION}.{self.digest()[:12]}"


class FSQVAE(nn.Module):
    """Encoder -> FSQ -> decoder on model-space tensors."""

    def __init__(self, config: FSQVAEConfig) -> None:
        super().__init__()
        self.config = config
        d = len(config.quant_levels)
        self.encoder = Encoder(config.in_channels, d, config.net)
        self.fsq = FSQ(config.quant_levels)
        self.decoder = build_decoder(config.decoder, d, config.out_channels, config.net)
        self.compander = Compander(d, config.compand_knots) if config.compand_knots else None

    def compand(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) encoder latents -> the latents the quantiser rounds."""
        if self.compander is None:
            return z
        return self.compander(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d, h, w) encoder latents -> quantised (B, d, h, w) and indices (B, h, w)."""
        return self._round(self.compand(z))

    def _round(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FSQ on (B, d, h, w) companded latents."""
        z_q, idx = self.fsq(z.permute(0, 2, 3, 1))
        return z_q.permute(0, 3, 1, 2).contiguous(), idx

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model-space input -> (model-space output, code indices, latents as the
        quantiser sees them, i.e. companded)."""
        z = self.compand(self.encoder(x))
        z_q, idx = self._round(z)
        return self.decode_codes(z_q.to(x.dtype)), idx, z

    def decode_codes(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) quantised codes -> model-space output."""
        if not self.config.net.linear_paths:
            return self.decoder.decode(z_q)
        low_in = self.fsq.unbound(z_q.permute(0, 2, 3, 1))
        if self.compander is not None:
            low_in = self.compander.inverse(low_in)
        return self.decoder.decode(z_q, low_in.permute(0, 3, 1, 2).to(z_q.dtype))

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.encoder(x))[1]

    def decode_indices(self, idx: torch.Tensor) -> torch.Tensor:
        # Same values and memory layout as the training path, so decode(encode(x)) is
        # bit-identical to the forward pass.
        z_q = self.fsq.indices_to_codes(idx).permute(0, 3, 1, 2).contiguous()
        return self.decode_codes(z_q)


# --------------------------------------------------------------------------- spaces


@dataclass
class ModelBatch:
    """Stored values mapped to model space.

    ``inputs`` feed the encoder; ``target`` is what the decoder should produce
    (normalised values, or class indices with ``IGNORE_INDEX`` for nodata); ``mask``
    marks the target elements that count in the loss.
    """

    inputs: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor


def _channel_view(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)


def valid_mask(x: torch.Tensor, nodata: float | None) -> torch.Tensor:
    """True where a stored value is data (finite and not the nodata value)."""
    mask = torch.isfinite(x)
    if nodata is not None and not math.isnan(nodata):
        mask &= x != nodata
    return mask


@functools.lru_cache(maxsize=8)
def _class_lut(classes: tuple[int, ...]) -> torch.Tensor:
    """Legend value (0..255) -> model index; the registry legend goes through the
    registry's own ``lulc_to_index`` so both can never disagree."""
    if classes == LULC_CLASSES:
        return torch.from_numpy(lulc_to_index(np.arange(256)).astype(np.int64))
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    lut[list(classes)] = torch.arange(len(classes))
    return lut


def class_index(x: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) legend values -> (B, H, W) int64 model indices (255 = ignore)."""
    if x.dim() == 4:
        x = x[:, 0]
    xf = x.float()
    legal = torch.isfinite(xf) & (xf >= 0) & (xf <= 255)
    v = torch.where(legal, xf, torch.zeros_like(xf)).round().long()
    lut = _class_lut(tuple(classes)).to(x.device)
    return torch.where(legal, lut[v], torch.full_like(v, IGNORE_INDEX))


def to_model_space(config: FSQVAEConfig, x: torch.Tensor) -> ModelBatch:
    """(B, C, H, W) stored values -> :class:`ModelBatch`."""
    if config.is_classes:
        target = class_index(x, config.classes)
        ok = target != IGNORE_INDEX
        onehot = F.one_hot(torch.where(ok, target, 0), config.in_channels).permute(0, 3, 1, 2)
        inputs = onehot.float() * ok.unsqueeze(1)
        return ModelBatch(inputs, target, ok)
    xf = x.float()
    mask = valid_mask(xf, config.nodata)
    norm = (xf - _channel_view(config.mean, xf)) / _channel_view(config.std, xf)
    norm = torch.where(mask, norm, torch.zeros_like(norm))
    return ModelBatch(norm, norm, mask)


def from_model_space(config: FSQVAEConfig, out: torch.Tensor) -> torch.Tensor:
    """Decoder output -> (B, C, H, W) float32 stored values (LULC: legend values)."""
    out = out.float()
    if config.is_classes:
        legend = torch.tensor(config.classes, dtype=torch.float32, device=out.device)
        return legend[out.argmax(dim=1)].unsqueeze(1)
    x = out * _channel_view(config.std, out) + _channel_view(config.mean, out)
    return x.clamp(config.value_range[0], config.value_range[1])


def reconstruction_loss(
    config: FSQVAEConfig,
    out: torch.Tensor,
    batch: ModelBatch,
    band_weights: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """L1 + MSE over valid elements (continuous) or cross-entropy (classes)."""
    out = out.float()
    if config.is_classes:
        if not bool(batch.mask.any()):
            return out.sum() * 0.0
        return F.cross_entropy(out, batch.target, ignore_index=IGNORE_INDEX)
    diff = out - batch.target
    per = diff.abs() + diff.square()
    weight = batch.mask.float()
    if band_weights is not None:
        if len(band_weights) != config.out_channels:
            raise ValueError(f"{len(band_weights)} band weights for {config.out_channels} bands")
        weight = weight * _channel_view(tuple(band_weights), out)
    return (per * weight).sum() / weight.sum().clamp_min(1.0)


# --------------------------------------------------------------------------- wrapper


class FSQImageTokenizer:
    """An FSQ-VAE behind the ``ImageTokenizer`` protocol (stored values in and out).

    Batch-first, runs on the device it was moved to, in float32 and eval mode, without
    gradients, so the same pixels always give the same codes.
    """

    def __init__(self, model: FSQVAE, identity: dict[str, str] | None = None) -> None:
        self.model = model.eval()
        self.config = model.config
        self.modality = self.config.modality
        self.vocab_size = self.config.vocab_size
        self.patch_size = self.config.patch_size
        self.identity = identity or {
            "id": f"{self.modality}-fsqvae",
            "version": self.config.version,
            "sha256": "",
        }

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> FSQImageTokenizer:
        self.model.to(device)
        return self

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        want = 1 if self.config.is_classes else self.config.in_channels
        if pixels.dim() != 4 or pixels.shape[1] != want:
            raise ValueError(
                f"{self.modality} tokenizer expects (B, {want}, H, W) stored values, "
                f"got shape {tuple(pixels.shape)}"
            )
        h, w = pixels.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"H and W must be multiples of {self.patch_size}, got {h} x {w}")

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, C, H, W) stored values (NaN = nodata) -> (B, H/16, W/16) int64 codes."""
        pixels = torch.as_tensor(pixels)
        self._check_pixels(pixels)
        batch = to_model_space(self.config, pixels.to(self.device))
        return self.model.encode_indices(batch.inputs)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, h, w) int64 codes -> (B, C, 16h, 16w) float32 stored values."""
        codes = torch.as_tensor(codes)
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B, h, w), got shape {tuple(codes.shape)}")
        out = self.model.decode_indices(codes.to(self.device).long())
        return from_model_space(self.config, out)

    @torch.no_grad()
    def decode_expected(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, h, w, V) distributions over the codes -> (B, C, 16h, 16w) stored values.

        Decodes the *expected* latent under each position's distribution (the quantised
        code vector, and the linear path's level, averaged with the probabilities) instead
        of one code. FSQ codes are ordinal, so where a generator is unsure among neighbouring
        levels the mean level is the least-squares answer, whereas one code drawn or
        argmax-ed from a flat distribution puts an arbitrary level and texture in each
        patch: a checkerboard at the patch period. A one-hot distribution decodes exactly
        like :meth:`decode`.
        """
        if probs.dim() != 4 or probs.shape[-1] != self.vocab_size:
            raise ValueError(
                f"probs must be (B, h, w, {self.vocab_size}), got shape {tuple(probs.shape)}"
            )
        vae = self.model
        p = probs.to(self.device).float()
        codes = vae.fsq.indices_to_codes(torch.arange(self.vocab_size, device=self.device))
        z_q = (p @ codes).permute(0, 3, 1, 2).contiguous()
        if not self.config.net.linear_paths:
            return from_model_space(self.config, vae.decoder.decode(z_q))
        low = vae.fsq.unbound(codes)
        if vae.compander is not None:
            low = vae.compander.inverse(low)
        low_in = (p @ low).permute(0, 3, 1, 2).contiguous()
        return from_model_space(self.config, vae.decoder.decode(z_q, low_in))

    def reconstruct(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.decode(self.encode(pixels))
