"""webdataset: TerraMesh-layout shards read the way TerraMesh's loader does equal the corpus;
a TerraMesh-layout dataset ingests into a terraloom corpus."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from terraloom.pipeline.publish.webdataset import (
    TerraMeshFormatError,
    ingest_terramesh,
    sample_zip,
)
from terraloom.schemas.layouts import validate_corpus
from terraloom.schemas.modalities import SAMPLE_PX, Layout, get_modality
from terraloom.schemas.tables import read_table


def _loader_decode(data: bytes) -> Any:
    """What TerraMesh's terramesh.py does with a ``zarr.zip`` value: fsspec zip mapper + zarr."""
    import fsspec

    mapper = fsspec.filesystem("zip", fo=io.BytesIO(data), block_size=None).get_mapper("")
    return zarr.open_consolidated(mapper, mode="r")


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def test_shards_read_with_webdataset_equal_the_corpus(
    published: dict[str, Any], tiny_reference: dict[str, Any]
) -> None:
    import webdataset as wds

    root, out = published["root"], tiny_reference["out"]
    index = {r["sample_id"]: r for r in tiny_reference["index"]}
    modalities = zarr.open_group(str(out / "val.zarr"), mode="r").attrs["modalities"]
    image = [n for n in modalities if get_modality(n).layout is Layout.IMAGE]
    assert {"S2L2A", "S1GRD", "DEM", "LULC", "NDVI"} <= set(image)
    for split in ("train", "val"):
        group = zarr.open_group(str(out / f"{split}.zarr"), mode="r")
        meta = pq.read_table(root / f"{split}_metadata.parquet").to_pylist()
        assert [m["__key__"] for m in meta] == [
            r["sample_id"] for r in tiny_reference["index"] if r["split"] == split
        ]
        for name in image:
            tars = sorted((root / split / name).glob("*.tar"))
            ds = wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False)
            keys = []
            for s in ds:
                z = _loader_decode(s["zarr.zip"])
                r = index[s["__key__"]]
                bands = np.asarray(z["bands"][...])
                assert bands.shape == (1, get_modality(name).n_bands, SAMPLE_PX, SAMPLE_PX)
                assert _equal(bands[0], np.asarray(group[name][r["row"]]))
                assert float(z["center_lat"][...]) == r["center_lat"]
                assert z["center_lat"].shape == () and z["spatial_ref"].shape == ()
                assert z["band"].dtype.kind == "U" and z["bands"].compressors  # blosc, like zarr
                assert [str(b) for b in z["band"][...]] == list(get_modality(name).band_names)
                if name == "DEM":
                    assert int(z["time"][0]) == 0  # TerraMesh: no acquisition time
                if name == "S2L2A":
                    t = r["time_S2L2A"]
                    assert int(z["time"][0]) == round(t.timestamp() * 1e6) * 1000
                    assert _equal(
                        np.asarray(z["cloud_mask"][0]), np.asarray(group["cloud_mask"][r["row"]])
                    )
                keys.append(s["__key__"])
            assert keys == [m["__key__"] for m in meta]


def test_published_shards_ingest_back_to_the_same_corpus(
    published: dict[str, Any], tiny_reference: dict[str, Any], tmp_path: Path
) -> None:
    root, out = published["root"], tiny_reference["out"]
    summary = ingest_terramesh(root, tmp_path / "back", splits=["train", "val"], shard_samples=4)
    assert summary.samples == {"train": 24, "val": 9}
    back = {
        r["sample_id"]: r
        for r in read_table("index", tmp_path / "back" / "index.parquet").to_pylist()
    }
    for split in ("train", "val"):
        assert validate_corpus(tmp_path / "back" / f"{split}.zarr") == []
    for r in tiny_reference["index"]:
        b = back[r["sample_id"]]
        assert (b["epsg"], b["transform"], b["cell_id"]) == (
            r["epsg"],
            r["transform"],
            r["cell_id"],
        )
        assert b["time_S1GRD"] == r["time_S1GRD"] and b["caption"] == r["caption"]
        g0 = zarr.open_group(str(out / f"{r['split']}.zarr"), mode="r")
        g1 = zarr.open_group(str(tmp_path / "back" / f"{r['split']}.zarr"), mode="r")
        n0 = int(g0.attrs["n_samples"])
        for name in g0.array_keys():  # sample_id included: the rows keep their ids
            a0: Any = g0[name]
            if a0.shape[:1] != (n0,):  # a label coordinate (band names, affine fields)
                assert _equal(np.asarray(a0[...]), np.asarray(g1[name][...])), name
                continue
            assert _equal(np.asarray(a0[r["row"]]), np.asarray(g1[name][b["row"]])), name


def _write_terramesh(root: Path, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """A small dataset in TerraMesh's layout: majortom-style keys, lower-case SAR bands."""
    truth: dict[str, dict[str, np.ndarray]] = {}
    epsg, transform = 32633, [10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0]
    t0 = datetime(2021, 7, 1, 10, 30, tzinfo=UTC)
    keys = [f"majortom_val_{i:07d}" for i in (3, 1, 2)]
    mods = {"S2L2A": "uint16", "S1RTC": "float16", "DEM": "float32"}
    for mod, dtype in mods.items():
        (root / "val" / mod).mkdir(parents=True)
        with tarfile.open(root / "val" / mod / "majortom_shard_000001.tar", "w") as tf:
            for key in keys:
                m = get_modality(mod)
                x = (rng.random((m.n_bands, SAMPLE_PX, SAMPLE_PX)) * 3000).astype(dtype)
                truth.setdefault(key, {})[mod] = x
                data = sample_zip(
                    mod,
                    x,
                    epsg=epsg,
                    transform=transform,
                    center=(15.0, 45.1),
                    time_ns=0 if mod == "DEM" else int(t0.timestamp()) * 10**9,
                    cloud_mask=np.zeros((SAMPLE_PX, SAMPLE_PX), np.uint8)
                    if mod == "S2L2A"
                    else None,
                    sample_id=key,
                    # TerraMesh writes SAR polarisations in lower case
                    band_names=["vv", "vh"] if mod == "S1RTC" else None,
                )
                info = tarfile.TarInfo(f"{key}.zarr.zip")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return truth


def test_ingest_a_terramesh_layout_dataset(tmp_path: Path) -> None:
    truth = _write_terramesh(tmp_path / "tm", np.random.default_rng(3))
    summary = ingest_terramesh(tmp_path / "tm", tmp_path / "corpus")
    assert summary.samples == {"val": 3}
    assert summary.modalities == ("S2L2A", "S1RTC", "DEM", "GEO")
    rows = read_table("index", tmp_path / "corpus" / "index.parquet").to_pylist()
    assert [r["sample_id"] for r in rows] == sorted(truth)
    group = zarr.open_group(str(tmp_path / "corpus" / "val.zarr"), mode="r")
    # the rows are labelled with their TerraMesh keys (corpus format 2's sample_id coordinate)
    assert [str(k) for k in group["sample_id"][:]] == sorted(truth)
    import xarray as xr

    ds = xr.open_zarr(tmp_path / "corpus" / "val.zarr")
    assert [str(k) for k in ds["S2L2A"]["sample_id"].values] == sorted(truth)
    assert validate_corpus(tmp_path / "corpus" / "val.zarr") == []
    for r in rows:
        for mod, x in truth[r["sample_id"]].items():
            assert _equal(np.asarray(group[mod][r["row"]]), x.astype(get_modality(mod).np_dtype))
        assert (
            r["time_S2L2A"] == datetime(2021, 7, 1, 10, 30, tzinfo=UTC) and r["time_LULC"] is None
        )
        assert r["epsg"] == 32633 and r["transform"] == [10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0]
        np.testing.assert_array_equal(group["GEO"][r["row"]], [45.1, 15.0])
    assert [m.name for m in map(get_modality, summary.modalities) if m.layout is Layout.IMAGE] == [
        "S2L2A",
        "S1RTC",
        "DEM",
    ]


def test_ingest_rejects_bands_that_are_not_the_registry(tmp_path: Path) -> None:
    root = tmp_path / "tm"
    (root / "val" / "DEM").mkdir(parents=True)
    data = sample_zip(
        "S1RTC",
        np.zeros((2, SAMPLE_PX, SAMPLE_PX), np.float16),
        epsg=32633,
        transform=[10.0, 0.0, 0.0, 0.0, -10.0, 0.0],
        center=(15.0, 0.0),
        time_ns=0,
        cloud_mask=None,
        sample_id="k",
    )
    with tarfile.open(root / "val" / "DEM" / "s.tar", "w") as tf:  # S1RTC bands in the DEM folder
        info = tarfile.TarInfo("k.zarr.zip")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(TerraMeshFormatError, match="bands"):
        ingest_terramesh(root, tmp_path / "out")
