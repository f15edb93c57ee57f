"""The tokenizer contract shared by training, the encode job, the model and generation.

Every tokenizer takes *stored* values (what the corpus holds: S2 DN, S1 dB, DEM metres,
NDVI, LULC legend values, GEO degrees, caption text) and does its own normalisation,
so callers never need to know a modality's statistics.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

TOKENIZER_FORMAT_VERSION = 1


@runtime_checkable
class ImageTokenizer(Protocol):
    """FSQ-VAE tokenizer of an image modality (S2L2A, S1GRD, S1RTC, DEM, NDVI, LULC)."""

    modality: str
    vocab_size: int
    patch_size: int
    #: Stable identity of the weights: ``{"id": ..., "version": ..., "sha256": ...}``.
    identity: dict[str, str]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) stored values (NaN = nodata) -> (B, H/16, W/16) int64 codes."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 codes -> (B, C, 16h, 16w) float32 stored values.

        LULC returns legend values (argmax of the class logits) as float32.
        """
        ...

    def to(self, device: torch.device | str) -> ImageTokenizer: ...


@runtime_checkable
class SequenceTokenizer(Protocol):
    """GEO (lat/lon bins) and CAPTION (WordPiece) tokenizers."""

    modality: str
    vocab_size: int
    identity: dict[str, str]

    def encode_batch(self, values: object, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Values (GEO: (B, 2) lat/lon float; CAPTION: list of str) -> (ids (B, max_len)
        int64 zero padded, lengths (B,) int64)."""
        ...

    def decode_batch(self, ids: torch.Tensor, lengths: torch.Tensor) -> object:
        """Inverse of ``encode_batch``: GEO -> (B, 2) float64 lat/lon; CAPTION -> list of str."""
        ...
