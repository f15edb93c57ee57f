"""Corpus writer: block assembly, whole-shard writes, checksums, commit markers.

The SampleResults here come from a small deterministic producer defined in this file,
so the writer is tested on its own, independent of the real sample processing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import zarr

from terraloom.pipeline.block_assembly import assemble_block
from terraloom.pipeline.corpus_writer import (
    BlockKey,
    MarkerError,
    block_files,
    block_rows,
    canonical_modalities,
    check_committed_block,
    checksum,
    create_split_store,
    is_committed,
    marker_path,
    merge_parts,
    n_blocks,
    part_path,
    read_marker,
    store_layout,
    write_block,
)
from terraloom.pipeline.sample import SampleResult
from terraloom.schemas.layouts import corpus_layout
from terraloom.schemas.modalities import get_modality
from terraloom.schemas.tables import read_table

MODS = ("S2L2A", "DEM", "GEO", "CAPTION")


def plan_row(split: str, row: int) -> dict[str, Any]:
    lon, lat = 10.0 + row * 0.03, 45.0
    return {
        "sample_id": f"{split}-{row:04d}",
        "split": split,
        "row": row,
        "cell_id": "1U_1R",
        "geometry": shapely.to_wkb(shapely.box(lon, lat, lon + 0.02, lat + 0.02)),
        "center_lon": lon + 0.01,
        "center_lat": lat + 0.01,
        "epsg": 32632,
        "transform": [10.0, 0.0, 500000.0 + 2640 * row, 0.0, -10.0, 5000000.0],
    }


def fake_result(
    p: dict[str, Any], modalities: tuple[str, ...] = MODS, reject: bool = False
) -> SampleResult:
    """Deterministic arrays from the sample id; NaNs in float arrays to exercise canonicalisation."""
    if reject:
        rej = {k: p[k] for k in ("sample_id", "split", "row", "cell_id", "geometry")}
        rej.update(reason="cloudy", modality="S2L2A", message="cloud fraction 0.5 > 0.2")
        return SampleResult(
            p["sample_id"], p["split"], p["row"], None, None, rej, {"bytes_read": 10.0}
        )
    seed = int.from_bytes(hashlib.sha256(p["sample_id"].encode()).digest()[:4], "little")
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in corpus_layout(1, 1, modalities).arrays:
        if spec.name in ("valid", "sample_id"):  # the writer fills these from the plan
            continue
        dt = np.dtype(spec.dtype)
        shape = spec.shape[1:]
        if dt.kind == "f":
            x = (rng.normal(size=shape) * 100).astype(dt)
            x.flat[0] = -np.float64("nan")  # a non-canonical NaN payload (sign bit set)
        else:
            x = rng.integers(1, 200, size=shape).astype(dt)
        arrays[spec.name] = x
    idx = dict(p)
    idx.update(cloud_fraction=0.01, quality={"sharpness": 1.5}, caption="fields and a river")
    return SampleResult(
        p["sample_id"],
        p["split"],
        p["row"],
        arrays,
        idx,
        None,
        {"bytes_read": 100.0, "msec_read": 2.0},
    )


def make_store(tmp_path: Path, n: int = 10, s: int = 4) -> Any:
    return create_split_store(tmp_path, "train", n, s, MODS, attrs={"plan_sha256": "abc"})


def test_block_rows_and_count() -> None:
    assert n_blocks(10, 4) == 3
    assert block_rows(BlockKey("train", 0), 10, 4) == (0, 4)
    assert block_rows(BlockKey("train", 2), 10, 4) == (8, 10)
    with pytest.raises(ValueError):
        block_rows(BlockKey("train", 3), 10, 4)


def test_canonical_modalities_orders_by_registry_and_rejects_unknown() -> None:
    assert canonical_modalities(["dem", "S2L2A"]) == ("S2L2A", "DEM")
    with pytest.raises(ValueError, match="unknown modalities"):
        canonical_modalities(["S2L2A", "S3OLCI"])


def test_create_split_store_is_idempotent_and_guards_attrs(tmp_path: Path) -> None:
    g = make_store(tmp_path)
    g["valid"][0:4] = np.ones(4, bool)
    g2 = make_store(tmp_path)  # reopen: the written data is untouched
    assert g2["valid"][0:4].all()
    assert g2.attrs["checksum_algorithm"] == "crc32"
    with pytest.raises(ValueError, match="different attributes"):
        create_split_store(tmp_path, "train", 10, 4, MODS, attrs={"plan_sha256": "other"})


def test_assemble_block_accepts_rejects_and_checksums(tmp_path: Path) -> None:
    g = make_store(tmp_path)
    layout = store_layout(g)
    key = BlockKey("train", 1)
    rows = [plan_row("train", r) for r in range(4, 8)]
    results = [
        fake_result(rows[0]),
        fake_result(rows[1], reject=True),
        fake_result(rows[2]),
        fake_result(rows[3]),
    ]
    blk = assemble_block(
        layout, key, rows, list(reversed(results))
    )  # order of results must not matter
    assert (blk.start, blk.stop) == (4, 8)
    assert blk.arrays["valid"].tolist() == [True, False, True, True]
    # rejected row keeps the fill values of the layout
    assert (blk.arrays["S2L2A"][1] == 0).all() and np.isnan(blk.arrays["DEM"][1]).all()
    assert [r["row"] for r in blk.index_rows] == [4, 6, 7]
    assert [r["reason"] for r in blk.reject_rows] == ["cloudy"]
    # NaN payloads are canonical, so the checksum is reproducible from a fresh NaN
    dem = blk.arrays["DEM"][0]
    assert np.isnan(dem.flat[0]) and not np.signbit(dem.flat[0])
    want = results[0].arrays["DEM"].copy()
    want.flat[0] = np.nan
    assert blk.index_rows[0]["checksums"]["DEM"] == checksum(want)
    assert set(blk.index_rows[0]["checksums"]) == set(layout.names)
    assert blk.stats["bytes_read"] == 310.0
    # the block's checksums (the marker's) are its rows' CRCs combined: the same as
    # hashing each whole array, rejected rows' fill values and sample ids included
    assert blk.checksums == {name: checksum(x) for name, x in blk.arrays.items()}
    for i, r in zip((0, 2, 3), blk.index_rows):
        assert r["checksums"] == {name: checksum(x[i]) for name, x in blk.arrays.items()}


@pytest.mark.parametrize("len1,len2", [(0, 0), (5, 0), (0, 7), (13, 1000), (3, 1 << 16)])
def test_crc32_combine_is_the_crc_of_the_concatenation(len1: int, len2: int) -> None:
    import zlib

    from terraloom.pipeline.checksums import concat_checksum, crc32_combine, row_crcs

    rng = np.random.default_rng(len1 + len2)
    a, b = rng.bytes(len1), rng.bytes(len2)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len2) == zlib.crc32(a + b)
    x = rng.integers(0, 2**16, (5, 3, 7), dtype=np.uint16)
    assert concat_checksum(row_crcs(x), x[0].nbytes) == checksum(x)
    assert concat_checksum([], 8) == checksum(np.zeros(0, np.uint16))


def test_assemble_block_turns_contract_breaks_into_internal_rejects(tmp_path: Path) -> None:
    g = make_store(tmp_path)
    rows = [plan_row("train", r) for r in range(0, 4)]
    bad_shape = fake_result(rows[1])
    assert bad_shape.arrays is not None
    bad_shape.arrays["S2L2A"] = bad_shape.arrays["S2L2A"][:, :100]
    missing = fake_result(rows[2])
    assert missing.arrays is not None
    del missing.arrays["GEO"]
    results = [fake_result(rows[0]), bad_shape, missing]  # row 3 has no result at all
    blk = assemble_block(store_layout(g), BlockKey("train", 0), rows, results)
    assert blk.arrays["valid"].tolist() == [True, False, False, False]
    reasons = {r["row"]: (r["reason"], r["message"]) for r in blk.reject_rows}
    assert set(reasons) == {1, 2, 3} and all(v[0] == "internal_error" for v in reasons.values())
    assert (
        "shape" in reasons[1][1]
        and "'GEO' missing" in reasons[2][1]
        and "no result" in reasons[3][1]
    )


def test_assemble_block_refuses_rows_outside_the_block(tmp_path: Path) -> None:
    g = make_store(tmp_path)
    rows = [plan_row("train", r) for r in range(0, 4)]
    with pytest.raises(ValueError, match="not in block"):
        assemble_block(
            store_layout(g), BlockKey("train", 0), rows, [fake_result(plan_row("train", 5))]
        )
    with pytest.raises(ValueError, match="twice"):
        assemble_block(
            store_layout(g),
            BlockKey("train", 0),
            rows,
            [fake_result(rows[0]), fake_result(rows[0])],
        )


def test_write_block_writes_whole_shards_then_commits(tmp_path: Path) -> None:
    g = make_store(tmp_path)
    key = BlockKey("train", 2)  # the last, partial block: rows 8, 9
    rows = [plan_row("train", r) for r in (8, 9)]
    # garbage from a killed attempt in the same shard is overwritten, other shards untouched
    g["S2L2A"][8:10] = np.full((2, 12, 264, 264), 7, np.uint16)
    g["S2L2A"][0:1] = np.full((1, 12, 264, 264), 5, np.uint16)
    blk = assemble_block(
        store_layout(g), key, rows, [fake_result(rows[0]), fake_result(rows[1], reject=True)]
    )
    assert not is_committed(tmp_path, key)
    outcome = write_block(g, blk, tmp_path)
    assert is_committed(tmp_path, key)
    assert (outcome.accepted, outcome.rejected, outcome.n_rows) == (1, {"cloudy": 1}, 2)
    r = zarr.open_group(str(tmp_path / "train.zarr"), mode="r")
    np.testing.assert_array_equal(r["S2L2A"][8], blk.arrays["S2L2A"][0])
    assert (r["S2L2A"][9] == 0).all()  # rejected row -> fill, the garbage is gone
    assert (r["S2L2A"][0] == 5).all()
    assert r["valid"][8:10].tolist() == [True, False]
    marker = json.loads(marker_path(tmp_path, key).read_text())
    assert marker["checksums"]["S2L2A"] == checksum(r["S2L2A"][8:10])
    assert (marker["row_start"], marker["row_stop"], marker["accepted"]) == (8, 10, 1)
    index = read_table("index", part_path(tmp_path, key, "index"))
    assert index.column("sample_id").to_pylist() == ["train-0008"]
    assert dict(index.column("checksums")[0].as_py())["S2L2A"] == checksum(r["S2L2A"][8])
    counters = outcome.counters()
    assert (
        counters["samples_rejected_cloudy"] == 1
        and counters["blocks_written"] == 1
        and counters["bytes_read"] == 110
    )


def test_merge_parts_sorts_by_split_and_row(tmp_path: Path) -> None:
    g = make_store(tmp_path)
    for k in (2, 0, 1):
        a, b = block_rows(BlockKey("train", k), 10, 4)
        rows = [plan_row("train", r) for r in range(a, b)]
        res = [fake_result(p, reject=p["row"] % 3 == 0) for p in rows]
        write_block(g, assemble_block(store_layout(g), BlockKey("train", k), rows, res), tmp_path)
    keys = [BlockKey("train", k) for k in range(3)]
    index = merge_parts(tmp_path, keys, "index")
    rejects = merge_parts(tmp_path, keys, "rejects")
    assert index.column("row").to_pylist() == [1, 2, 4, 5, 7, 8]
    assert rejects.column("row").to_pylist() == [0, 3, 6, 9]


def _written(tmp_path: Path, key: BlockKey) -> Any:
    g = make_store(tmp_path)
    a, b = block_rows(key, 10, 4)
    rows = [plan_row("train", r) for r in range(a, b)]
    res = [fake_result(p, reject=p["row"] == a + 1) for p in rows]
    write_block(g, assemble_block(store_layout(g), key, rows, res), tmp_path)
    return g


def test_marker_records_block_file_sizes_and_the_cheap_check_uses_them(tmp_path: Path) -> None:
    key = BlockKey("train", 1)
    g = _written(tmp_path, key)
    files = json.loads(marker_path(tmp_path, key).read_text())["files"]
    assert files == block_files(tmp_path, key, g)
    assert (
        files["train.zarr/S2L2A/c/1/0/0/0"]
        == (tmp_path / "train.zarr/S2L2A/c/1/0/0/0").stat().st_size
    )
    assert files["_parts/train/block-1.index.parquet"] > 0
    assert check_committed_block(tmp_path, key, g) is None
    assert check_committed_block(tmp_path, key, g, full=True) is None
    assert check_committed_block(tmp_path, BlockKey("train", 0), g) is None  # not committed
    shard = tmp_path / "train.zarr/DEM/c/1/0/0/0"
    data = shard.read_bytes()
    shard.write_bytes(data[:-1])
    assert check_committed_block(tmp_path, key, g) == (
        f"train/block-1: train.zarr/DEM/c/1/0/0/0 is {len(data) - 1} bytes, committed {len(data)}"
    )
    shard.unlink()
    assert "DEM/c/1/0/0/0 is missing" in (check_committed_block(tmp_path, key, g) or "")
    shard.write_bytes(bytes(len(data)))  # same size, other bytes: only the full check sees it
    assert check_committed_block(tmp_path, key, g) is None
    assert "array 'DEM'" in (check_committed_block(tmp_path, key, g, full=True) or "")


@pytest.mark.parametrize(
    "text",
    ['{"format": "terraloom-block-co', "[]", '{"format": "terraloom-block-commit"}', "\xff"],
)
def test_a_damaged_marker_is_a_reason_not_a_crash(tmp_path: Path, text: str) -> None:
    key = BlockKey("train", 0)
    g = _written(tmp_path, key)
    marker_path(tmp_path, key).write_bytes(text.encode("latin-1"))
    with pytest.raises(MarkerError, match="commit marker is damaged"):
        read_marker(tmp_path, key)
    assert "commit marker is damaged" in (check_committed_block(tmp_path, key, g) or "")


def test_rewriting_a_block_over_a_torn_shard_works(tmp_path: Path) -> None:
    """zarr reads an existing shard even for a whole-shard write: a torn one must be
    discarded first, or the resume of a block killed mid-write fails."""
    key = BlockKey("train", 0)
    g = _written(tmp_path, key)
    shard = tmp_path / "train.zarr/S2L2A/c/0/0/0/0"
    shard.write_bytes(shard.read_bytes()[:-100])
    marker_path(tmp_path, key).delete()
    g = _written(tmp_path, key)
    assert check_committed_block(tmp_path, key, g, full=True) is None


def test_sample_ids_and_coordinate_labels_are_written_and_survive_block_rewrites(
    tmp_path: Path,
) -> None:
    """Format 2: every planned row (rejected too) gets its id with its block; the band and
    affine labels are written with the template and belong to no block, so rewriting a
    block (which deletes its shards first) leaves them readable; xarray labels the store."""
    import xarray as xr

    g = make_store(tmp_path)
    assert g.attrs["format_version"] == 2
    assert list(g["s2l2a_band"][:]) == list(get_modality("S2L2A").band_names)
    assert list(g["affine"][:]) == ["a", "b", "c", "d", "e", "f"]
    rows = [plan_row("train", r) for r in range(0, 4)]
    res = [fake_result(rows[0]), fake_result(rows[1], reject=True)] + [
        fake_result(r) for r in rows[2:]
    ]
    for _ in range(2):  # a resumed build rewrites the block over its old shards
        blk = assemble_block(store_layout(g), BlockKey("train", 0), rows, res)
        write_block(g, blk, tmp_path)
    files = block_files(tmp_path, BlockKey("train", 0), g)
    assert "train.zarr/sample_id/c/0" in files and not any("_band" in f for f in files)
    assert check_committed_block(tmp_path, BlockKey("train", 0), full=True) is None
    assert list(g["sample_id"][0:4]) == [r["sample_id"] for r in rows]  # row 1 was rejected
    assert list(g["sample_id"][4:]) == [""] * 6  # blocks not written yet
    assert blk.index_rows[0]["checksums"]["sample_id"] == checksum(np.array("train-0000", "T"))
    ds = xr.open_zarr(tmp_path / "train.zarr", consolidated=False)
    assert {"sample_id", "epsg", "transform", "s2l2a_band", "geo_value", "affine"} <= set(ds.coords)
    assert "sample_id" not in ds.data_vars and "epsg" not in ds.data_vars
    assert list(ds["S2L2A"].s2l2a_band.values) == list(get_modality("S2L2A").band_names)
    assert str(ds["DEM"].isel(sample=2).sample_id.values) == "train-0002"
    assert int(ds["DEM"].isel(sample=2).epsg) == int(g["epsg"][2]) != 0
    assert float(ds.transform.isel(sample=2).sel(affine="c")) == float(g["transform"][2, 2])
