import numpy as np
import pytest
import xarray as xr
import zarr

from terraloom.schemas.layouts import (
    corpus_layout,
    create_corpus_store,
    create_token_store,
    n_image_tokens,
    token_layout,
    validate_corpus,
    validate_tokens,
)


def test_corpus_layout_shapes_chunks_and_shards():
    lay = corpus_layout(n_samples=10, shard_samples=4)
    s2 = lay.array("S2L2A")
    assert (
        s2.shape == (10, 12, 264, 264)
        and s2.chunks == (1, 12, 264, 264)
        and s2.shards == (4, 12, 264, 264)
    )
    assert lay.array("S2L1C").shape[1] == 13
    assert lay.array("GEO").shape == (10, 2) and lay.array("GEO").dtype == "float64"
    assert lay.array("CAPTION").shape == (10, 512)
    assert lay.attrs["n_shards"] == 3
    with pytest.raises(KeyError, match="no array"):
        lay.array("nope")


def test_token_layout():
    lay = token_layout(n_samples=5, n_crops=3, shard_samples=2)
    assert lay.array("S2L2A").shape == (5, 3, 196)
    assert lay.array("GEO").shape == (5, 3, 2)
    assert lay.array("CAPTION_len").shape == (5, 3)
    assert lay.array("crops").shape == (5, 3, 5)
    assert not lay.array("S2L2A").compressed
    assert n_image_tokens(256) == 256
    with pytest.raises(ValueError, match="divisible"):
        n_image_tokens(100)


def test_created_corpus_is_valid_and_opens_with_xarray(tmp_path):
    path = tmp_path / "train.zarr"
    g = create_corpus_store(path, n_samples=6, shard_samples=4)
    assert validate_corpus(path) == []
    g["S2L2A"][0:4] = np.full((4, 12, 264, 264), 7, np.uint16)
    ds = xr.open_zarr(path, consolidated=False)
    assert ds["S2L2A"].dims == ("sample", "s2l2a_band", "y", "x")
    assert int(ds["S2L2A"][3, 0, 0, 0]) == 7 and int(ds["S2L2A"][5, 0, 0, 0]) == 0
    # idempotent: creating again with the same layout keeps the data
    create_corpus_store(path, n_samples=6, shard_samples=4)
    assert int(zarr.open_group(str(path))["S2L2A"][1, 0, 0, 0]) == 7
    with pytest.raises(ValueError, match="does not match"):
        create_corpus_store(path, n_samples=7, shard_samples=4)


def _rewrite_array(path, name, **kw):
    g = zarr.open_group(str(path), mode="r+")
    old = g[name]
    spec = dict(
        shape=old.shape,
        dtype=old.dtype,
        chunks=old.chunks,
        shards=old.shards,
        dimension_names=old.metadata.dimension_names,
        fill_value=old.fill_value,
    )
    spec.update(kw)
    del g[name]
    g.create_array(name, **spec)


def test_validate_corpus_catches_wrong_dtype_missing_array_and_wrong_shards(tmp_path):
    path = tmp_path / "c.zarr"
    create_corpus_store(path, n_samples=8, shard_samples=4)
    _rewrite_array(path, "DEM", dtype="float64")
    _rewrite_array(path, "S2L2A", shards=(2, 12, 264, 264))
    del zarr.open_group(str(path), mode="r+")["LULC"]
    findings = validate_corpus(path)
    assert any("DEM: dtype float64 != float32" in f for f in findings)
    assert any("S2L2A: shards (2, 12, 264, 264) != (4, 12, 264, 264)" in f for f in findings)
    assert any("missing array 'LULC'" in f for f in findings)
    assert len(findings) == 3


def test_validate_reports_non_stores_and_bad_attrs(tmp_path):
    assert "not a Zarr v3 group" in validate_corpus(tmp_path)[0]
    g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    g.attrs["format"] = "terraloom-corpus"
    assert "do not describe" in validate_corpus(tmp_path / "x.zarr")[0]


def test_token_store_valid_and_detects_shape_change(tmp_path):
    path = tmp_path / "t.zarr"
    create_token_store(path, n_samples=5, n_crops=2, shard_samples=2)
    assert validate_tokens(path) == []
    _rewrite_array(path, "S1GRD", shape=(5, 2, 100), chunks=(2, 2, 100))
    assert any(f.startswith("S1GRD: shape") for f in validate_tokens(path))


def test_a_store_on_a_location_is_the_local_template_uploaded_root_last(
    tmp_path, s3_bucket, s3_server
):
    """Issue 19 bench: creating ~25 arrays one by one on S3 made ~300 requests in turn. On a
    location the template is written in memory and uploaded, one PUT per object, the root
    ``zarr.json`` last (it says the store exists); the objects equal the local template's
    byte for byte, and what a killed upload left (no root, a stale array) is replaced."""
    from terraloom.storage import Location

    kw = dict(n_samples=10, shard_samples=4, modality_names=("S2L2A", "DEM", "CAPTION"))
    create_corpus_store(tmp_path / "local.zarr", attrs={"plan": "p"}, **kw)
    local = {
        p.relative_to(tmp_path / "local.zarr").as_posix(): p.read_bytes()
        for p in (tmp_path / "local.zarr").rglob("*")
        if p.is_file()
    }
    loc = Location.parse(f"{s3_bucket}/corpus/train.zarr")
    (loc / "stale/zarr.json").write_bytes(b"{}")  # a killed upload of another layout
    n0 = len(s3_server.log)
    group = create_corpus_store(loc, attrs={"plan": "p"}, **kw)
    log = s3_server.log[n0:]
    assert {rel: (loc / rel).read_bytes() for rel in loc.walk_files()} == local
    puts = [p for m, p in log if m == "PUT"]
    assert len(puts) == len(local) and puts[-1].endswith("/corpus/train.zarr/zarr.json")
    assert len(log) <= len(local) + 8, log  # the PUTs, the clearing, the reopen
    assert group.attrs["plan"] == "p" and group["S2L2A"].shape == (10, 12, 264, 264)
    again = create_corpus_store(loc, attrs={"plan": "p"}, **kw)  # exists: reopened as is
    assert dict(again.attrs) == dict(group.attrs)
