"""Deterministic Cloud-Optimized GeoTIFF writing.

GDAL's COG driver writes no timestamps; with fixed creation options and one thread the
bytes depend only on the pixels and georeferencing. ZSTD with a predictor is several times
faster than DEFLATE at a better ratio; overviews are optional (off for the small presets,
where tiles are only a few blocks wide).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

BLOCKSIZE = 512
FLOAT_MANTISSA_BITS = 4
"""Float32 SAR values keep 4 mantissa bits (rounding error <= 3.1% = 0.13 dB, 0.08 dB rms):
far below speckle (~2 dB rms at ENL 4.4), and the floating-point predictor then compresses
them to < 1 byte per value."""

_ENV = {"GDAL_NUM_THREADS": "1", "GDAL_TIFF_INTERNAL_MASK": "YES", "GDAL_PAM_ENABLED": "NO"}


def round_mantissa(a: np.ndarray, bits: int = FLOAT_MANTISSA_BITS) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits (round half up on the magnitude)."""
    a = np.ascontiguousarray(a, np.float32)
    drop = 23 - bits
    u = a.view(np.uint32)
    finite = np.isfinite(a)
    r = ((u + np.uint32(1 << (drop - 1))) >> np.uint32(drop)) << np.uint32(drop)
    return np.where(finite, r.view(np.float32), a)


def write_cog(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    epsg: int | None = None,
    transform: Sequence[float] | None = None,
    gcps: Sequence[GroundControlPoint] | None = None,
    nodata: float | int | None = None,
    overviews: bool = False,
    tags: dict[str, str] | None = None,
    band_descriptions: Sequence[str] | None = None,
    level: int = 3,
) -> int:
    """Write (bands, h, w) or (h, w) ``data`` as a COG; returns the file size in bytes.

    Either ``epsg`` + ``transform`` (north-up) or ``gcps`` (EPSG:4326, no geotransform).
    """
    arr = data[None] if data.ndim == 2 else data
    count, h, w = arr.shape
    dtype = arr.dtype
    predictor = 3 if dtype.kind == "f" else 2
    profile: dict = {
        "driver": "COG",
        "width": w,
        "height": h,
        "count": count,
        "dtype": dtype.name,
        "compress": "ZSTD",
        "level": level,
        "predictor": predictor,
        "blocksize": BLOCKSIZE,
        "overviews": "AUTO" if overviews else "NONE",
        "overview_resampling": "nearest" if dtype.kind in "ui" else "average",
        "bigtiff": "NO",
        "num_threads": 1,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if gcps is None:
        assert epsg is not None and transform is not None
        profile["crs"] = CRS.from_epsg(epsg)
        profile["transform"] = Affine(*transform[:6])
    path = Path(path)
    with rasterio.Env(**_ENV):
        with warnings.catch_warnings():
            # a GCP-only raster has no geotransform when created: expected, not a problem
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dst = rasterio.open(path, "w", **profile)
        with dst:
            if gcps is not None:
                dst.gcps = (list(gcps), CRS.from_epsg(4326))
            if tags:
                dst.update_tags(**tags)
            if band_descriptions:
                for i, d in enumerate(band_descriptions, start=1):
                    dst.set_band_description(i, d)
            dst.write(arr)
    return path.stat().st_size
