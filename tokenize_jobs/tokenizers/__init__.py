"""Tokenizers of every tokenized modality: FSQ-VAE image tokenizers (S2L2A, S1GRD,
S1RTC, DEM, NDVI, LULC), GEO lat/lon bins and the CAPTION WordPiece, with their
save/load format (``config.json`` + weights) and evaluation metrics."""

from __future__ import annotations

from terraloom.tokenize_jobs.tokenizers.caption import CaptionTokenizer, train_wordpiece
from terraloom.tokenize_jobs.tokenizers.fsq import FSQ
from terraloom.tokenize_jobs.tokenizers.geo import GeoTokenizer
from terraloom.tokenize_jobs.tokenizers.image import FSQVAE, FSQImageTokenizer, FSQVAEConfig
from terraloom.tokenize_jobs.tokenizers.io import (
    load_tokenizer,
    read_config,
    save_caption_tokenizer,
    save_geo_tokenizer,
    save_image_tokenizer,
    tokenizer_dir,
)
from terraloom.tokenize_jobs.tokenizers.nets import ConvDecoder, ConvNetConfig, Decoder, Encoder

__all__ = [
    "FSQ",
    "FSQVAE",
    "CaptionTokenizer",
    "ConvDecoder",
    "ConvNetConfig",
    "Decoder",
    "Encoder",
    "FSQImageTokenizer",
    "FSQVAEConfig",
    "GeoTokenizer",
    "load_tokenizer",
    "read_config",
    "save_caption_tokenizer",
    "save_geo_tokenizer",
    "save_image_tokenizer",
    "tokenizer_dir",
    "train_wordpiece",
]
