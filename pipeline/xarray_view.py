"""One corpus sample as a georeferenced ``xarray.DataArray``.

The corpus stores every sample in its own UTM grid (``epsg`` and ``transform`` per row),
so a split store cannot carry x/y coordinates of its own: they differ per sample. This
module turns one row into what odc-stac and rioxarray users expect: dims
``(band, y, x)``, pixel-centre ``x``/``y`` coordinates in the sample's CRS, a ``band``
coordinate with the band names, and a scalar ``spatial_ref`` coordinate carrying the CRS
as CF grid-mapping attributes (``crs_wkt``, ``spatial_ref``, ``GeoTransform``) that the
array's ``grid_mapping`` attribute names. Plain xarray, pyproj and zarr: rioxarray, when
installed, reads the result with ``.rio.crs`` / ``.rio.transform()`` unchanged.

Works on corpora of every format version: sample ids and rows come from
``index.parquet``, band names from each array's ``bands`` attribute.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from terraloom.schemas.modalities import Layout, get_modality
from terraloom.storage.location import Location

#: Arrays besides the image modalities that :func:`sample_dataarray` can return (y, x).
PLANE_ARRAYS = ("cloud_mask",)


class SampleNotFound(KeyError):
    """The requested sample id or row is not an accepted sample of the split."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


def pixel_centres(transform: Any, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the pixel centres of a north-up grid with affine ``transform`` (a..f).

    A rotated or sheared grid has no 1-D x/y coordinates; the corpus never writes one,
    so finding one means a damaged row: ``ValueError``.
    """
    a, b, c, d, e, f = (float(v) for v in list(transform)[:6])
    if not all(np.isfinite([a, b, c, d, e, f])):
        raise ValueError(f"transform {[a, b, c, d, e, f]} is not finite (an unwritten row?)")
    if b != 0.0 or d != 0.0 or a == 0.0 or e == 0.0:
        raise ValueError(f"transform {[a, b, c, d, e, f]} is not a north-up grid")
    x = c + a * (np.arange(width) + 0.5)
    y = f + e * (np.arange(height) + 0.5)
    return x, y


def spatial_ref_attrs(epsg: int, transform: Any) -> dict[str, Any]:
    """CF grid-mapping attributes of ``spatial_ref`` (pyproj's ``CRS.to_cf()``), plus the
    GDAL-order ``GeoTransform`` string rioxarray writes and reads."""
    from pyproj import CRS

    crs = CRS.from_epsg(int(epsg))
    attrs: dict[str, Any] = dict(crs.to_cf())
    attrs["spatial_ref"] = attrs.get("crs_wkt", crs.to_wkt())
    a, b, c, d, e, f = (float(v) for v in list(transform)[:6])
    attrs["GeoTransform"] = " ".join(repr(v) for v in (c, a, b, f, d, e))
    return attrs


def _lookup(corpus: Location, split: str, sample: str | int) -> dict[str, Any]:
    import pyarrow.compute as pc

    from terraloom.schemas.tables import read_table

    index = read_table("index", corpus / "index.parquet")
    rows = index.filter(pc.equal(index["split"], split))
    if isinstance(sample, (int, np.integer)) and not isinstance(sample, bool):
        hits = rows.filter(pc.equal(rows["row"], int(sample)))
        what = f"row {int(sample)}"
    else:
        hits = rows.filter(pc.equal(rows["sample_id"], str(sample)))
        what = f"sample {sample!r}"
    if not hits.num_rows:
        raise SampleNotFound(
            f"{what} is not an accepted sample of split {split!r} in {corpus} "
            f"({rows.num_rows} accepted; rejected rows hold only fill values)"
        )
    return dict(hits.slice(0, 1).to_pylist()[0])


def sample_dataarray(
    corpus: str | os.PathLike[str] | Location, split: str, sample: str | int, modality: str
) -> Any:
    """One accepted sample of one modality as a georeferenced ``xarray.DataArray``.

    ``sample`` is a sample id (``str``) or a store row (``int``), looked up in the
    corpus's ``index.parquet``. ``modality`` is an image modality (``S2L2A``, ``DEM``,
    ...; dims ``band, y, x``) or ``cloud_mask`` (dims ``y, x``). The values are the
    stored array, unchanged (dtype and fill values included); ``attrs`` carry
    ``grid_mapping``, ``_FillValue`` (the modality's nodata, where it has one), and the
    sample's id, split and row; ``time`` is a scalar coordinate when the index records
    the modality's acquisition time. ``corpus`` is a path or a URL (``s3://...``; the
    backend's credentials from the environment, options with ``Location.parse``).
    """
    import xarray as xr
    import zarr

    corpus = Location.parse(corpus)
    store = corpus / f"{split}.zarr"
    if not (store / "zarr.json").exists():
        raise FileNotFoundError(f"{store}: no such split store in the corpus")
    rec = _lookup(corpus, split, sample)
    row = int(rec["row"])
    group: Any = zarr.open_group(store.zarr_store(read_only=True), mode="r")
    name = modality if modality in PLANE_ARRAYS else get_modality(modality).name
    if name not in PLANE_ARRAYS and get_modality(name).layout is not Layout.IMAGE:
        raise ValueError(f"{name} is not an image modality; it has no x/y grid")
    if name not in set(group.array_keys()):
        raise ValueError(
            f"the {split} store has no {name} array (stored: {sorted(group.array_keys())})"
        )
    arr: Any = group[name]
    values = np.asarray(arr[row])
    epsg = int(group["epsg"][row])
    transform = [float(v) for v in np.asarray(group["transform"][row])]
    height, width = values.shape[-2:]
    x, y = pixel_centres(transform, height, width)
    coords: dict[str, Any] = {
        "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"}),
        "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"}),
        "spatial_ref": ((), np.int64(0), spatial_ref_attrs(epsg, transform)),
        "sample_id": ((), str(rec["sample_id"])),
    }
    attrs: dict[str, Any] = {
        "grid_mapping": "spatial_ref",
        "modality": name,
        "split": split,
        "row": row,
        "sample_id": str(rec["sample_id"]),
    }
    if name in PLANE_ARRAYS:
        dims: tuple[str, ...] = ("y", "x")
        attrs["_FillValue"] = int(arr.fill_value)
    else:
        m = get_modality(name)
        dims = ("band", "y", "x")
        coords["band"] = ("band", list(arr.attrs.get("bands") or m.band_names))
        if m.nodata is not None:
            attrs["_FillValue"] = m.nodata
        t = rec.get(f"time_{name}")
        if t is not None:
            coords["time"] = ((), np.datetime64(t.replace(tzinfo=None), "ns"))
    return xr.DataArray(values, dims=dims, coords=coords, attrs=attrs, name=name)
