"""Where terraloom's stores live and how writers coordinate on them.

How to wire a stage
-------------------
1. **Parse every location first.** In the CLI, turn each path/URL argument into a
   :class:`Location` (``check_locations([...])`` or ``type=parse_location``) before anything
   runs; a :class:`LocationError` is the one-line message, exit 2. Take storage options from
   repeated ``--storage-option key=value`` (:func:`parse_storage_options`) and attach them
   with ``Location.parse(text, options)``. Never ``Path(out)`` a user's location: a remote
   Location refuses ``os.fspath``, so a forgotten spot fails loudly instead of writing ``s3:/``.
2. **Address files by joining**: ``out / "_build/manifest.json"``. Small objects go through
   ``read_bytes/write_bytes``, ``read_json/write_json``; listings through ``listdir`` and
   ``walk_files``; ``exists``, ``size``, ``delete(recursive=True)``. ``makedirs()`` is needed
   only for local outputs (a no-op on object stores).
3. **Big formats get adapters**: zarr ``loc.zarr_store()`` (``LocalStore`` locally,
   ``FsspecStore`` remotely); pyarrow/geopandas ``fs, path = loc.arrow_filesystem()``;
   xarray/geopandas by URL ``url, opts = loc.xarray_args()`` then
   ``xr.open_zarr(url, storage_options=opts)``. Keep the local fast path where it matters:
   ``if loc.is_local: np.memmap(loc.local_path, ...)``.
4. **Commit by marker, never by rename**: write the block's data, then
   ``write_once(out / "_commits/<block>.json", record)``; ``False`` means another writer
   committed it first (leave it alone). A resume trusts a block only if its marker exists.
5. **One job per output**: ``with acquire(out / "_build/lease.json", {"job": ...}) as lease,
   lease.keep_alive(): ...`` works on every backend (:class:`LeaseHeld` -> one line, exit 2).
6. **Never persist storage options**: configs and manifests go through
   :func:`terraloom.storage.redact.redact`; a Location's ``str``/``repr`` never shows them.
   Workers (Beam, Dask) receive Locations pickled, options included, so credentials given on
   the command line reach them without being written anywhere.

Why here: the storage layer sits beside ``schemas`` at the bottom of the stage order so that
every stage (pipeline, tokenize_jobs, model) can import it without importing another stage;
``schemas`` stays free of I/O. Modules: ``location`` (parsing, backends, adapters),
``commit`` (write-once markers, conditional writes per backend), ``lease`` (exclusive expiring
leases), ``redact`` (credentials out of everything written or shown), ``zarr_handle`` (a
Zarr store's metadata read once and writes that record their sizes: the build and the encode).
"""

from terraloom.storage.commit import AlreadyCommitted, is_committed, write_once
from terraloom.storage.lease import Lease, LeaseHeld, LeaseLost, acquire
from terraloom.storage.location import (
    Location,
    LocationError,
    check_locations,
    parse_location,
    parse_storage_options,
)

__all__ = [
    "AlreadyCommitted",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "Location",
    "LocationError",
    "acquire",
    "check_locations",
    "is_committed",
    "parse_location",
    "parse_storage_options",
    "write_once",
]
