"""Cloud and shadow over a sample's footprint from the Sentinel-2 scene classification (SCL).

Matching ranks S2 acquisitions by the cloud over the sample, not over the whole tile:
this reads only the footprint's window of each item's SCL band, at a coarse resolution so
overviews serve it, through ``pipeline.readers`` (the build reads assets the same way).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlparse

import numpy as np
from pyproj import Transformer

from terraloom.pipeline.grid import SampleGrid
from terraloom.pipeline.sources.base import SCL_BAND, SourceItem
from terraloom.schemas.modalities import SCL_CLOUD_SHADOW, SCL_NODATA


def local_path(href: str) -> str | None:
    """Filesystem path of a local href (``file://`` URI or plain path), else None."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if not parsed.scheme or len(parsed.scheme) == 1:
        return href
    return None


def scl_readable(href: str, policy: str) -> bool:
    if policy == "never":
        return False
    path = local_path(href)
    if path is not None:
        return os.path.exists(path)
    return policy == "any"


@dataclass(frozen=True)
class SclStats:
    cloud_pct: float | None  # cloud + shadow over valid footprint pixels; None if no valid pixel
    nodata_pct: float


@lru_cache(maxsize=256)
def _transformer(src_epsg: int, dst_epsg: int) -> Transformer:
    return Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)


def scl_footprint_stats(
    items: Sequence[SourceItem], sample: SampleGrid, res_m: float = 60.0
) -> SclStats:
    """Cloud + shadow and nodata percentages of the items' SCL mosaic over the footprint.

    The footprint is sampled at the centres of a ``res_m`` grid in the sample's own CRS
    (nearest neighbour), so tiles of the neighbouring UTM zone and several tiles at once are
    handled alike. Each item reads only the window under those points, decimated towards
    ``res_m`` so GDAL serves it from an overview. Raises ``readers.AssetError`` (or
    ``ValueError``) on unreadable files; callers fall back to ``eo:cloud_cover``.
    Files are opened through ``pipeline.readers`` (GDAL's own caches keep re-opening
    cheap), so planning and the build read assets one way.
    """
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from terraloom.pipeline.readers import open_asset

    (_, _, x0, _, _, y1), nx, ny = sample.coarse(res_m)
    xs, ys = np.meshgrid(x0 + (np.arange(nx) + 0.5) * res_m, y1 - (np.arange(ny) + 0.5) * res_m)
    mosaic = np.zeros(xs.size, np.uint8)
    for it in items:
        with open_asset(it.assets[SCL_BAND].href) as asset:
            info = asset.info
            epsg = info.crs.to_epsg() if info.crs is not None else None
            if epsg is None or info.transform is None:
                raise ValueError(f"SCL of {it.id} has no EPSG CRS and transform")
            if epsg == sample.epsg:
                sx, sy = xs.ravel(), ys.ravel()
            else:
                sx, sy = _transformer(sample.epsg, epsg).transform(xs.ravel(), ys.ravel())
                sx, sy = np.asarray(sx), np.asarray(sy)
            cols, rows = ~info.transform @ (sx, sy)
            col0 = max(0, math.floor(float(np.min(cols))) - 1)
            row0 = max(0, math.floor(float(np.min(rows))) - 1)
            col1 = min(info.width, math.ceil(float(np.max(cols))) + 1)
            row1 = min(info.height, math.ceil(float(np.max(rows))) + 1)
            if col1 <= col0 or row1 <= row0:
                continue
            win = Window(col0, row0, col1 - col0, row1 - row0)
            factor = max(1, int(res_m // abs(info.transform.a)))
            out_h = max(1, math.ceil(win.height / factor))
            out_w = max(1, math.ceil(win.width / factor))
            rw = asset.read(win, out_shape=(out_h, out_w), resampling=Resampling.nearest)
        assert rw.transform is not None
        arr = np.where(np.isnan(rw.data), SCL_NODATA, rw.data).astype(np.uint8)
        c, r = ~rw.transform @ (sx, sy)
        c, r = np.floor(c).astype(np.int64), np.floor(r).astype(np.int64)
        inside = (r >= 0) & (r < out_h) & (c >= 0) & (c < out_w)
        part = np.zeros_like(mosaic)
        part[inside] = arr[r[inside], c[inside]]
        fill = (mosaic == SCL_NODATA) & (part != SCL_NODATA)
        mosaic[fill] = part[fill]
    valid = mosaic != SCL_NODATA
    n_valid = int(valid.sum())
    nodata_pct = 100.0 * (1.0 - n_valid / mosaic.size)
    if n_valid == 0:
        return SclStats(None, nodata_pct)
    cloudy = int((np.isin(mosaic, SCL_CLOUD_SHADOW) & valid).sum())
    return SclStats(100.0 * cloudy / n_valid, nodata_pct)
