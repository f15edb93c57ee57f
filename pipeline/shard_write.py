"""A block's arrays written as whole shards, the sharded ones encoded without zarr's indexing.

A block is exactly one shard of every sharded corpus array (``schemas.layouts``: shard =
the block's rows x the whole of the other axes, inner chunk = one row). Zarr's
``Array.setitem`` writes such a shard as a partial write of its inner chunks: per row it
allocates a fill-valued chunk, copies the row into it and compares the whole chunk with
the fill value (``np.array_equal``, a temporary of the chunk's size) before encoding it;
about a third of the write's CPU. :func:`write_block_arrays` encodes such a shard through
the same zarr objects instead - the array's own inner codec pipeline for each row and the
sharding codec's own shard assembly (index, its checksum, placement) - and asks the
fill-value question first of a row's first element, which answers it for almost every row
of real data. A row that is all fill is left out of the shard, as zarr does
(``write_empty_chunks`` false), and a shard with no row is deleted, so the bytes and the
keys written are zarr's own (tests compare them with ``setitem``'s). Any array this does
not fit (unsharded, a partial last block, another layout, zarr without these internals,
``write_empty_chunks`` on) is written by ``setitem`` as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
from zarr.codecs.sharding import ShardingCodec

from terraloom.storage.zarr_handle import SplitHandle, write_rows

try:  # zarr internals (zarr pins only the major version): absent, setitem writes everything
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.codec_pipeline import fill_value_or_default
    from zarr.core.sync import sync

    _HAS_IMPORTS = True
except ImportError:  # pragma: no cover - depends on the installed zarr
    _HAS_IMPORTS = False

__all__ = ["direct_shard_arrays", "write_block_arrays"]

#: The zarr internals the direct path uses; without them every array goes through setitem.
_HAS_INTERNALS = _HAS_IMPORTS and all(
    hasattr(ShardingCodec, name)
    for name in ("_encode_shard_dict", "_get_chunk_spec", "_get_chunks_per_shard")
)


def _direct_codec(arr: Any, start: int, stop: int, value: np.ndarray) -> ShardingCodec | None:
    """The sharding codec of ``arr`` when rows ``[start, stop)`` are exactly one of its
    shards, each row one inner chunk and ``value`` already in the stored dtype; else None."""
    if not _HAS_INTERNALS or arr.config.write_empty_chunks:
        return None
    md = arr.metadata
    codecs: tuple[Any, ...] = tuple(getattr(md, "codecs", ()))
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    shape = tuple(int(n) for n in md.shape)
    shard = tuple(int(n) for n in md.chunk_grid.chunk_shape)
    rows = stop - start
    if (
        shard != (rows, *shape[1:])
        or start % rows
        or tuple(codecs[0].chunk_shape) != (1, *shape[1:])
        or value.shape != shard
        or value.dtype != md.dtype.to_native_dtype()
        or not value.flags.c_contiguous
    ):
        return None
    return codecs[0]


def direct_shard_arrays(
    handle: SplitHandle, start: int, stop: int, arrays: Mapping[str, np.ndarray]
) -> list[str]:
    """The arrays of ``arrays`` that :func:`write_block_arrays` encodes itself."""
    return [
        name
        for name, value in arrays.items()
        if _direct_codec(handle.async_array(name), start, stop, value) is not None
    ]


async def _write_shard(arr: Any, codec: ShardingCodec, start: int, value: np.ndarray) -> None:
    md = arr.metadata
    rows = value.shape[0]
    coords = (start // rows, *(0 for _ in value.shape[1:]))
    prototype = default_buffer_prototype()
    shard_spec = md.get_chunk_spec(coords, arr.config, prototype=prototype)
    chunk_spec = codec._get_chunk_spec(shard_spec)
    fill = fill_value_or_default(chunk_spec)
    nd = prototype.nd_buffer
    present = []
    for i in range(rows):
        row = value[i : i + 1]
        # all_equal of the whole row implies it of the first element: one element answers
        # for a row of data; a row that starts with the fill value gets zarr's full test
        first = nd.from_numpy_array(row.reshape(-1)[:1])
        if first.all_equal(fill) and nd.from_numpy_array(row).all_equal(fill):
            continue
        present.append(i)
    encoded = await codec.codec_pipeline.encode(
        [(nd.from_numpy_array(value[i : i + 1]), chunk_spec) for i in present]
    )
    inner_zeros = tuple(0 for _ in value.shape[1:])
    shard = {(i, *inner_zeros): buf for i, buf in zip(present, encoded) if buf is not None}
    buf = await codec._encode_shard_dict(
        shard,
        chunks_per_shard=codec._get_chunks_per_shard(shard_spec),
        buffer_prototype=prototype,
    )
    shard_path = arr.store_path / md.encode_chunk_key(coords)  # zarr's byte setter
    if buf is None:
        await shard_path.delete()  # no row but fill: zarr deletes the shard too
    else:
        await shard_path.set(buf)


def write_block_arrays(
    handle: SplitHandle, store: Any, start: int, stop: int, arrays: Mapping[str, np.ndarray]
) -> None:
    """Write rows ``[start, stop)`` of every array in ``arrays`` through ``store``: whole
    shards encoded directly where they fit (module docstring), the rest by zarr's
    ``setitem``; all at once, so their writes (and the codecs' threads) overlap."""
    if not _HAS_INTERNALS:
        write_rows(handle, store, start, stop, arrays)
        return

    async def write_all() -> None:
        jobs = []
        for name, value in arrays.items():
            arr = handle.async_array(name, store)
            codec = _direct_codec(arr, start, stop, value)
            if codec is not None:
                jobs.append(_write_shard(arr, codec, start, value))
            else:
                jobs.append(arr.setitem(slice(start, stop), value))
        await asyncio.gather(*jobs)

    sync(write_all())
