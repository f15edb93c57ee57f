"""GeoTIFF I/O of generation: inputs read from a file, outputs written as COGs.

Outputs are Cloud-Optimized GeoTIFFs (rasterio's COG driver: tiled, with overviews,
deflate), in the sample's CRS on the crop's grid, so every EO tool (QGIS, GDAL, rioxarray,
a tile server) reads them without a conversion step.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from terraloom.model.samples import SampleRef
from terraloom.schemas.modalities import get_modality

#: COG block size: 224 px crops are covered by 2 x 2 tiles; overviews halve down to one tile.
COG_BLOCK = 128


def write_geotiff(
    path: str | os.PathLike[str], values: np.ndarray, ref: SampleRef, name: str
) -> Path:
    """A (C, H, W) crop as a Cloud-Optimized GeoTIFF in the sample's CRS, on the crop's grid.

    A flipped crop is mirrored back first, so the raster is north-up like the sample.
    """
    import rasterio
    from affine import Affine

    m = get_modality(name)
    arr = np.asarray(values)
    if arr.ndim == 2:
        arr = arr[None]
    flip = ref.crop[4]
    if flip & 1:
        arr = arr[..., :, ::-1]
    if flip & 2:
        arr = arr[..., ::-1, :]
    dtype = np.dtype(m.dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        arr = np.clip(
            np.rint(np.nan_to_num(arr, nan=float(m.nodata or 0))), info.min, info.max
        ).astype(dtype)
    else:
        arr = arr.astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nodata: float | int | None = None
    if m.nodata is not None:
        nodata = float(m.nodata) if arr.dtype.kind == "f" else int(m.nodata)
    profile = {
        "driver": "COG",
        "blocksize": COG_BLOCK,
        # classes are never averaged into values no class has
        "overview_resampling": "nearest" if m.classes else "average",
        "height": arr.shape[1],
        "width": arr.shape[2],
        "count": arr.shape[0],
        "dtype": arr.dtype.name,
        "crs": f"EPSG:{ref.epsg}",
        "transform": Affine(*ref.crop_transform()),
        "compress": "deflate",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ascontiguousarray(arr))
        for i, band in enumerate(m.band_names[: arr.shape[0]], 1):
            dst.set_band_description(i, band)
        dst.update_tags(
            modality=m.name, sample_id=ref.sample_id, generated_by="terraloom-model generate"
        )
    return path


def read_geotiff(
    path: str | os.PathLike[str], name: str, size: int
) -> tuple[torch.Tensor, SampleRef]:
    """A GeoTIFF input (stored values of ``name``) -> centred (1, C, size, size) crop and its ref."""
    import rasterio

    m = get_modality(name)
    with rasterio.open(path) as src:
        arr = src.read().astype(np.float32)
        epsg = src.crs.to_epsg() if src.crs is not None else 0
        t = src.transform
        nodata = src.nodata
    if arr.shape[0] != m.n_bands:
        raise ValueError(f"{path}: {arr.shape[0]} bands, {name} has {m.n_bands}")
    h, w = arr.shape[1:]
    if h < size or w < size:
        raise ValueError(f"{path}: {h} x {w} px is smaller than the model's {size} px input")
    if (
        nodata is not None
        and m.nodata is not None
        and isinstance(m.nodata, float)
        and math.isnan(m.nodata)
    ):
        arr[arr == nodata] = np.nan
    top, left = (h - size) // 2, (w - size) // 2
    crop = arr[:, top : top + size, left : left + size]
    ref = SampleRef(
        Path(path).stem,
        "file",
        -1,
        (top, left, size, size, 0),
        int(epsg or 0),
        (t.a, t.b, t.c, t.d, t.e, t.f),
    )
    return torch.from_numpy(np.ascontiguousarray(crop))[None], ref
