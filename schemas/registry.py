"""The modality registry: one :class:`Modality` per corpus modality, the single source of truth,
and the lookups by name, scale and layout.

A data table (``REGISTRY``) and its lookups: one idea. The types are in
:mod:`terraloom.schemas.modality_types`, the legends in :mod:`terraloom.schemas.legends`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from terraloom.schemas.legends import LULC_CLASS_NAMES, LULC_CLASSES, LULC_COLORS
from terraloom.schemas.modality_types import (
    Band,
    Display,
    DisplayKind,
    Layout,
    Modality,
    Resampling,
    Scale,
    TokenizerKind,
)
from terraloom.schemas.reflectance import S2_BOA_OFFSET, S2_DN_SCALE

__all__ = [
    "CAPTION_MAX_BYTES",
    "CAPTION_VOCAB",
    "FSQ_IMAGE_LEVELS",
    "FSQ_LULC_LEVELS",
    "GEO_BIN_DEG",
    "GEO_VOCAB",
    "MODALITY_NAMES",
    "REGISTRY",
    "UnknownModalityError",
    "get_modality",
    "modalities",
]


def _s2_bands(with_b10: bool) -> tuple[Band, ...]:
    spec = [
        ("B01", "coastal", "coastal", 60.0),
        ("B02", "blue", "blue", 10.0),
        ("B03", "green", "green", 10.0),
        ("B04", "red", "red", 10.0),
        ("B05", "rededge", "rededge1", 20.0),
        ("B06", "rededge", "rededge2", 20.0),
        ("B07", "rededge", "rededge3", 20.0),
        ("B08", "nir", "nir", 10.0),
        ("B8A", "nir08", "nir08", 20.0),
        ("B09", "nir09", "nir09", 60.0),
        ("B10", "cirrus", "cirrus", 60.0),
        ("B11", "swir16", "swir16", 20.0),
        ("B12", "swir22", "swir22", 20.0),
    ]
    return tuple(
        Band(name, common, name, es_key, res)
        for name, common, es_key, res in spec
        if with_b10 or name != "B10"
    )


def _s2_display() -> Display:
    """True colour over reflectance 0..0.3 (DN 1000..4000: the products of processing
    baseline 04.00 on carry the +1000 DN offset the corpus keeps)."""
    lo = -S2_BOA_OFFSET * S2_DN_SCALE
    return Display(
        DisplayKind.RGB,
        ("B04", "B03", "B02"),
        lo,
        lo + 0.3 * S2_DN_SCALE,
        gamma=1.4,
        label="B04 B03 B02, 1000-4000 DN",
    )


def _s1_display() -> Display:
    return Display(DisplayKind.SCALAR, ("VV",), -25.0, 0.0, "gray", label="VV backscatter (dB)")


FSQ_IMAGE_LEVELS = (8, 8, 8, 6, 5)
FSQ_LULC_LEVELS = (7, 5, 5, 5, 5)
GEO_BIN_DEG = 0.25
GEO_VOCAB = int(180 / GEO_BIN_DEG) + int(360 / GEO_BIN_DEG)  # lat bins then lon bins
CAPTION_MAX_BYTES = 512
CAPTION_VOCAB = 8192


def _prod(levels: tuple[int, ...]) -> int:
    return int(np.prod(levels))


def _s2(level: str, description: str, **fields: Any) -> Modality:
    """A Sentinel-2 product: L1C and L2A share the DN storage, the 10 m bilinear grid and the
    true-colour display; each brings its statistics, its scales and tokenizer (``fields``)."""
    return Modality(
        name=f"S2{level}",
        description=description,
        collections=(f"sentinel-2-{level.lower()}",),
        bands=_s2_bands(with_b10=level == "L1C"),
        dtype="uint16",
        nodata=0,
        native_resolution_m=10.0,
        resampling=Resampling.BILINEAR,
        value_range=(0, 65535),
        display=_s2_display(),
        **fields,
    )


def _s1(
    name: str, description: str, mean: tuple[float, float], std: tuple[float, float]
) -> Modality:
    """A Sentinel-1 product: GRD and RTC differ only in geometry (name, collection,
    description) and in their statistics; both are VV/VH dB at 10 m, tokenized alike."""
    return Modality(
        name=name,
        description=description,
        collections=(f"sentinel-1-{name[2:].lower()}",),
        bands=(Band("VV", "vv", "vv", "vv", 10.0), Band("VH", "vh", "vh", "vh", 10.0)),
        dtype="float16",
        nodata=float("nan"),
        native_resolution_m=10.0,
        resampling=Resampling.BILINEAR_POWER_DB,
        value_range=(-50.0, 30.0),
        mean=mean,
        std=std,
        scales=Scale.BOTH,
        tokenizer=TokenizerKind.FSQ_VAE,
        vocab_size=_prod(FSQ_IMAGE_LEVELS),
        fsq_levels=FSQ_IMAGE_LEVELS,
        display=_s1_display(),
    )


REGISTRY: tuple[Modality, ...] = (
    _s2(
        "L1C",
        "Sentinel-2 Level-1C top-of-atmosphere reflectance, 13 bands",
        mean=(
            2357.1,
            2137.4,
            2018.8,
            2083.0,
            2295.7,
            2854.5,
            3122.8,
            3040.6,
            3306.5,
            1473.8,
            506.1,
            2472.8,
            1838.9,
        ),
        std=(
            1624.7,
            1675.8,
            1557.7,
            1833.7,
            1823.7,
            1734.0,
            1732.1,
            1679.7,
            1727.3,
            1024.7,
            442.2,
            1331.4,
            1160.4,
        ),
        scales=Scale.PIXELS,
        tokenizer=None,
        vocab_size=None,
    ),
    _s2(
        "L2A",
        "Sentinel-2 Level-2A surface reflectance, 12 bands (no B10)",
        mean=(
            1390.5,
            1503.3,
            1718.2,
            1853.9,
            2199.1,
            2780.0,
            2987.0,
            3083.2,
            3132.2,
            3163.0,
            2424.9,
            1857.6,
        ),
        std=(
            2106.8,
            2141.1,
            2039.0,
            2134.1,
            2085.3,
            1889.9,
            1820.3,
            1871.9,
            1753.8,
            1797.4,
            1434.3,
            1334.3,
        ),
        scales=Scale.BOTH,
        tokenizer=TokenizerKind.FSQ_VAE,
        vocab_size=_prod(FSQ_IMAGE_LEVELS),
        fsq_levels=FSQ_IMAGE_LEVELS,
        extra={"scl_asset": "SCL", "es_scl_asset": "scl"},
    ),
    Modality(
        name="S2RGB",
        description="True colour from S2L2A B04/B03/B02, per-sample 2-98% stretch",
        collections=(),
        bands=(Band("red", "red"), Band("green", "green"), Band("blue", "blue")),
        dtype="uint8",
        nodata=None,
        native_resolution_m=None,
        resampling=Resampling.DERIVED,
        value_range=(0, 255),
        mean=(87.27, 80.93, 66.67),
        std=(58.77, 47.66, 42.63),
        scales=Scale.PIXELS,
        tokenizer=None,
        vocab_size=None,
        derived_from=("S2L2A",),
        display=Display(DisplayKind.RGB, ("red", "green", "blue"), 0.0, 255.0, label="true colour"),
    ),
    _s1(
        "S1GRD",
        "Sentinel-1 GRD backscatter (sigma0) in dB, radar geometry georeferenced by GCPs",
        mean=(-12.60, -20.29),
        std=(5.20, 5.89),
    ),
    _s1(
        "S1RTC",
        "Sentinel-1 radiometrically terrain corrected backscatter (gamma0) in dB, UTM",
        mean=(-10.93, -17.33),
        std=(4.39, 4.46),
    ),
    Modality(
        name="DEM",
        description="Copernicus DEM GLO-30 elevation in metres above the EGM2008 geoid",
        collections=("cop-dem-glo-30",),
        bands=(Band("elevation", None, "data", "data", 30.0),),
        dtype="float32",
        nodata=float("nan"),
        native_resolution_m=30.0,
        resampling=Resampling.BILINEAR,
        value_range=(-500.0, 9000.0),
        mean=(670.7,),
        std=(951.3,),
        scales=Scale.BOTH,
        tokenizer=TokenizerKind.FSQ_VAE,
        vocab_size=_prod(FSQ_IMAGE_LEVELS),
        fsq_levels=FSQ_IMAGE_LEVELS,
        vertical_datum="EGM2008",
        display=Display(
            DisplayKind.SCALAR,
            ("elevation",),
            cmap="terrain",
            cmap_span=(0.25, 1.0),
            label="elevation (m)",
        ),
    ),
    Modality(
        name="LULC",
        description="Esri 10 m land use / land cover, 9 classes + nodata 0",
        collections=("io-lulc-9-class",),
        bands=(Band("class", None, "data", "data", 10.0),),
        dtype="uint8",
        nodata=0,
        native_resolution_m=10.0,
        resampling=Resampling.NEAREST,
        value_range=(0, 11),
        mean=(0.0,),
        std=(1.0,),
        scales=Scale.TOKENS,
        tokenizer=TokenizerKind.FSQ_VAE_CLASSES,
        vocab_size=_prod(FSQ_LULC_LEVELS),
        fsq_levels=FSQ_LULC_LEVELS,
        classes=LULC_CLASSES,
        class_names=LULC_CLASS_NAMES,
        display=Display(
            DisplayKind.CLASSES,
            ("class",),
            classes=tuple(
                (v, n, LULC_COLORS[v]) for v, n in zip(LULC_CLASSES, LULC_CLASS_NAMES, strict=True)
            ),
        ),
    ),
    Modality(
        name="NDVI",
        description="Normalised difference vegetation index from S2L2A (B08-B04)/(B08+B04)",
        collections=(),
        bands=(Band("ndvi"),),
        dtype="float16",
        nodata=float("nan"),
        native_resolution_m=None,
        resampling=Resampling.DERIVED,
        value_range=(-1.0, 1.0),
        mean=(0.41,),
        std=(0.30,),
        scales=Scale.TOKENS,
        tokenizer=TokenizerKind.FSQ_VAE,
        vocab_size=_prod(FSQ_IMAGE_LEVELS),
        fsq_levels=FSQ_IMAGE_LEVELS,
        derived_from=("S2L2A",),
        display=Display(DisplayKind.SCALAR, ("ndvi",), -0.2, 0.9, "RdYlGn", label="NDVI"),
    ),
    Modality(
        name="GEO",
        description="Sample centre latitude and longitude (EPSG:4326 degrees)",
        collections=(),
        bands=(Band("lat"), Band("lon")),
        dtype="float64",
        nodata=float("nan"),
        native_resolution_m=None,
        resampling=Resampling.DERIVED,
        value_range=(-180.0, 180.0),
        mean=(0.0, 0.0),
        std=(90.0, 180.0),
        scales=Scale.TOKENS,
        tokenizer=TokenizerKind.GEO_BINS,
        vocab_size=GEO_VOCAB,
        layout=Layout.VECTOR,
        length=2,
    ),
    Modality(
        name="CAPTION",
        description="Caption derived from land-cover, elevation, NDVI and season statistics",
        collections=(),
        bands=(Band("text"),),
        dtype="uint8",
        nodata=0,
        native_resolution_m=None,
        resampling=Resampling.DERIVED,
        value_range=(0, 255),
        mean=(0.0,),
        std=(1.0,),
        scales=Scale.TOKENS,
        tokenizer=TokenizerKind.WORDPIECE,
        vocab_size=CAPTION_VOCAB,
        layout=Layout.TEXT,
        length=CAPTION_MAX_BYTES,
        derived_from=("LULC", "DEM", "NDVI"),
    ),
)

_BY_NAME = {m.name.upper(): m for m in REGISTRY}
MODALITY_NAMES: tuple[str, ...] = tuple(m.name for m in REGISTRY)


class UnknownModalityError(KeyError):
    """Raised for a modality name not in the registry; the message lists valid names."""

    def __str__(self) -> str:  # KeyError quotes its arg; keep the message readable
        return str(self.args[0])


def get_modality(name: str | Modality) -> Modality:
    """Look a modality up by name, case-insensitively."""
    if isinstance(name, Modality):
        return name
    try:
        return _BY_NAME[name.strip().upper()]
    except KeyError:
        raise UnknownModalityError(
            f"unknown modality {name!r}; valid names: {', '.join(MODALITY_NAMES)}"
        ) from None


def modalities(
    *, pixels: bool | None = None, tokens: bool | None = None, layout: Layout | None = None
) -> tuple[Modality, ...]:
    """Registry entries filtered by scale and layout, in registry order."""
    out = []
    for m in REGISTRY:
        if pixels is not None and m.has_pixels != pixels:
            continue
        if tokens is not None and m.has_tokens != tokens:
            continue
        if layout is not None and m.layout is not layout:
            continue
        out.append(m)
    return tuple(out)
