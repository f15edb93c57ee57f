"""Reading generated assets and locating their pixels (shared by the world tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio

from terraloom.pipeline.world.regions import transformer


def items(root: Path, coll: str) -> list[dict]:
    out = []
    for p in sorted((root / coll).glob("*/*.json")):
        d = json.loads(p.read_text())
        d["_dir"] = p.parent
        out.append(d)
    return out


def read(item: dict, key: str) -> tuple[np.ndarray, rasterio.Affine, int, float | None]:
    with rasterio.open(item["_dir"] / item["assets"][key]["href"]) as ds:
        return ds.read(1), ds.transform, ds.crs.to_epsg(), ds.nodata


def pixel_lonlat(
    transform: rasterio.Affine, epsg: int, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat of pixel centres (area convention transform)."""
    xs = transform.c + (cols + 0.5) * transform.a
    ys = transform.f + (rows + 0.5) * transform.e
    lon, lat = transformer(epsg, 4326).transform(xs, ys)
    return np.asarray(lon), np.asarray(lat)


def valid_pixels(
    a: np.ndarray, nodata: float | None, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(a) if nodata is None else (a != nodata) & np.isfinite(a)
    idx = np.argwhere(ok)
    pick = idx[np.random.default_rng(seed).choice(len(idx), min(n, len(idx)), replace=False)]
    return pick[:, 0], pick[:, 1]
