"""A Zarr v3 store opened once: its group attributes and array metadata read one time, and
writes through a wrapper that records what they wrote.

Opening a Zarr group and its arrays costs a metadata read per array (on an object store a
HEAD and a GET each, plus zarr's probes for Zarr v2 metadata when no format is given), and
zarr's writers ask again whenever an array is reopened. The stores terraloom writes (corpus
split stores, token split stores) are template-first: their metadata is written once before
any data and never changes while a job writes, so a writer reads it once
(:func:`open_handle`, Zarr v3 explicitly, no v2 probes) and builds array objects from it
without I/O. Both writers use this: the corpus build (``pipeline.split_handle`` caches a
handle per worker process and build) and the encode job (``tokenize_jobs.encode``, one
handle per split and run).

A write then goes through a :class:`BlockWriteStore`: a per-write wrapper of the store that

- answers "absent" for the keys the write replaces entirely, because zarr's sharding codec
  (and a partial edge chunk) reads the existing object before every write, even one that
  covers all of it (two requests per object on S3 for a fresh block, a failed decode for an
  object torn by a killed attempt); the write replaces every chunk, so the bytes written are
  the same;
- records the size of every object it writes (``None`` for one it deletes, an object zarr
  elides because it holds only fill values), so a commit marker's file sizes need no
  ``stat``/HEAD per file.

Each write gets its own wrapper and its own array objects, so threads can write different
blocks at once. Here, beside ``location``, because both stages write through it and neither
may import the other; it imports zarr, so it is imported where stores are written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.core.array import AsyncArray
from zarr.core.sync import sync
from zarr.storage import StorePath, WrapperStore

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.array_spec import ArrayConfigParams
    from zarr.core.buffer import Buffer, BufferPrototype
    from zarr.core.metadata import ArrayV3Metadata

__all__ = ["BlockWriteStore", "SplitHandle", "open_handle", "split_handle_of", "write_rows"]


@dataclass(frozen=True)
class SplitHandle:
    """A store's group attributes and array metadata, read once.

    Passes wherever a writer takes a zarr group (``attrs``, ``handle[name]``,
    ``array_keys()``) without a request; :meth:`array` binds an array to another store
    (a write's :class:`BlockWriteStore`). ``config`` is the zarr array config of every
    array built from it (e.g. ``{"write_empty_chunks": True}``).
    """

    store: Store
    attrs: Mapping[str, Any]
    metadata: Mapping[str, ArrayV3Metadata]
    config: Mapping[str, Any] | None = None

    def async_array(self, name: str, store: Store | None = None) -> AsyncArray[Any]:
        """Array ``name`` on ``store`` (default: the split store), built from the cached
        metadata: no I/O."""
        config = cast("ArrayConfigParams", dict(self.config)) if self.config is not None else None
        return AsyncArray(self.metadata[name], StorePath(store or self.store, name), config)

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

    def with_config(self, config: Mapping[str, Any]) -> SplitHandle:
        """The same metadata, arrays built with zarr array config ``config``."""
        return replace(self, config=dict(config))


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
    (one listing and one read per array)."""
    if isinstance(group, SplitHandle):
        return group
    if group.store_path.path:
        raise ValueError(
            f"a split store is the root of its zarr store, not {group.store_path.path!r}"
        )
    arrays = {name: arr.metadata for name, arr in group.arrays()}
    return SplitHandle(group.store, dict(group.attrs), arrays)


def open_handle(store: Store, *, mode: str = "r+") -> SplitHandle:
    """The Zarr v3 group at the root of ``store`` read once: its ``zarr.json``, one listing
    and each array's ``zarr.json`` (no probes for Zarr v2 metadata)."""
    return split_handle_of(zarr.open_group(store, mode=mode, zarr_format=3))  # type: ignore[arg-type]


class BlockWriteStore(WrapperStore[Store]):
    """One write's view of a store: replaced keys read as absent, writes recorded.

    ``replaces`` are the store keys the write covers entirely (its shards and chunks);
    ``written`` maps each key set or deleted through this store to the size of what was
    written (``None``: deleted).
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
