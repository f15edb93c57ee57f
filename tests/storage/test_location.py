"""terraloom.storage.location: parsing and refusal, joins, the memory:// backend, adapters."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from terraloom.storage.location import (
    Location,
    LocationError,
    check_locations,
    parse_location,
    parse_storage_options,
)


@pytest.mark.parametrize(
    ("text", "scheme", "path"),
    [
        ("s3://bkt/a/b", "s3", "bkt/a/b"),
        ("s3://bkt/a/b/", "s3", "bkt/a/b"),
        ("s3://bkt", "s3", "bkt"),
        ("S3://bkt/k", "s3", "bkt/k"),
        ("gs://bkt/k", "gs", "bkt/k"),
        ("az://container/k", "az", "container/k"),
        (
            "abfs://container@acct.dfs.core.windows.net/k",
            "abfs",
            "container@acct.dfs.core.windows.net/k",
        ),
        ("memory://name/k", "memory", "/name/k"),
        ("file:///abs/x", "file", "/abs/x"),
        ("file://localhost/abs/x", "file", "/abs/x"),
        ("/abs/y", "file", "/abs/y"),
        ("https://host.example/a/b.json?sig=1", "https", "https://host.example/a/b.json?sig=1"),
    ],
)
def test_parse_accepted_forms(text: str, scheme: str, path: str) -> None:
    loc = Location.parse(text)
    assert (loc.scheme, loc.path) == (scheme, path)


def test_relative_and_colon_paths_are_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Location.parse("out/corpus").path == str(tmp_path / "out" / "corpus")
    # a first name that merely contains a colon is a path, not a scheme
    assert Location.parse("run:1").path == str(tmp_path / "run:1")
    assert Location.parse(tmp_path / "p").local_path == tmp_path / "p"


def test_a_url_mangled_by_path_is_refused() -> None:
    """``type=Path`` turns ``s3://b/k`` into ``s3:/b/k``: refused, not a folder ``s3:``."""
    with pytest.raises(LocationError, match="malformed URL"):
        Location.parse(Path("s3://bkt/k"))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("s3:/x", "malformed URL"),
        ("s3:bucket/x", "malformed URL"),
        ("s3:", "malformed URL"),
        ("gs:/bkt", "malformed URL"),
        ("ftp:/x", "malformed URL"),
        ("ftp://x", "unknown scheme 'ftp'"),
        ("nosuchscheme://x", "unknown scheme 'nosuchscheme'"),
        ("s3://", "no bucket"),
        ("s3:///key", "no bucket"),
        ("gs://", "no bucket"),
        ("s3://bad bucket/k", "invalid bucket"),
        ("s3://bkt/a//b", "path segment"),
        ("s3://bkt/a/../b", "path segment"),
        ("s3://bkt/k?x=1", "not allowed"),
        ("memory://", "no name"),
        ("file://host/x", "local path"),
        ("", "empty"),
        (" s3://bkt", "whitespace"),
        ("https:///nohost", "no host"),
    ],
)
def test_malformed_locations_are_refused_in_one_line_and_create_nothing(
    text: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocationError, match=why) as err:
        Location.parse(text)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # never a folder named "s3:" (or anything else)


def test_check_locations_refuses_before_using_any(tmp_path: Path) -> None:
    good = str(tmp_path / "out")
    with pytest.raises(LocationError, match="s3:/typo"):
        check_locations([good, None, "s3:/typo"])
    assert not (tmp_path / "out").exists()
    assert [str(x) for x in check_locations([good, None])] == [good]


def test_join_parent_name_url() -> None:
    loc = Location.parse("s3://bkt/corpus")
    child = loc / "train.zarr/zarr.json"
    assert str(child) == "s3://bkt/corpus/train.zarr/zarr.json"
    assert child.name == "zarr.json" and str(child.parent) == "s3://bkt/corpus/train.zarr"
    assert str(Location.parse("memory://m/a") / "b") == "memory://m/a/b"
    assert Location.parse("/tmp/x").url == "file:///tmp/x"
    for bad in ("..", "a/../b", "/abs", "", "a//b"):
        with pytest.raises(LocationError, match="cannot join"):
            loc / bad
    with pytest.raises(LocationError, match="bucket root"):
        _ = Location.parse("s3://bkt").parent


def test_storage_options_are_hidden_not_compared_but_travel_pickled() -> None:
    loc = Location.parse("s3://bkt/k", {"secret": "hunter2", "anon": False})
    assert "hunter2" not in repr(loc) and "hunter2" not in str(loc)
    assert loc == Location.parse("s3://bkt/k") and hash(loc) == hash(Location.parse("s3://bkt/k"))
    back = pickle.loads(pickle.dumps(loc))
    assert back.storage_options == {"secret": "hunter2", "anon": False}
    assert (back / "x").storage_options == back.storage_options


def test_remote_location_is_not_a_path() -> None:
    with pytest.raises(LocationError, match="not on the local file system"):
        os.fspath(Location.parse("s3://bkt/k"))
    with pytest.raises(LocationError, match="not on the local file system"):
        Path(Location.parse("gs://bkt/k"))


def test_parse_storage_options() -> None:
    opts = parse_storage_options(
        ["anon=true", "client_kwargs.region_name=eu-west-1", "max_concurrency=8", "key=0123"]
    )
    assert opts == {
        "anon": True,
        "client_kwargs": {"region_name": "eu-west-1"},
        "max_concurrency": 8,
        "key": "0123",  # a credential-like key keeps its value as given
    }
    for bad in ("novalue", "=x", "a..b=1"):
        with pytest.raises(LocationError, match="--storage-option") as err:
            parse_storage_options([bad])
        assert "\n" not in str(err.value)
    with pytest.raises(LocationError, match="already"):
        parse_storage_options(["a=1", "a.b=2"])


def test_s3_endpoint_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    loc = Location.parse("s3://bkt/k", {"anon": True})
    assert loc.options()["endpoint_url"] == "http://127.0.0.1:9"
    assert loc.options()["anon"] is True
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    assert loc.options()["endpoint_url"] == "http://127.0.0.1:10"
    assert Location.parse("s3://bkt/k", {"endpoint_url": "x"}).options()["endpoint_url"] == "x"


def test_https_is_read_only() -> None:
    loc = Location.parse("https://example.invalid/a.json")
    for write in (lambda: loc.write_bytes(b"x"), lambda: loc.delete(), lambda: loc.makedirs()):
        with pytest.raises(LocationError, match="read-only"):
            write()


def test_memory_bytes_json_listing_delete(memory_root: str) -> None:
    root = Location.parse(memory_root)
    assert not root.exists() and root.listdir() == [] and root.walk_files() == []
    (root / "a/b.bin").write_bytes(b"\x00\x01")
    (root / "a/c.json").write_json({"k": [1, 2]})
    (root / "top.txt").write_text("hé")
    assert (root / "a/b.bin").read_bytes() == b"\x00\x01"
    assert (root / "a/c.json").read_json() == {"k": [1, 2]}
    assert (root / "top.txt").read_text() == "hé" and (root / "top.txt").size() == 3
    assert root.listdir() == ["a", "top.txt"]
    assert root.walk_files() == ["a/b.bin", "a/c.json", "top.txt"]
    assert (root / "a").is_dir() and not (root / "top.txt").is_dir()
    with (root / "s.bin").open("wb") as f:
        f.write(b"stream")
    assert (root / "s.bin").read_bytes() == b"stream"
    (root / "a").delete(recursive=True)
    assert root.walk_files() == ["s.bin", "top.txt"]
    with pytest.raises(FileNotFoundError):
        (root / "nope").delete(missing_ok=False)


def test_local_bytes_listing_delete(tmp_path: Path) -> None:
    root = Location.parse(str(tmp_path / "store"))
    (root / "x/y.json").write_json({"a": 1})
    assert (root / "x/y.json").read_json() == {"a": 1}
    assert root.walk_files() == ["x/y.json"] and root.listdir() == ["x"]
    with pytest.raises(IsADirectoryError):
        (root / "x").delete()
    root.delete(recursive=True)
    assert not root.exists()


def test_zarr_sharded_array_on_memory(memory_root: str) -> None:
    loc = Location.parse(memory_root) / "train.zarr"
    data = np.arange(8 * 2 * 4 * 4, dtype="uint16").reshape(8, 2, 4, 4)
    arr = zarr.create_array(
        loc.zarr_store(),
        name="S2L2A",
        shape=data.shape,
        chunks=(1, 2, 4, 4),
        shards=(4, 2, 4, 4),
        dtype="uint16",
    )
    arr[4:8] = data[4:8]  # one whole shard: the other stays unwritten
    assert sorted(f for f in loc.walk_files() if "/c/" in f) == ["S2L2A/c/1/0/0/0"]
    back = zarr.open_array(loc.zarr_store(read_only=True), path="S2L2A")
    np.testing.assert_array_equal(back[4:8], data[4:8])
    assert (back[:4] == 0).all()


def test_parquet_on_memory_through_pyarrow(memory_root: str) -> None:
    loc = Location.parse(memory_root) / "index.parquet"
    table = pa.table({"id": ["a", "b"], "row": [0, 1]})
    fs, path = loc.arrow_filesystem()
    pq.write_table(table, path, filesystem=fs)
    assert loc.exists()
    fs2, path2 = parse_location(loc.url).arrow_filesystem()
    assert pq.read_table(path2, filesystem=fs2).equals(table)


# ---- against a real S3-compatible server (moto on 127.0.0.1) ---------------------------


def test_s3_bytes_json_listing_delete(s3_bucket: str) -> None:
    root = Location.parse(s3_bucket) / "corpus"
    assert not root.exists() and root.listdir() == []
    (root / "_build/manifest.json").write_json({"splits": ["train"]})
    (root / "train.zarr/zarr.json").write_bytes(b"{}")
    (root / "notes.txt").write_text("ok")
    assert (root / "_build/manifest.json").read_json() == {"splits": ["train"]}
    assert root.listdir() == ["_build", "notes.txt", "train.zarr"]
    assert root.walk_files() == ["_build/manifest.json", "notes.txt", "train.zarr/zarr.json"]
    assert (root / "notes.txt").size() == 2 and (root / "notes.txt").mtime() > 0
    assert (root / "_build").is_dir() and not (root / "notes.txt").is_dir()
    root.makedirs()  # a no-op on object stores
    (root / "train.zarr").delete(recursive=True)
    assert root.walk_files() == ["_build/manifest.json", "notes.txt"]
    # another process's writes are seen at once: no listing cache between them
    other = Location.parse(s3_bucket) / "corpus"
    (other / "late.bin").write_bytes(b"1")
    assert "late.bin" in root.listdir()


def test_s3_zarr_sharded_store_read_by_zarr_and_xarray(s3_bucket: str) -> None:
    import xarray as xr

    loc = Location.parse(s3_bucket) / "corpus/train.zarr"
    rng = np.random.default_rng(0)
    data = rng.integers(0, 10_000, size=(8, 3, 6, 6), dtype="uint16")
    group = zarr.open_group(loc.zarr_store(), mode="w", attributes={"format": "test"})
    arr = group.create_array(
        "S2L2A",
        shape=data.shape,
        chunks=(1, 3, 6, 6),
        shards=(4, 3, 6, 6),
        dtype="uint16",
        dimension_names=("sample", "band", "y", "x"),
    )
    arr[0:4] = data[0:4]  # two writers would each take one whole shard
    arr[4:8] = data[4:8]
    shards = sorted(f for f in loc.walk_files() if f.startswith("S2L2A/c/"))
    assert shards == ["S2L2A/c/0/0/0/0", "S2L2A/c/1/0/0/0"]  # one object per shard

    back = zarr.open(loc.url, mode="r", storage_options=loc.options())
    np.testing.assert_array_equal(back["S2L2A"][:], data)
    assert back.attrs["format"] == "test"

    url, opts = loc.xarray_args()
    assert url.startswith("s3://")
    ds = xr.open_zarr(url, storage_options=opts, consolidated=False)
    np.testing.assert_array_equal(ds["S2L2A"].values, data)
    assert ds["S2L2A"].dims == ("sample", "band", "y", "x")


def test_s3_storage_options_instead_of_environment(
    s3_bucket: str, s3_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--storage-option`` items alone reach the server: endpoint and keys not in the env."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    (Location.parse(s3_bucket) / "x.json").write_json([1])
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    opts = parse_storage_options([f"endpoint_url={endpoint}", "key=testing", "secret=testing"])
    loc = Location.parse(f"{s3_bucket}/x.json", opts)
    assert loc.read_json() == [1]
    assert "testing" not in repr(loc)


def test_s3_parquet_through_pyarrow_and_geopandas(s3_bucket: str) -> None:
    import geopandas as gpd
    from shapely.geometry import Point

    loc = Location.parse(s3_bucket) / "corpus/index.parquet"
    gdf = gpd.GeoDataFrame(
        {"id": ["a", "b", "c"], "row": [0, 1, 2]},
        geometry=[Point(0, 1), Point(2, 3), Point(4, 5)],
        crs="EPSG:4326",
    )
    fs, path = loc.arrow_filesystem()
    gdf.to_parquet(path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("id").to_pylist() == ["a", "b", "c"]
    back = gpd.read_parquet(path, filesystem=fs)
    assert back.crs == gdf.crs and back.geometry.equals(gdf.geometry)
    url, opts = loc.xarray_args()  # the same (url, storage_options) pair suits geopandas
    by_url = gpd.read_parquet(url, storage_options=opts)
    assert list(by_url["row"]) == [0, 1, 2]
