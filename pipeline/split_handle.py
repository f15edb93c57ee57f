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
without I/O), so threads of one worker process can write different blocks at once. The
handle, the wrapper and ``write_rows`` live in ``storage.zarr_handle`` (the encode job
writes token stores through them too); this module keeps what is the build's own: the
per-process cache keyed by the manifest. Imported on the worker when a block is written (it
imports zarr), not by the build driver.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from terraloom.storage.location import Location
from terraloom.storage.zarr_handle import (
    BlockWriteStore,
    SplitHandle,
    open_handle,
    split_handle_of,
    write_rows,
)

__all__ = [
    "BlockWriteStore",
    "SplitHandle",
    "manifest_version",
    "open_split_handle",
    "split_handle_of",
    "write_rows",
]


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
    return open_handle(store_loc.zarr_store())
