"""Derived modalities computed on the 10 m grid: S2RGB, NDVI, GEO and the SCL cloud mask.

All functions are pure and take the co-registered float32 arrays (NaN = nodata) of one
sample. :func:`derive` computes every derived modality of the registry that has a
deriver in :data:`DERIVERS` (text modalities come from the captioner), so the sample
builder never names one. Sentinel-2 values arrive harmonised onto the corpus's one DN
convention (``schemas.modalities.S2_STORED_OFFSET_DN``: ``DN = 10000 * reflectance + 1000``,
whatever convention the item was published in), so every deriver reads them the same way;
NDVI, a ratio of reflectances, converts DN to reflectance first, because the +1000 DN
offset would otherwise bias it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terraloom.pipeline.quality import Issue
from terraloom.schemas.modalities import (
    CLOUD_MASK_CLEAR,
    CLOUD_MASK_CLOUD,
    CLOUD_MASK_NODATA,
    CLOUD_MASK_SHADOW,
    REGISTRY,
    S2_DN_SCALE,
    S2_STORED_OFFSET_DN,
    SCL_CLOUD_SHADOW,
    SCL_NODATA,
    Layout,
    get_modality,
    reflectance,
    s2_reflectance_params,
)
from terraloom.schemas.tables import RejectReason

__all__ = [
    "CLOUD_MASK_CLEAR",
    "CLOUD_MASK_CLOUD",
    "CLOUD_MASK_NODATA",
    "CLOUD_MASK_SHADOW",
    "DERIVERS",
    "DeriveInputs",
    "Derived",
    "cloud_fraction",
    "cloud_mask_from_scl",
    "derive",
    "geo_vector",
    "ndvi",
    "reflectance",
    "s2_reflectance_params",
    "s2rgb",
    "sample_cloud",
    "underivable",
    "unsourced",
]

#: SCL classes that are cloud shadow (the rest of SCL_CLOUD_SHADOW is cloud / cirrus).
SCL_SHADOW: tuple[int, ...] = (3,)


def s2rgb(
    red: np.ndarray, green: np.ndarray, blue: np.ndarray, low_q: float = 2.0, high_q: float = 98.0
) -> np.ndarray:
    """True colour (3, H, W) uint8 with one per-sample 2-98 % quantile stretch.

    One stretch for all three bands (quantiles over the pooled valid values) keeps the
    colour balance; a per-band stretch would turn hazy scenes blue. Nodata -> 0.
    """
    stack = np.stack([red, green, blue]).astype(np.float32)
    valid = np.all(np.isfinite(stack), axis=0)
    out = np.zeros(stack.shape, np.uint8)
    if not valid.any():
        return out
    # quantiles do not depend on the order of the values: all valid, no gather
    vals = stack if valid.all() else stack[:, valid]
    lo, hi = np.percentile(vals, [low_q, high_q])
    if not hi > lo:
        hi = lo + 1.0
    scaled = (stack - lo) / (hi - lo) * 255.0
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 255.0)
    out = np.rint(scaled).astype(np.uint8)
    out[:, ~valid] = 0
    return out


def ndvi(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    """(nir - red) / (nir + red) from reflectances, float32 in [-1, 1]; NaN where undefined."""
    nir = nir.astype(np.float32)
    red = red.astype(np.float32)
    den = nir + red
    out = np.full(nir.shape, np.nan, np.float32)
    ok = np.isfinite(den) & (np.abs(den) > 1e-6)
    out[ok] = (nir[ok] - red[ok]) / den[ok]
    return np.clip(out, -1.0, 1.0)


def geo_vector(center_lat: float, center_lon: float) -> np.ndarray:
    """GEO modality: [lat, lon] of the sample centre, float64."""
    return np.array([center_lat, center_lon], np.float64)


def cloud_mask_from_scl(scl: np.ndarray) -> np.ndarray:
    """SCL (float, NaN = nodata) -> uint8 mask: 0 clear, 1 cloud, 2 shadow, 255 nodata."""
    out = np.full(scl.shape, CLOUD_MASK_CLEAR, np.uint8)
    nodata = ~np.isfinite(scl)
    cls = np.where(nodata, SCL_NODATA, scl).astype(np.int32)
    nodata |= cls == SCL_NODATA
    cloud = np.isin(cls, [c for c in SCL_CLOUD_SHADOW if c not in SCL_SHADOW])
    shadow = np.isin(cls, SCL_SHADOW)
    out[cloud] = CLOUD_MASK_CLOUD
    out[shadow] = CLOUD_MASK_SHADOW
    out[nodata] = CLOUD_MASK_NODATA
    return out


def cloud_fraction(mask: np.ndarray) -> float:
    """Cloud + shadow pixels over the pixels with a classification (1.0 if none has one)."""
    valid = mask != CLOUD_MASK_NODATA
    n = int(valid.sum())
    if n == 0:
        return 1.0
    return float(np.count_nonzero((mask == CLOUD_MASK_CLOUD) | (mask == CLOUD_MASK_SHADOW)) / n)


def sample_cloud(
    scl: np.ndarray | None, cloud_cover_pct: float | None, shape: tuple[int, int]
) -> tuple[np.ndarray, float | None]:
    """The cloud mask and cloud fraction of a sample with S2L2A: from its SCL band when
    it was read, else only the fraction, from the scene's ``eo:cloud_cover``."""
    if scl is not None:
        mask = cloud_mask_from_scl(scl)
        return mask, cloud_fraction(mask)
    frac = float(cloud_cover_pct) / 100.0 if cloud_cover_pct is not None else None
    return np.full(shape, CLOUD_MASK_NODATA, np.uint8), frac


# --------------------------------------------------------------------------- derivers


@dataclass(frozen=True)
class DeriveInputs:
    """What one sample's derived modalities are computed from."""

    lat: float
    lon: float
    #: Judged, gap-filled source images (band, y, x) float32 by modality; absent = missing.
    images: Mapping[str, np.ndarray]
    #: The built bands of each source image, in its band order.
    bands: Mapping[str, Sequence[str]]
    #: The S2L2A scene most pixels came from (its values are already harmonised).
    s2_scene: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Derived:
    """Derived modality -> its array (``None``: its sources lack what it needs), and
    the quality figures the derivation measured (``ndvi_mean``)."""

    arrays: dict[str, np.ndarray | None]
    quality: dict[str, float]


def _s2_band(inputs: DeriveInputs, band: str) -> np.ndarray:
    return inputs.images["S2L2A"][list(inputs.bands["S2L2A"]).index(band)]


def _has_s2(inputs: DeriveInputs, bands: set[str]) -> bool:
    return "S2L2A" in inputs.images and bands <= set(inputs.bands.get("S2L2A", ()))


def _ndvi_of(inputs: DeriveInputs) -> tuple[np.ndarray | None, dict[str, float]]:
    if not _has_s2(inputs, {"B04", "B08"}):
        return None, {}
    scale, offset = 1 / S2_DN_SCALE, -S2_STORED_OFFSET_DN / S2_DN_SCALE
    quality: dict[str, float] = {}
    out = ndvi(*(reflectance(_s2_band(inputs, b), scale, offset) for b in ("B08", "B04")))
    if np.isfinite(out).any():
        quality["ndvi_mean"] = float(np.nanmean(out))
    return out[None], quality


def _s2rgb_of(inputs: DeriveInputs) -> tuple[np.ndarray | None, dict[str, float]]:
    if not _has_s2(inputs, {"B04", "B03", "B02"}):
        return None, {}
    red, green, blue = (_s2_band(inputs, b) for b in ("B04", "B03", "B02"))
    return s2rgb(red, green, blue), {}


def _geo_of(inputs: DeriveInputs) -> tuple[np.ndarray | None, dict[str, float]]:
    return geo_vector(inputs.lat, inputs.lon), {}


Deriver = Callable[[DeriveInputs], tuple[np.ndarray | None, dict[str, float]]]
#: The deriver of each derived registry modality (text ones come from the captioner).
DERIVERS: dict[str, Deriver] = {"S2RGB": _s2rgb_of, "NDVI": _ndvi_of, "GEO": _geo_of}


def derive(inputs: DeriveInputs) -> Derived:
    """Every derived, non-text modality of the registry (whether built or not: the
    captioner and the quality figures use them); one without a deriver is ``None``."""
    arrays: dict[str, np.ndarray | None] = {}
    quality: dict[str, float] = {}
    for m in REGISTRY:
        if not m.is_derived or m.layout is Layout.TEXT:
            continue
        fn = DERIVERS.get(m.name)
        arrays[m.name], q = fn(inputs) if fn is not None else (None, {})
        quality.update(q)
    return Derived(arrays, quality)


def underivable(required: Sequence[str], derived: Derived) -> Issue | None:
    """The reject of a sample whose required derived image modality cannot be derived."""
    for name in required:
        m = get_modality(name)
        if m.is_derived and m.is_image and derived.arrays.get(name) is None:
            return Issue(
                RejectReason.NO_MATCH,
                name,
                f"{name}: cannot be derived ({', '.join(m.derived_from)} bands missing)",
            )
    return None


def unsourced(modalities: Sequence[str], missing: Sequence[Issue], derived: Derived) -> list[Issue]:
    """Built derived image modalities left at their fill value because a source is missing."""
    gone = {e.modality: e for e in missing}
    out: list[Issue] = []
    for name in modalities:
        m = get_modality(name)
        if not (m.is_derived and m.is_image) or derived.arrays.get(name) is not None:
            continue
        src = next((s for s in m.derived_from if s in gone), None)
        if src is not None:
            out.append(Issue(gone[src].reason, name, f"{name}: not derived, {src} is missing"))
    return out
