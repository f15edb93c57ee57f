"""The split store as a block writer opens it: metadata once per process, bounded requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from build_support import synthetic_plan

from terraloom.pipeline.block import BuildJob, process_block
from terraloom.pipeline.build import prepare, read_manifest
from terraloom.pipeline.corpus_writer import (
    BlockKey,
    check_committed_block,
    marker_path,
    open_split_store,
    split_store_path,
)
from terraloom.pipeline.sample import BuildConfig
from terraloom.pipeline.split_handle import (
    BlockWriteStore,
    manifest_version,
    open_split_handle,
    split_handle_of,
)
from terraloom.storage import Location
from tests.storage.s3server import S3Server

CFG = BuildConfig(modalities=("S2L2A", "DEM"), required=("S2L2A",))


def _requests_of(server: S3Server, run: Any) -> list[tuple[str, str]]:
    n0 = len(server.log)
    run()
    return server.log[n0:]


def test_a_worker_writes_a_block_to_s3_with_one_put_per_file_and_no_metadata_reads(
    small_plan: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    """Issue 19 bench: each block reopened the split store (zarr's format probing, a HEAD and
    a GET of every array's metadata, twice more for the marker's file list), read every
    shard it was about to replace and asked each file's size: ~230 requests per block. Now
    the first block of a process reads the metadata once; every block after it makes one
    PUT per file it commits plus a fixed handful (marker check, manifest, part sizes)."""
    from tests.pipeline.conftest import TINY_SHARD_SAMPLES

    out = f"{s3_bucket}/corpus"
    prepare(small_plan, out, BuildConfig(), shard_samples=TINY_SHARD_SAMPLES)
    job = BuildJob(Location.parse(out), BuildConfig(), TINY_SHARD_SAMPLES)
    first = _requests_of(s3_server, lambda: process_block(job, BlockKey("train", 0)))
    second = _requests_of(s3_server, lambda: process_block(job, BlockKey("train", 1)))

    files = json.loads(marker_path(out, BlockKey("train", 1)).read_bytes())["files"]
    shards = [f for f, size in files.items() if f.startswith("train.zarr/")]
    assert len(shards) >= 10 and all(files[f] for f in shards)  # real data in every shard
    bucket_path = "/" + s3_bucket.removeprefix("s3://")
    puts = sorted(p.removeprefix(f"{bucket_path}/corpus/") for m, p in second if m == "PUT")
    assert puts == sorted([*files, "_parts/train/block-1.done"])
    assert not [p for m, p in second if p.endswith("zarr.json")]  # metadata: cached
    assert not [p for m, p in second if "train.zarr/" in p and m != "PUT"]  # no shard reads
    assert len(second) <= len(files) + 1 + 8, second  # the files, the marker, a fixed few
    # the first block of the process: the metadata of each array once, nothing per shard
    n_arrays = len(list(open_split_store(out, "train").array_keys()))
    assert len([p for m, p in first if p.endswith("zarr.json")]) <= 2 * n_arrays + 4
    assert len(first) <= len(files) + 1 + 8 + 2 * n_arrays + 8
    for k in (0, 1):
        assert check_committed_block(out, BlockKey("train", k), full=True) is None


def test_the_cached_handle_follows_a_new_build_at_the_same_location(memory_root: str) -> None:
    """A worker process outlives builds (a Dask cluster, a test session): an output removed
    and prepared again with another shard size at the same URL gets its new layout, not the
    metadata the process cached for the first build."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plan = synthetic_plan(Path(tmp) / "plan.parquet", {"train": 6})
        out = f"{memory_root}/corpus"
        for shard in (4, 2):
            prepare(plan, out, CFG, shard_samples=shard)
            manifest = read_manifest(out)
            handle = open_split_handle(split_store_path(out, "train"), manifest_version(manifest))
            assert handle.attrs["shard_samples"] == shard
            assert handle is open_split_handle(
                split_store_path(out, "train"), manifest_version(manifest)
            )  # once per process and build
            outcome = process_block(BuildJob(Location.parse(out), CFG, shard), BlockKey("train", 1))
            assert (outcome.n_rows, outcome.skipped) == (2, False)
            assert check_committed_block(out, BlockKey("train", 1), full=True) is None
            Location.parse(out).delete(recursive=True)


def test_block_write_store_replaces_without_reading_and_records_sizes(tmp_path: Path) -> None:
    """A replaced key reads as absent (a torn shard left by a killed attempt is never
    decoded); every set and delete is recorded with its size, ``None`` for a delete."""
    import zarr

    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    group.create_array(
        "x", shape=(4, 4), chunks=(1, 4), shards=(2, 4), dtype="uint16", fill_value=0
    )
    handle = split_handle_of(group)
    (tmp_path / "s.zarr/x/c/0").mkdir(parents=True)
    (tmp_path / "s.zarr/x/c/0/0").write_bytes(b"torn")
    (tmp_path / "s.zarr/x/c/1").mkdir()
    (tmp_path / "s.zarr/x/c/1/0").write_bytes(b"torn too")
    store = BlockWriteStore(handle.store, frozenset({"x/c/0/0", "x/c/1/0"}))
    arr = handle.array("x", store)
    arr[0:2] = np.arange(8, dtype="uint16").reshape(2, 4)
    arr[2:4] = 0  # all fill: the shard is deleted, recorded as absent
    assert store.written == {
        "x/c/0/0": (tmp_path / "s.zarr/x/c/0/0").stat().st_size,
        "x/c/1/0": None,
    }
    assert (handle["x"][:] == np.r_[np.arange(8), np.zeros(8)].reshape(4, 4)).all()
