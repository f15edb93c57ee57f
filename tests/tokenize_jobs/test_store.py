"""The token store reader (tokenize_jobs/store.py): vectorised random access, all read paths."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
import zarr
from encode_support import CROP_SIZE, CROPS, INVALID_ROWS, N_SAMPLES, SHARD, shared, store_arrays

from terraloom.schemas.layouts import TOKEN_MODALITIES, create_token_store
from terraloom.tokenize_jobs.store import (
    TokenStore,
    array_checksum,
    marker_path,
    read_commits,
    write_commit,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared(tmp_path_factory)


@pytest.fixture(scope="module")
def arrays(env):
    return store_arrays(env["tokens"] / "train.zarr")


def _random_request(store: TokenStore, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.choice(store.valid_rows, n), rng.integers(0, store.n_crops, n)


@pytest.mark.parametrize("mode", ["memory", "memmap", "zarr"])
def test_batch_matches_the_stored_arrays(env, arrays, mode):
    store = TokenStore(env["tokens"] / "train.zarr", mode=mode)
    rows, crops = _random_request(store, 50)
    out = store.batch(rows, crops, TOKEN_MODALITIES)
    assert set(out) == {*TOKEN_MODALITIES, "CAPTION_len", "crops"}
    t = (CROP_SIZE // 16) ** 2
    for m in ("S2L2A", "S1GRD", "S1RTC", "DEM", "LULC", "NDVI"):
        assert out[m].shape == (50, t) and out[m].dtype == torch.int64
    assert out["GEO"].shape == (50, 2) and out["CAPTION"].shape == (50, 64)
    assert out["CAPTION_len"].shape == (50,) and out["crops"].shape == (50, 5)
    for name, value in out.items():
        np.testing.assert_array_equal(
            value.numpy(), arrays[name][rows, crops].astype(np.int64), err_msg=name
        )


def test_contract_attributes(env, arrays):
    store = TokenStore(env["tokens"] / "train.zarr")
    assert (store.n_samples, store.n_crops, store.crop_px, store.shard_samples) == (
        N_SAMPLES,
        CROPS,
        CROP_SIZE,
        SHARD,
    )
    assert store.modalities == TOKEN_MODALITIES
    assert store.valid.dtype == bool and np.array_equal(store.valid, arrays["valid"])
    assert set(store.tokenizers) == set(TOKEN_MODALITIES) and "sha256" in store.tokenizers["S2L2A"]
    # default: all modalities; a scalar crop index broadcasts; names are case-insensitive
    out = store.batch(store.valid_rows[:4], 0, ["dem"])
    assert set(out) == {"DEM", "crops"} and (out["crops"][:, :2] == (264 - CROP_SIZE) // 2).all()
    assert set(store.batch(store.valid_rows[:2], [0, 1])) == {
        *TOKEN_MODALITIES,
        "CAPTION_len",
        "crops",
    }


def test_bad_requests_raise(env):
    store = TokenStore(env["tokens"] / "train.zarr")
    with pytest.raises(ValueError, match="invalid"):
        store.batch([INVALID_ROWS[0]], [0], ["DEM"])
    with pytest.raises(IndexError):
        store.batch([N_SAMPLES], [0], ["DEM"])
    with pytest.raises(IndexError):
        store.batch([0], [CROPS], ["DEM"])
    with pytest.raises(KeyError):
        TokenStore(env["tokens"] / "train.zarr").batch([0], [0], ["S2L1C"])
    with pytest.raises(FileNotFoundError):
        TokenStore(env["tokens"] / "nope.zarr")


def test_uncommitted_shards_read_as_invalid(env, tmp_path):
    out = tmp_path / "tokens"
    shutil.copytree(env["tokens"], out)
    marker_path(out / "train.zarr", 1).unlink()
    store = TokenStore(out / "train.zarr")
    assert not store.valid[SHARD : 2 * SHARD].any()
    assert store.valid[:SHARD].sum() == SHARD - 1  # row 3 is invalid in the corpus
    with pytest.raises(ValueError, match="invalid"):
        store.batch([SHARD], [0], ["DEM"])


def test_picklable_and_usable_from_dataloader_workers(env, arrays):
    store = TokenStore(env["tokens"] / "train.zarr", mode="memmap")
    rows, crops = _random_request(store, 24, seed=1)
    store.batch(rows, crops)  # open maps, then pickle: the maps must not travel
    clone = pickle.loads(pickle.dumps(store))
    assert not clone._maps and clone._n_maps == 0
    np.testing.assert_array_equal(
        clone.batch(rows, crops)["S2L2A"].numpy(), arrays["S2L2A"][rows, crops]
    )

    class Requests(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            sl = slice(8 * i, 8 * i + 8)
            return store.batch(rows[sl], crops[sl], ["NDVI"])

    got = list(torch.utils.data.DataLoader(Requests(), batch_size=None, num_workers=2))
    np.testing.assert_array_equal(
        torch.cat([g["NDVI"] for g in got]).numpy(), arrays["NDVI"][rows, crops]
    )


def test_never_written_chunks_read_as_fill_and_lru_bound(tmp_path):
    path = tmp_path / "tokens" / "train.zarr"
    g = create_token_store(
        path, n_samples=10, n_crops=2, crop_px=32, shard_samples=4, modality_names=("DEM",)
    )
    block = np.arange(4 * 2 * 4, dtype=np.uint16).reshape(4, 2, 4) + 1
    g["DEM"][4:8] = block
    g["valid"][4:8] = True
    write_commit(path, 1, {"checksums": {"DEM": array_checksum(block)}})
    g["valid"][0:4] = True  # written but never committed: must read as invalid
    store = TokenStore(path, mode="memmap", max_open_chunks=1)
    assert store.valid.tolist() == [False] * 4 + [True] * 4 + [False] * 2
    for _ in range(2):  # first: maps DEM chunk 1; then: the map is full, crops read by pread
        out = store.batch([7, 4, 5], [1, 0, 1], ["DEM"])
        np.testing.assert_array_equal(out["DEM"].numpy(), block[[3, 0, 1], [1, 0, 1]])
        assert (out["crops"] == 0).all()  # crops were never written: fill value
        assert store._n_maps == 1
    never_map = TokenStore(path, mode="memmap", max_open_chunks=0)  # every record by pread
    out = never_map.batch([7, 4, 5, 7], [1, 0, 1, 0], ["DEM"])
    np.testing.assert_array_equal(out["DEM"].numpy(), block[[3, 0, 1, 3], [1, 0, 1, 0]])
    assert never_map._n_maps == 0
    assert read_commits(path)[1]["shard"] == 1
    unchecked = TokenStore(path, mode="memory", check_valid=False)
    assert (unchecked.batch([9], [0], ["DEM"])["DEM"] == 0).all()


def test_reader_agrees_with_zarr_on_foreign_codecs(tmp_path):
    """A store whose arrays are not plain bytes (someone rewrote it compressed) falls back to zarr."""
    path = tmp_path / "tokens" / "train.zarr"
    create_token_store(
        path, n_samples=6, n_crops=1, crop_px=16, shard_samples=3, modality_names=("DEM",)
    )
    zarr.create_array(
        str(path / "DEM"),
        shape=(6, 1, 1),
        chunks=(3, 1, 1),
        dtype="uint16",
        overwrite=True,
        dimension_names=("sample", "crop", "dem_token"),
    )
    zarr.open_array(str(path / "DEM"), mode="r+")[:] = np.arange(6, dtype=np.uint16).reshape(
        6, 1, 1
    )
    zarr.open_array(str(path / "valid"), mode="r+")[:] = True
    store = TokenStore(path, mode="memmap")
    assert not store._info["DEM"].plain
    assert store.batch([5, 1], [0, 0], ["DEM"])["DEM"].ravel().tolist() == [5, 1]


def _many_chunk_store(path, n_samples: int = 400, shard: int = 4) -> np.ndarray:
    """A committed DEM store of ``n_samples / shard`` shards (2 chunk files each: DEM, crops)."""
    g = create_token_store(
        path,
        n_samples=n_samples,
        n_crops=1,
        crop_px=32,
        shard_samples=shard,
        modality_names=("DEM",),
    )
    dem = np.random.default_rng(3).integers(1, 60000, (n_samples, 1, 4), dtype=np.uint16)
    g["DEM"][:] = dem
    g["valid"][:] = True
    return dem


_FD_LIMITED_READ = """
import os, resource, sys
import numpy as np
from terraloom.tokenize_jobs.store import TokenStore
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
store = TokenStore(sys.argv[1], mode="memmap")
rows = np.random.default_rng(0).permutation(store.n_samples)
out = store.arrays(rows, 0, ["DEM"])["DEM"]
np.save(sys.argv[2], out[np.argsort(rows)])
print(store._n_maps, len(os.listdir("/proc/self/fd")))
"""


def test_memmap_maps_every_chunk_file_past_the_descriptor_limit(tmp_path):
    """Maps hold no file descriptor: with a soft fd limit of 64, all 200 chunk files of the
    store are mapped (rows become memory copies) and no descriptor stays open."""
    import subprocess
    import sys

    path = tmp_path / "tokens" / "train.zarr"
    dem = _many_chunk_store(path)
    out = tmp_path / "dem.npy"
    proc = subprocess.run(
        [sys.executable, "-c", _FD_LIMITED_READ, str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    n_maps, n_fds = (int(v) for v in proc.stdout.split())
    assert n_maps == 200  # 100 shards x (DEM, crops): every chunk file mapped once
    assert n_fds < 32  # the maps keep none
    np.testing.assert_array_equal(np.load(out), dem[:, 0].astype(np.int64))


def test_reads_fall_back_to_pread_when_the_process_map_budget_is_spent(tmp_path, monkeypatch):
    import os

    from terraloom.tokenize_jobs import store as store_mod

    path = tmp_path / "tokens" / "train.zarr"
    dem = _many_chunk_store(path, n_samples=40)
    monkeypatch.setattr(store_mod, "_BUDGET", {"pid": os.getpid(), "left": 0})
    store = TokenStore(path, mode="memmap")
    rows = np.array([39, 0, 17, 17, 5])
    np.testing.assert_array_equal(store.arrays(rows, 0, ["DEM"])["DEM"], dem[rows, 0])
    assert store._n_maps == 0
    # 20 chunk files (10 shards x DEM, crops) do not fit a budget of 19: no maps at all
    monkeypatch.setattr(store_mod, "_BUDGET", {"pid": os.getpid(), "left": 19})
    partial = TokenStore(path, mode="memmap")
    np.testing.assert_array_equal(partial.arrays(rows, 0, ["DEM"])["DEM"], dem[rows, 0])
    assert partial._n_maps == 0 and store_mod._BUDGET["left"] == 19
    monkeypatch.setattr(store_mod, "_BUDGET", {"pid": os.getpid(), "left": 20})
    mapped = TokenStore(path, mode="memmap")
    np.testing.assert_array_equal(mapped.arrays(rows, 0, ["DEM"])["DEM"], dem[rows, 0])
    assert mapped._n_maps == 8 and store_mod._BUDGET["left"] == 16  # 4 DEM files (crops: fill)
    del mapped
    import gc

    gc.collect()
    assert store_mod._BUDGET["left"] == 20  # unmapped with the store: the budget is back


@pytest.mark.parametrize("mode", ["memory", "memmap", "zarr"])
def test_read_spans_gives_whole_runs_of_rows_with_every_crop(env, arrays, mode):
    """The block loader's read: runs of chunk rows, concatenated in the order asked."""
    store = TokenStore(env["tokens"] / "train.zarr", mode=mode)
    spans = [(2, 1, 6), (0, 0, SHARD), (1, 3, 4), (0, 2, 2), (1, 0, 2)]  # any order, empty ok
    got = store.read_spans(spans, ("DEM", "CAPTION"))
    assert list(got) == ["DEM", "CAPTION", "CAPTION_len", "crops"]
    rows = np.concatenate([np.arange(c * SHARD + lo, c * SHARD + hi) for c, lo, hi in spans])
    assert len(rows) == 5 + SHARD + 1 + 2
    for name, value in got.items():
        assert value.dtype == arrays[name].dtype  # stored dtype: the caller picks its crops
        np.testing.assert_array_equal(value, arrays[name][rows], err_msg=name)
    assert store.read_spans([], ("DEM",))["DEM"].shape == (0, CROPS, (CROP_SIZE // 16) ** 2)


def test_read_spans_refuses_runs_outside_the_store(env):
    store = TokenStore(env["tokens"] / "train.zarr", mode="memmap")
    for bad in [(0, 3, 2), (0, 0, SHARD + 1), (2, 0, 7), (-1, 0, 1)]:
        with pytest.raises(IndexError, match="outside"):
            store.read_spans([bad], ("DEM",))


def test_read_spans_of_never_written_and_truncated_chunk_files(tmp_path):
    path = tmp_path / "tokens" / "train.zarr"
    g = create_token_store(
        path, n_samples=8, n_crops=1, crop_px=32, shard_samples=4, modality_names=("DEM",)
    )
    g["DEM"][4:8] = np.arange(1, 17, dtype=np.uint16).reshape(4, 1, 4)
    g["valid"][:] = True
    store = TokenStore(path, mode="memmap")
    got = store.read_spans([(0, 1, 3), (1, 2, 4)], ("DEM",))["DEM"]
    assert (got[:2] == 0).all()  # chunk 0 was never written: the fill value
    np.testing.assert_array_equal(got[2:, 0], np.arange(9, 17, dtype=np.uint16).reshape(2, 4))
    chunk = store._info["DEM"].chunk_file(1)
    chunk.write_bytes(chunk.read_bytes()[:20])
    with pytest.raises(OSError, match="truncated"):
        store.read_spans([(1, 0, 4)], ("DEM",))
