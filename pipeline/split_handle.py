"""A split store as a block writer sees it: its metadata read once per worker process.

Opening a Zarr group and its arrays costs a metadata read per array (on an object store a
HEAD and a GET each, plus zarr's format probing and listings): about 200 requests per
block for the ~20 arrays of a corpus split when every block reopened the store, against
~20 requests of data. The metadata of a split store never changes while a build writes it
(template-first: it is written once by ``prepare``), so a worker reads it once per output
and build and keeps it: :func:`open_split_handle` caches a :class:`SplitHandle` per process
under the output's location, storage options and a *version* (the build manifest's
digest, which changes whenever the output is prepared anew for another plan, shard size
or config, so a worker process reused across builds never writes with stale metadata).

A block's writes then go through a :class:`BlockWriteStore`: a per-block wrapper of the
split store that

- answers "absent" for the shards the block replaces, because zarr's sharding codec reads
  the existing shard before every write, even one that covers all of it (two requests per
  shard on S3 for a fresh block, a failed decode for a shard torn by a killed attempt);
  the block write replaces every chunk of its shards, so the bytes written are the same;
- records the size of every object it writes (``None`` for one it deletes, a shard zarr
  elides because it holds only fill values), so the commit marker's file sizes need no
  ``stat``/HEAD per file.

Each block gets its own wrapper and its own array objects (built from the cached metadata
without I/O), so threads of one worker process can write different blocks at once. Imported
on the worker when a block is written (it imports zarr), not by the build driver.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.core.array import AsyncArray
from zarr.core.sync import sync
from zarr.storage import StorePath, WrapperStore

from terraloom.storage.location import Location

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype
    from zarr.core.metadata import ArrayV3Metadata

__all__ = [
    "BlockWriteStore",
    "SplitHandle",
    "manifest_version",
    "open_split_handle",
    "split_handle_of",
    "write_rows",
]


@dataclass(frozen=True)
class SplitHandle:
    """A split store's group attributes and array metadata, read once.

    Passes wherever the writer takes a zarr group (``attrs``, ``handle[name]``,
    ``array_keys()``) without a request; :meth:`array` binds an array to another store
    (a block's :class:`BlockWriteStore`).
    """

    store: Store
    attrs: Mapping[str, Any]
    metadata: Mapping[str, ArrayV3Metadata]

    def async_array(self, name: str, store: Store | None = None) -> AsyncArray[Any]:
        """Array ``name`` on ``store`` (default: the split store), built from the cached
        metadata: no I/O."""
        return AsyncArray(self.metadata[name], StorePath(store or self.store, name))

    def array(self, name: str, store: Store | None = None) -> zarr.Array:
        """:meth:`async_array` wrapped for synchronous use."""
        return zarr.Array(self.async_array(name, store))

    def __getitem__(self, name: str) -> zarr.Array:
        return self.array(name)

    def array_keys(self) -> Iterator[str]:
        return iter(sorted(self.metadata))

    def bound(self, store: Store) -> SplitHandle:
        """The same metadata over another store."""
        return replace(self, store=store)


def write_rows(
    handle: SplitHandle, store: Store, start: int, stop: int, arrays: Mapping[str, np.ndarray]
) -> None:
    """Write rows ``[start, stop)`` of every array in ``arrays`` through ``store``, all
    arrays at once: their objects are independent, so the PUTs (and zarr's compression,
    which runs in its thread pool) overlap instead of one round trip per array in turn."""

    async def write_all() -> None:
        await asyncio.gather(
            *(
                handle.async_array(name, store).setitem(slice(start, stop), value)
                for name, value in arrays.items()
            )
        )

    sync(write_all())


def split_handle_of(group: Any) -> SplitHandle:
    """``group`` as a :class:`SplitHandle`: itself, or an open zarr group's metadata read now
    (one read per array; tests and one-off writers pass groups)."""
    if isinstance(group, SplitHandle):
        return group
    if group.store_path.path:
        raise ValueError(
            f"a split store is the root of its zarr store, not {group.store_path.path!r}"
        )
    arrays = {name: arr.metadata for name, arr in group.arrays()}
    return SplitHandle(group.store, dict(group.attrs), arrays)


def manifest_version(manifest: Mapping[str, Any]) -> str:
    """A digest of the build manifest: what a cached handle (or frozen plan) is valid for."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def open_split_handle(store_loc: Location, version: str) -> SplitHandle:
    """The split store at ``store_loc`` opened for block writes, once per process and
    ``version`` (see the module docstring); the storage options are part of the key, as
    :class:`Location` equality leaves them out."""
    store_loc = Location.parse(store_loc)
    options = json.dumps(store_loc.options(), sort_keys=True, default=repr)
    return _open_split_handle(store_loc, options, version)


@functools.lru_cache(maxsize=16)
def _open_split_handle(store_loc: Location, options: str, version: str) -> SplitHandle:
    group = zarr.open_group(store_loc.zarr_store(), mode="r+", zarr_format=3)
    return split_handle_of(group)


class BlockWriteStore(WrapperStore[Store]):
    """One block's view of a split store: replaced keys read as absent, writes recorded.

    ``replaces`` are the store keys the block write covers entirely (its shards and
    chunks); ``written`` maps each key set or deleted through this store to the size of
    what was written (``None``: deleted).
    """

    def __init__(self, store: Store, replaces: frozenset[str] = frozenset()) -> None:
        super().__init__(store)
        self.replaces = frozenset(replaces)
        self.written: dict[str, int | None] = {}

    def _with_store(self, store: Store) -> BlockWriteStore:
        return type(self)(store, self.replaces)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if key in self.replaces:
            return None  # replaced whole: what an earlier attempt left is never read
        return await self._store.get(key, prototype, byte_range)

    async def set(self, key: str, value: Buffer) -> None:
        await self._store.set(key, value)
        self.written[key] = len(value)

    async def delete(self, key: str) -> None:
        await self._store.delete(key)
        self.written[key] = None
