"""Derived modalities computed on the 10 m grid: S2RGB, NDVI, GEO and the SCL cloud mask.

All functions are pure and take the co-registered float32 arrays (NaN = nodata) of one
sample. Sentinel-2 values stay in the source DN everywhere in the corpus (the registry's
normalisation statistics assume DN); only NDVI, a ratio of reflectances, converts DN to
reflectance first, because the processing-baseline-04.00 offset (-1000 DN) would
otherwise bias it.
"""

from __future__ import annotations

import numpy as np

from terraloom.schemas.modalities import SCL_CLOUD_SHADOW, SCL_NODATA

__all__ = [
    "CLOUD_MASK_CLEAR",
    "CLOUD_MASK_CLOUD",
    "CLOUD_MASK_NODATA",
    "CLOUD_MASK_SHADOW",
    "cloud_fraction",
    "cloud_mask_from_scl",
    "geo_vector",
    "ndvi",
    "reflectance",
    "s2_reflectance_params",
    "s2rgb",
]

CLOUD_MASK_CLEAR = 0
CLOUD_MASK_CLOUD = 1
CLOUD_MASK_SHADOW = 2
CLOUD_MASK_NODATA = 255
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
    vals = stack[:, valid]
    lo, hi = np.percentile(vals, [low_q, high_q])
    if not hi > lo:
        hi = lo + 1.0
    scaled = (stack - lo) / (hi - lo) * 255.0
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 255.0)
    out = np.rint(scaled).astype(np.uint8)
    out[:, ~valid] = 0
    return out


def s2_reflectance_params(
    scale: float | None, offset: float | None, processing_baseline: str | None
) -> tuple[float, float]:
    """DN -> reflectance (scale, offset): the asset's ``raster:bands`` when given, else
    the ESA convention (1e-4, and -0.1 from processing baseline 04.00 on)."""
    if scale is not None:
        return float(scale), float(offset or 0.0)
    off = 0.0
    if processing_baseline:
        try:
            off = -0.1 if float(processing_baseline) >= 4.0 else 0.0
        except ValueError:
            off = 0.0
    return 1e-4, off


def reflectance(dn: np.ndarray, scale: float, offset: float) -> np.ndarray:
    return dn.astype(np.float32) * np.float32(scale) + np.float32(offset)


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
