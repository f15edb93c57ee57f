"""shard_write: a block's sharded arrays encoded directly are byte for byte what zarr's
``setitem`` writes (rows of data, rows that start with the fill value, rows all fill, a
shard all fill, NaN fill values); what it does not fit goes through ``setitem``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from terraloom.pipeline.corpus_writer import (
    BlockKey,
    block_storage_keys,
    create_split_store,
    split_store_path,
)
from terraloom.pipeline.shard_write import direct_shard_arrays, write_block_arrays
from terraloom.pipeline.split_handle import BlockWriteStore, open_split_handle, write_rows

MODS = ("S2L2A", "S1RTC", "DEM", "LULC")


def _handle(root: Path, n: int, s: int) -> Any:
    create_split_store(root, "train", n, s, MODS, attrs={"plan_sha256": "abc"})
    return open_split_handle(split_store_path(root, "train"), str(root))


def _block(handle: Any, start: int, stop: int, seed: int, kind: str) -> dict[str, np.ndarray]:
    """Every per-sample array of rows [start, stop): data, with rows made to start with the
    fill value or to be all fill (``kind``: 'mixed', 'fill')."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name in sorted(handle.metadata):
        md = handle.metadata[name]
        dims = tuple(md.dimension_names or ())
        if dims[:1] != ("sample",):
            continue
        dt = md.dtype.to_native_dtype()
        shape = (stop - start, *(int(n) for n in md.shape[1:]))
        fill = md.fill_value
        x = np.full(shape, fill, dt)
        if kind == "mixed" and dt.kind not in "OTU":
            if dt.kind == "f":
                x[...] = rng.normal(size=shape).astype(dt)
            elif dt.kind == "b":
                x[...] = True
            else:
                x[...] = rng.integers(1, 200, size=shape).astype(dt)
            x[0].reshape(-1)[:5] = fill  # starts with the fill value, data after it
            if len(x) > 2:
                x[2] = fill  # a row all fill (an optional modality missing)
        elif kind == "mixed":
            x[...] = [f"s{start + i}" for i in range(len(x))] if x.ndim == 1 else x
        out[name] = x
    return out


def _write(root: Path, n: int, s: int, key: BlockKey, arrays: dict, direct: bool) -> dict:
    handle = _handle(root, n, s)
    keys = block_storage_keys(handle, key)
    store = BlockWriteStore(handle.store, frozenset(k for ks in keys.values() for k in ks))
    start = key.block * s
    stop = min(start + s, n)
    if direct:
        write_block_arrays(handle, store, start, stop, arrays)
    else:
        write_rows(handle, store, start, stop, arrays)
    files = {
        str(p.relative_to(root)): p.read_bytes()
        for p in (root / "train.zarr").rglob("*")
        if p.is_file()
    }
    return {"files": files, "written": store.written}


@pytest.mark.parametrize(
    "n,s,block,kind",
    [(12, 4, 1, "mixed"), (12, 4, 0, "fill"), (10, 4, 2, "mixed"), (8, 8, 0, "mixed")],
)
def test_direct_shards_are_the_bytes_setitem_writes(
    tmp_path: Path, n: int, s: int, block: int, kind: str
) -> None:
    handle = _handle(tmp_path / "probe", n, s)
    key = BlockKey("train", block)
    start, stop = block * s, min(block * s + s, n)
    arrays = _block(handle, start, stop, seed=block, kind=kind)
    direct = direct_shard_arrays(handle, start, stop, arrays)
    if stop - start == s:  # a whole shard: every image array is encoded directly
        assert {"S2L2A", "S1RTC", "DEM", "LULC"} <= set(direct)
    else:  # the last, partial block goes through setitem
        assert direct == []
    assert "valid" not in direct and "sample_id" not in direct  # unsharded
    ours = _write(tmp_path / "direct", n, s, key, arrays, direct=True)
    zarrs = _write(tmp_path / "setitem", n, s, key, arrays, direct=False)
    assert ours["files"].keys() == zarrs["files"].keys()
    assert [k for k in ours["files"] if ours["files"][k] != zarrs["files"][k]] == []
    assert ours["written"] == zarrs["written"]
    if kind == "fill":  # every shard all fill: deleted (recorded as None), as zarr does
        assert all(ours["written"][k] is None for k in ours["written"] if "/c/" in k)


def test_direct_shards_read_back(tmp_path: Path) -> None:
    handle = _handle(tmp_path, 8, 4)
    arrays = _block(handle, 4, 8, seed=3, kind="mixed")
    key = BlockKey("train", 1)
    keys = block_storage_keys(handle, key)
    store = BlockWriteStore(handle.store, frozenset(k for ks in keys.values() for k in ks))
    write_block_arrays(handle, store, 4, 8, arrays)
    for name, x in arrays.items():
        got = handle[name][4:8]
        assert np.array_equal(got, x, equal_nan=x.dtype.kind == "f"), name
