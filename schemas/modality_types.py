"""The shape of a modality: the frozen dataclasses and enums the registry is made of.

One idea: what a modality *is* (bands, dtype, nodata, resampling, scales, tokenizer,
display, normalisation) as types; the values live in :mod:`terraloom.schemas.registry`.
Every stage reads these fields instead of sniffing strings, so adding or changing a
modality is a one-place edit (ml-4m's string-keyed ``MODALITY_INFO`` is the counter-example
we avoid).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CROP_PX",
    "PATCH_PX",
    "RESOLUTION_M",
    "SAMPLE_PX",
    "Band",
    "Display",
    "DisplayKind",
    "Layout",
    "Modality",
    "Resampling",
    "Scale",
    "TokenizerKind",
]

SAMPLE_PX = 264
"""Side of a corpus sample in pixels (TerraMesh: 264 x 264 px at 10 m)."""
RESOLUTION_M = 10.0
"""Ground sampling distance of the common grid every modality is co-registered onto."""
CROP_PX = 224
"""Side of the model/tokenizer input crop cut from a sample."""
PATCH_PX = 16
"""Patch size of pixel embeddings and image tokenizers (one token per 16 x 16 px)."""


class Resampling(enum.StrEnum):
    """How a modality is brought onto the 10 m grid."""

    BILINEAR = "bilinear"
    CUBIC = "cubic"
    #: Bilinear in linear power, then converted to dB (SAR backscatter).
    BILINEAR_POWER_DB = "bilinear_power_db"
    NEAREST = "nearest"
    MODE = "mode"
    #: Derived on the 10 m grid from other modalities; never resampled.
    DERIVED = "derived"


class Scale(enum.Flag):
    """At which scale a modality enters the model."""

    PIXELS = enum.auto()
    TOKENS = enum.auto()
    BOTH = PIXELS | TOKENS


class TokenizerKind(enum.StrEnum):
    FSQ_VAE = "fsq_vae"  # continuous image -> FSQ codes
    FSQ_VAE_CLASSES = "fsq_vae_classes"  # one-hot classes -> FSQ codes
    GEO_BINS = "geo_bins"  # deterministic lat/lon bins
    WORDPIECE = "wordpiece"  # text


class Layout(enum.StrEnum):
    """Shape family of a modality's stored array."""

    IMAGE = "image"  # (sample, band, y, x)
    VECTOR = "vector"  # (sample, n) numbers, e.g. GEO lat/lon
    TEXT = "text"  # (sample, bytes) utf-8, zero padded


@dataclass(frozen=True)
class Band:
    """One band: its canonical name, STAC common name and asset keys per provider."""

    name: str
    common_name: str | None = None
    #: Asset key on Planetary Computer (and the embedded world).
    asset_key: str | None = None
    #: Asset key on Element84 Earth Search, where it differs.
    es_asset_key: str | None = None
    native_resolution_m: float | None = None


class DisplayKind(enum.StrEnum):
    """How a modality is drawn for people."""

    RGB = "rgb"  # three bands as red, green, blue over one value range
    SCALAR = "scalar"  # one band through a colour map, with a colour bar and unit
    CLASSES = "classes"  # class values in legend colours, with a legend


@dataclass(frozen=True)
class Display:
    """How people see a modality: one fixed stretch per modality, so panels of different
    samples, and a generated image next to its reference, compare by eye (a per-image
    stretch would hide a brightness error). Every renderer (quicklooks, generation panels,
    tokenizer reports) reads it from here.
    """

    kind: DisplayKind
    #: Bands shown: three for RGB, one for SCALAR / CLASSES.
    bands: tuple[str, ...]
    #: Value range mapped onto the colours; ``None``: the data's own range, shared by every
    #: panel of the modality in one figure (elevation spans metres to kilometres).
    vmin: float | None = None
    vmax: float | None = None
    cmap: str = "gray"
    #: Part of the colour map used (the terrain map's blue end is the sea, not low land).
    cmap_span: tuple[float, float] = (0.0, 1.0)
    #: Display gamma of RGB (values ** (1 / gamma) after the stretch).
    gamma: float = 1.0
    #: Colour-bar label with the unit, or the RGB band list.
    label: str = ""
    #: CLASSES: (value, name, (r, g, b)) per class; other values show as nodata.
    classes: tuple[tuple[int, str, tuple[int, int, int]], ...] = ()


@dataclass(frozen=True)
class Modality:
    """A modality of the corpus: where it comes from, how it is stored and modelled."""

    name: str
    description: str
    collections: tuple[str, ...]
    bands: tuple[Band, ...]
    dtype: str
    nodata: float | int | None
    native_resolution_m: float | None
    resampling: Resampling
    value_range: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scales: Scale
    tokenizer: TokenizerKind | None
    vocab_size: int | None
    layout: Layout = Layout.IMAGE
    patch_size: int = PATCH_PX
    derived_from: tuple[str, ...] = ()
    #: FSQ levels of the image tokenizer (product == vocab_size).
    fsq_levels: tuple[int, ...] = ()
    #: Class values (LULC legend) in model index order; empty for continuous modalities.
    classes: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    #: Fixed length of VECTOR / TEXT layouts (values or bytes per sample).
    length: int | None = None
    #: How it is drawn (image layouts); ``None``: shown as text (GEO, CAPTION).
    display: Display | None = None
    #: Vertical datum of stored heights (a :data:`VERTICAL_DATUMS` key); DEM only.
    vertical_datum: str | None = None
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def has_pixels(self) -> bool:
        return bool(self.scales & Scale.PIXELS)

    @property
    def has_tokens(self) -> bool:
        return bool(self.scales & Scale.TOKENS)

    @property
    def is_image(self) -> bool:
        return self.layout is Layout.IMAGE

    @property
    def is_derived(self) -> bool:
        return not self.collections

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(band, y, x) or (sample, band, y, x) stored values -> zero-mean unit-std float32,
        with nodata and non-finite values set to 0.

        The one pixel normaliser of the model's inputs (the training loader's patches and
        generation's pixel conditioning): 0 is the band mean, so a missing pixel adds nothing
        to a patch embedding instead of an extreme value.
        """
        raw = np.asarray(x)
        mean, std = self._band_stats(raw.ndim)
        out = (raw.astype(np.float32) - mean) / std
        bad = ~np.isfinite(out)
        if self.nodata is not None and not (
            isinstance(self.nodata, float) and np.isnan(self.nodata)
        ):
            bad |= raw == self.nodata
        out[bad] = 0.0
        return out

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`normalize` (nodata stays the band mean)."""
        mean, std = self._band_stats(x.ndim)
        return x.astype(np.float32) * std + mean

    def _band_stats(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 arrays broadcasting over (band, y, x) or (sample, band, y, x)."""
        shape = [1] * ndim
        shape[1 if ndim == 4 else 0] = -1
        mean = np.asarray(self.mean, np.float32).reshape(shape)
        std = np.asarray(self.std, np.float32).reshape(shape)
        return mean, std
