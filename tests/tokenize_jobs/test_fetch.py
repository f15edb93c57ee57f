"""Copying a token store from a location to local disk (tokenize_jobs/fetch.py)."""

from __future__ import annotations

import numpy as np
import pytest
from encode_support import run_cli, shared

from terraloom.storage.location import Location
from terraloom.storage.transfer import upload_tree
from terraloom.tokenize_jobs.fetch import fetch_token_store, local_token_store
from terraloom.tokenize_jobs.store import TokenStore, marker_location, read_commits


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared(tmp_path_factory)


def _rows(store: TokenStore) -> dict[str, np.ndarray]:
    rows = store.valid_rows
    return store.arrays(rows, np.zeros(len(rows), np.int64))


def test_fetch_copies_committed_shards_once(env, memory_root, tmp_path):
    remote = Location.parse(memory_root) / "tokens"
    upload_tree(env["tokens"], remote)
    dest = tmp_path / "local"

    first = fetch_token_store(remote, dest)
    assert first.copied == {"train": 3} and first.kept == {"train": 0}
    local, reference = TokenStore(dest / "train.zarr"), TokenStore(env["tokens"] / "train.zarr")
    np.testing.assert_array_equal(local.valid, reference.valid)
    for name, values in _rows(reference).items():
        np.testing.assert_array_equal(_rows(local)[name], values, err_msg=name)
    assert read_commits(dest / "train.zarr") == read_commits(env["tokens"] / "train.zarr")

    again = fetch_token_store(remote, dest)
    assert again.copied == {"train": 0} and again.kept == {"train": 3}
    split = remote / "train.zarr"
    metadata = sum((split / f).size() for f in split.walk_files() if f.endswith("zarr.json"))
    assert again.bytes == metadata < first.bytes  # only the metadata is read again


def test_fetch_follows_the_remote_commits(env, memory_root, tmp_path):
    """A shard withdrawn remotely is withdrawn locally; one whose marker changed (redone)
    is copied again; a shard whose marker is absent remotely is never trusted locally."""
    remote = Location.parse(memory_root) / "tokens"
    upload_tree(env["tokens"], remote)
    dest = tmp_path / "local"
    fetch_token_store(remote, dest)

    split = remote / "train.zarr"
    marker_location(split, 2).delete()  # shard 2 uncommitted remotely (a redo in flight)
    rec = marker_location(split, 1).read_json()
    rec["n_valid"] = rec["n_valid"]  # same content, rewritten: kept
    chunk = split / "DEM/c/0/0/0"
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF
    chunk.write_bytes(bytes(data))  # shard 0 redone with new data and a new marker
    rec0 = marker_location(split, 0).read_json()
    rec0["checksums"]["DEM"] = "redone"
    marker_location(split, 0).delete()
    marker_location(split, 0).write_json(rec0)

    report = fetch_token_store(remote, dest)
    assert report.withdrawn == {"train": 1} and report.copied == {"train": 1}
    assert report.kept == {"train": 1}
    store = TokenStore(dest / "train.zarr")
    assert store.committed_shards() == {0, 1}
    assert not store.valid[16:].any()  # shard 2's rows read as invalid
    local_chunk = (dest / "train.zarr/DEM/c/0/0/0").read_bytes()
    assert local_chunk == bytes(data)


def test_local_token_store_is_the_path_itself_when_local(env):
    assert local_token_store(env["tokens"]) == env["tokens"]


def test_fetch_cli_from_s3(env, s3_bucket, tmp_path):
    remote = Location.parse(f"{s3_bucket}/tokens")
    upload_tree(env["tokens"], remote)
    out = tmp_path / "copy"
    done = run_cli("fetch", str(remote), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "train: 3 shards copied, 0 already there" in done.stdout
    again = run_cli("fetch", str(remote), "--out", str(out))
    assert "train: 0 shards copied, 3 already there" in again.stdout
    assert TokenStore(out / "train.zarr").committed_shards() == {0, 1, 2}
    refused = run_cli("fetch", str(remote), "--out", f"{s3_bucket}/elsewhere")
    assert refused.returncode == 2 and "must be a local directory" in refused.stderr
