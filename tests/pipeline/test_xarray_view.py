"""The georeferenced xarray view of a built corpus (``pipeline/xarray_view.py``), on the
tiny world's reference build (``tiny_reference``), and the corpus's own coordinates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from pyproj import CRS

from terraloom.pipeline import sample_dataarray
from terraloom.pipeline.xarray_view import SampleNotFound, pixel_centres
from terraloom.schemas.layouts import SAMPLE_COORDINATES, validate_corpus
from terraloom.schemas.modalities import get_modality


def _accepted(ref: dict[str, Any], split: str = "train") -> list[dict[str, Any]]:
    rows = [r for r in ref["index"] if r["split"] == split]
    assert rows, f"the tiny reference has no accepted {split} samples"
    return rows


def test_built_corpus_opens_with_sample_ids_and_band_labels(tiny_reference: dict[str, Any]):
    out: Path = tiny_reference["out"]
    ds = xr.open_zarr(out / "train.zarr", consolidated=False)
    ids = [str(v) for v in ds["sample_id"].values]
    for r in _accepted(tiny_reference):
        assert ids[r["row"]] == r["sample_id"]
        assert int(ds["epsg"][r["row"]]) == r["epsg"]
        np.testing.assert_array_equal(ds["transform"][r["row"]].values, r["transform"])
    for r in tiny_reference["rejects"]:  # a rejected row keeps its planned id
        if r["split"] == "train":
            assert ids[r["row"]] == r["sample_id"]
    assert list(ds["S2L2A"]["s2l2a_band"].values) == list(get_modality("S2L2A").band_names)
    assert list(ds["affine"].values) == ["a", "b", "c", "d", "e", "f"]
    assert set(SAMPLE_COORDINATES) <= set(ds.coords)
    # plain zarr sees the same arrays, with dimension names
    g = zarr.open_group(str(out / "train.zarr"), mode="r")
    assert g["sample_id"].metadata.dimension_names == ("sample",)
    assert list(g["sample_id"][:]) == list(ids)
    assert g.attrs["format_version"] == 2


def test_sample_dataarray_is_georeferenced_and_holds_the_raw_values(
    tiny_reference: dict[str, Any],
):
    out: Path = tiny_reference["out"]
    r = _accepted(tiny_reference)[-1]
    da = sample_dataarray(out, "train", r["sample_id"], "S2L2A")
    raw = zarr.open_group(str(out / "train.zarr"), mode="r")["S2L2A"][r["row"]]
    assert da.dims == ("band", "y", "x") and da.dtype == raw.dtype
    np.testing.assert_array_equal(da.values, raw)
    a, b, c, d, e, f = r["transform"]
    assert (b, d) == (0.0, 0.0)
    np.testing.assert_allclose(da.x.values, c + a * (np.arange(264) + 0.5))
    np.testing.assert_allclose(da.y.values, f + e * (np.arange(264) + 0.5))
    assert da.y.values[0] > da.y.values[-1]  # north up
    assert list(da.band.values) == list(get_modality("S2L2A").band_names)
    ref = da.spatial_ref.attrs
    assert da.attrs["grid_mapping"] == "spatial_ref"
    assert CRS.from_wkt(ref["crs_wkt"]) == CRS.from_epsg(r["epsg"])
    assert CRS.from_cf(ref) == CRS.from_epsg(r["epsg"])
    assert [float(v) for v in ref["GeoTransform"].split()] == [c, a, b, f, d, e]
    assert da.sample_id.item() == r["sample_id"] and da.attrs["row"] == r["row"]
    # by row, the same sample; the DEM and the cloud mask share the grid
    by_row = sample_dataarray(out, "train", int(r["row"]), "dem")
    assert by_row.sample_id.item() == r["sample_id"]
    np.testing.assert_array_equal(by_row.x.values, da.x.values)
    mask = sample_dataarray(out, "train", r["sample_id"], "cloud_mask")
    assert mask.dims == ("y", "x") and mask.attrs["_FillValue"] == 255


def test_sample_dataarray_refuses_what_it_cannot_locate(tiny_reference: dict[str, Any]):
    out: Path = tiny_reference["out"]
    r = _accepted(tiny_reference)[0]
    with pytest.raises(SampleNotFound, match="'nope' is not an accepted sample"):
        sample_dataarray(out, "train", "nope", "S2L2A")
    rejected = [x for x in tiny_reference["rejects"] if x["split"] == "train"]
    if rejected:
        with pytest.raises(SampleNotFound, match=f"row {rejected[0]['row']} is not"):
            sample_dataarray(out, "train", int(rejected[0]["row"]), "S2L2A")
    with pytest.raises(ValueError, match="GEO is not an image modality"):
        sample_dataarray(out, "train", r["sample_id"], "GEO")
    with pytest.raises(FileNotFoundError, match="no such split store"):
        sample_dataarray(out, "nosplit", r["sample_id"], "S2L2A")
    with pytest.raises(ValueError, match="not a north-up grid"):
        pixel_centres([10.0, 1.0, 0.0, 0.0, -10.0, 0.0], 2, 2)


def _downgrade_to_v1(store: Path) -> None:
    """What a format-1 build wrote: no sample_id, no label arrays, no coordinates attribute."""
    g = zarr.open_group(str(store), mode="r+")
    for name in list(g.array_keys()):
        dims = tuple(g[name].metadata.dimension_names or ())
        if name == "sample_id" or dims[:1] != ("sample",):
            del g[name]
    for name in g.array_keys():
        meta = json.loads((store / name / "zarr.json").read_text())
        meta["attributes"].pop("coordinates", None)
        (store / name / "zarr.json").write_text(json.dumps(meta))
    root = json.loads((store / "zarr.json").read_text())
    root["attributes"]["format_version"] = 1
    (store / "zarr.json").write_text(json.dumps(root))


def test_format_1_corpora_stay_readable(tiny_reference: dict[str, Any], tmp_path: Path):
    old = tmp_path / "corpus"
    old.mkdir()
    shutil.copytree(tiny_reference["out"] / "train.zarr", old / "train.zarr")
    shutil.copy(tiny_reference["out"] / "index.parquet", old / "index.parquet")
    _downgrade_to_v1(old / "train.zarr")
    assert validate_corpus(old / "train.zarr") == []
    r = _accepted(tiny_reference)[0]
    da = sample_dataarray(old, "train", r["sample_id"], "S2L2A")
    new = sample_dataarray(tiny_reference["out"], "train", r["sample_id"], "S2L2A")
    xr.testing.assert_identical(da, new)


def test_a_corpus_on_s3_opens_by_url(small_reference: dict[str, Any], s3_bucket: str) -> None:
    """Issue 19: the corpus read where it lives. ``xarray.open_zarr("s3://...")``
    opens a split store with its labels, geopandas reads the index by URL, and
    ``sample_dataarray`` takes the corpus URL; values equal the local corpus's."""
    import geopandas as gpd

    from terraloom.storage import Location
    from terraloom.storage.transfer import upload_tree

    local: Path = small_reference["out"]
    url = f"{s3_bucket}/corpus"
    upload_tree(local, Location.parse(url))
    ds = xr.open_zarr(f"{url}/train.zarr", storage_options=Location.parse(url).options())
    here = xr.open_zarr(local / "train.zarr")
    assert list(ds["sample_id"].values) == list(here["sample_id"].values)
    np.testing.assert_array_equal(ds["S2L2A"].values, here["S2L2A"].values)
    index = gpd.read_parquet(f"{url}/index.parquet", storage_options=Location.parse(url).options())
    assert list(index["sample_id"]) == [r["sample_id"] for r in small_reference["index"]]
    assert index.crs is not None and index.geometry.is_valid.all()
    first = small_reference["index"][0]
    remote = sample_dataarray(url, "train", first["sample_id"], "S2L2A")
    near = sample_dataarray(local, "train", first["sample_id"], "S2L2A")
    xr.testing.assert_identical(remote, near)
