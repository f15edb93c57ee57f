"""The token store: commit records of the writer and the vectorised random-access reader.

Layout (``schemas.layouts.token_layout``): one Zarr v3 group per split,
``tokens/<split>.zarr``, with uncompressed chunks of one whole corpus shard of rows;
commit markers ``tokens/_commits/<split>/shard-<k>.json`` hold the sha256 of every
array's bytes in that shard and the size of each chunk file, and are written only after
the data, write-once (``storage.commit``: no rename, so they hold on object stores too),
so a marker's presence means "this shard was complete and checked". The writer's side
(markers, sizes, checks) takes any location; the reader maps local files (a remote store is
read through a local copy, ``tokenize_jobs.fetch``). A resume does not take that on trust: :func:`commit_problem`
re-checks each committed shard (file sizes always; checksums on request) before skipping it.

:class:`TokenStore` reads chunk files directly (``np.memmap`` / ``np.fromfile`` of the
raw little-endian C-order bytes the ``bytes`` codec writes), groups the requested rows
by shard and fancy-indexes each shard once: no per-sample Python work. Rows of shards
without a commit marker read as invalid, so a store that is still being written (or
was killed) is safe to train from.

Why one module of ~800 lines: the commit records and the reader are two sides of one
format: the reader reads a shard only when its marker says it is complete, and the
writer's records and checks (sizes, checksums) are what make a marker worth that trust, so
both sides change together.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from terraloom.schemas.layouts import TOKENS_FORMAT
from terraloom.schemas.modalities import Layout, get_modality
from terraloom.storage.commit import write_once
from terraloom.storage.location import Location

COMMITS_DIR = "_commits"
COMMIT_VERSION = 1
LEN_SUFFIX = "_len"
ReadMode = Literal["auto", "memory", "memmap", "zarr"]
#: ``mode="auto"`` loads a store whose arrays total at most this many bytes into RAM.
AUTO_MEMORY_BYTES = 512 * 2**20


# --------------------------------------------------------------------------- commits
#
# The commit functions take a split store as a local path or any location (``s3://...``):
# the encode job writes token stores on object stores, where a marker is a write-once object
# (``storage.commit.write_once``: ``If-None-Match: *`` on S3, a hard link locally) created
# after the shard's chunk objects. ``marker_path``/``commits_dir`` stay the local-path view.

StoreLike = str | os.PathLike[str] | Location


def _loc(store_path: StoreLike) -> Location:
    return Location.parse(store_path)


def split_name(store_path: StoreLike) -> str:
    """``tokens/train.zarr`` -> ``train``."""
    name = _loc(store_path).name
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def commits_location(store_path: StoreLike) -> Location:
    """Where the commit markers of a split store live: ``<tokens>/_commits/<split>/``."""
    loc = _loc(store_path)
    return loc.parent / f"{COMMITS_DIR}/{split_name(loc)}"


def marker_location(store_path: StoreLike, shard: int) -> Location:
    return commits_location(store_path) / f"shard-{int(shard):06d}.json"


def commits_dir(store_path: str | os.PathLike[str]) -> Path:
    """:func:`commits_location` of a local store, as a path."""
    return commits_location(store_path).local_path


def marker_path(store_path: str | os.PathLike[str], shard: int) -> Path:
    return marker_location(store_path, shard).local_path


def array_checksum(values: np.ndarray) -> str:
    """sha256 of an array's values as little-endian C-order bytes (codec independent)."""
    arr = np.ascontiguousarray(values)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def shard_checksums(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    return {name: array_checksum(values) for name, values in sorted(arrays.items())}


def write_json_atomic(path: Path, record: Mapping[str, Any]) -> None:
    """Write JSON so that readers see either nothing or the complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_commit(store_path: StoreLike, shard: int, record: Mapping[str, Any]) -> Location:
    """Commit a shard: create its marker if absent (write-once, after the data). A marker
    already there was written by another writer of the same shard and is left alone."""
    loc = marker_location(store_path, shard)
    doc = {"commit_version": COMMIT_VERSION, "shard": int(shard), **record}
    write_once(loc, json.dumps(doc, indent=1, sort_keys=True))
    return loc


def drop_commit(store_path: StoreLike, shard: int) -> None:
    """Withdraw a shard's commit (before redoing it), so a kill mid-redo leaves it uncommitted."""
    marker_location(store_path, shard).delete()


def shard_files(
    store_path: StoreLike, metadata: Mapping[str, Any] | None = None
) -> dict[str, _ArrayInfo]:
    """Per array of a split store, what locates its chunk files (a token chunk = one shard).

    ``metadata`` (array name -> its zarr metadata, e.g. a ``storage.zarr_handle.SplitHandle``'s
    ``metadata``, already read once) is used as given: no request. Without it each array's
    ``zarr.json`` is read (a listing, then a read per array)."""
    root = _loc(store_path)
    base = root.local_path if root.is_local else Path(root.path)
    if metadata is not None:
        return {
            name: _ArrayInfo(base, name, meta if isinstance(meta, Mapping) else meta.to_dict())
            for name, meta in sorted(metadata.items())
        }
    out: dict[str, _ArrayInfo] = {}
    for name in root.listdir():
        if name.startswith(".") or name == "zarr.json":  # the group's own metadata
            continue
        meta = root / f"{name}/zarr.json"
        if not meta.exists():
            continue
        doc = meta.read_json()
        if doc.get("node_type") == "array":
            out[name] = _ArrayInfo(base, name, doc)
    return out


def listed_sizes(store_path: StoreLike) -> dict[str, int] | None:
    """Size of every object of a split store on an object store, by key (``DEM/c/3/0/0``),
    from one recursive listing (a page per 1,000 objects) instead of a HEAD per chunk file;
    ``None`` for a local store, whose files are stat'ed (no request to save)."""
    root = _loc(store_path)
    return None if root.is_local else root.file_sizes()


def _chunk_size(
    root: Location, info: _ArrayInfo, shard: int, listed: Mapping[str, int] | None = None
) -> int:
    if listed is not None:
        key = info.chunk_key(shard)
        if key not in listed:
            raise FileNotFoundError(key)
        return int(listed[key])
    if root.is_local:
        return info.chunk_file(shard).stat().st_size
    return (root / info.chunk_key(shard)).size()


def shard_file_sizes(
    store_path: StoreLike, shard: int, files: Mapping[str, _ArrayInfo] | None = None
) -> dict[str, int]:
    """Bytes of each array's chunk file of ``shard`` (recorded in its commit marker, so a
    resume can check a committed shard without reading it). A writer that recorded what it
    wrote (``storage.zarr_handle.BlockWriteStore``) has them without asking."""
    root = _loc(store_path)
    files = shard_files(root) if files is None else files
    return {name: _chunk_size(root, info, shard) for name, info in files.items()}


def commit_problem(
    store_path: StoreLike,
    shard: int,
    record: Mapping[str, Any],
    rows: tuple[int, int],
    *,
    full: bool = False,
    files: Mapping[str, _ArrayInfo] | None = None,
    listed: Mapping[str, int] | None = None,
) -> str | None:
    """Why a committed shard cannot be trusted, or ``None`` when it passes.

    The cheap check (every resume) stats one file per array: each chunk file the marker
    vouches for exists and has the size the marker recorded (markers written before sizes
    were recorded: exists). ``full`` also re-reads every array through zarr and compares
    the sha256 the marker holds, which finds a flipped byte as well.

    A caller checking many shards passes ``files`` (:func:`shard_files`, read once) and, on
    an object store, ``listed`` (:func:`listed_sizes`, one listing): the check then makes no
    request of its own.
    """
    root = _loc(store_path)
    sums = record.get("checksums")
    if list(record.get("rows") or []) != list(rows):
        return f"its marker covers rows {record.get('rows')}, not {list(rows)}"
    if not isinstance(sums, Mapping) or not sums:
        return "its marker records no checksums"
    files = shard_files(root) if files is None else files
    sizes = record.get("sizes")
    sizes = sizes if isinstance(sizes, Mapping) else {}
    for name in sorted(sums):
        info = files.get(name)
        if info is None:
            return f"array {name} is missing from the store"
        try:
            size = _chunk_size(root, info, shard, listed)
        except FileNotFoundError:
            return f"the {name} chunk file is missing"
        if name in sizes and size != int(sizes[name]):
            return f"the {name} chunk file has {size} bytes, its marker records {sizes[name]}"
    if not full:
        return None
    import zarr

    lo, hi = rows
    store = root.zarr_store(read_only=True)
    for name in sorted(sums):
        try:
            values = np.asarray(zarr.open_array(store, path=name, mode="r", zarr_format=3)[lo:hi])
        except Exception as exc:  # a garbled chunk is a failed check, not a crash
            return f"{name} cannot be read: {type(exc).__name__}: {exc}"
        if array_checksum(values) != sums[name]:
            return (
                f"the {name} checksum differs from its marker (the data changed after the commit)"
            )
    return None


def read_commits(
    store_path: StoreLike, known: Mapping[int, Mapping[str, Any]] | None = None
) -> dict[int, dict[str, Any]]:
    """Parsed commit markers by shard; unreadable markers are left out (= not committed).

    ``known`` (markers this process read earlier in the same run) are taken as they are when
    their marker is still listed: markers are write-once, so only new ones are read (one
    listing, then a read per new marker)."""
    out: dict[int, dict[str, Any]] = {}
    d = commits_location(store_path)
    by_name = {marker_location(store_path, k).name: k for k in (known or {})}
    for name in d.listdir():
        if not (name.startswith("shard-") and name.endswith(".json")):
            continue
        if name in by_name and known is not None:
            out[by_name[name]] = dict(known[by_name[name]])
            continue
        try:
            rec = (d / name).read_json()
            out[int(rec["shard"])] = rec
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


# --------------------------------------------------------------------------- reader


def _read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


class _ArrayInfo:
    """What the reader needs to find and decode one array's chunk files."""

    def __init__(self, root: Path, name: str, meta: Mapping[str, Any]) -> None:
        self.name = name
        self.dir = root / name
        self.shape = tuple(int(v) for v in meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.chunk_shape = tuple(int(v) for v in meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.fill_value = meta.get("fill_value", 0)
        enc = meta.get("chunk_key_encoding", {})
        self.separator = enc.get("configuration", {}).get("separator", "/")
        self.prefix = "c" + self.separator if enc.get("name", "default") == "default" else ""
        codecs = meta.get("codecs", [])
        plain = (
            meta.get("chunk_grid", {}).get("name") == "regular"
            and len(codecs) == 1
            and codecs[0].get("name") == "bytes"
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and not meta.get("storage_transformers")
            and self.chunk_shape[1:] == self.shape[1:]
        )
        #: True when every chunk file is the raw little-endian C-order block.
        self.plain = bool(plain)

        #: one (row, crop) record: its shape and bytes; records per row (the crop axis)
        self.record_shape = self.chunk_shape[2:]
        self.record_bytes = int(np.prod(self.record_shape, dtype=np.int64)) * self.dtype.itemsize
        self.records_per_row = self.chunk_shape[1] if len(self.chunk_shape) > 1 else 1
        self.chunk_items = int(np.prod(self.chunk_shape, dtype=np.int64))
        self._key_tail = "".join(self.separator + "0" for _ in self.shape[1:])
        self._dir = str(self.dir) + os.sep + self.prefix

    @property
    def rows_per_chunk(self) -> int:
        return self.chunk_shape[0]

    @property
    def chunk_dir(self) -> str:
        """The directory that :meth:`chunk_rel` is relative to (``<array>/c`` by default)."""
        return str(self.dir / "c") if self.prefix == "c/" else str(self.dir)

    def chunk_rel(self, chunk: int) -> str:
        """:meth:`chunk_path` relative to :attr:`chunk_dir`."""
        head = "" if self.prefix == "c/" else self.prefix
        return f"{head}{chunk}{self._key_tail}"

    def chunk_path(self, chunk: int) -> str:
        """``chunk_file`` as a plain string, cheaply (hot path of the pread reader)."""
        return f"{self._dir}{chunk}{self._key_tail}"

    def chunk_file(self, chunk: int) -> Path:
        key = self.separator.join([str(chunk)] + ["0"] * (len(self.shape) - 1))
        return self.dir / f"{self.prefix}{key}"

    def chunk_key(self, chunk: int) -> str:
        """The chunk's object name relative to the split store (``DEM/c/3/0/0``)."""
        key = self.separator.join([str(chunk)] + ["0"] * (len(self.shape) - 1))
        return f"{self.name}/{self.prefix}{key}"


class TokenStore:
    """Random access to one split of the token store.

    ``batch(rows, crop_idx, modalities)`` returns int64 tensors: image modalities
    ``(B, n_tokens)``, GEO ``(B, 2)``, CAPTION ``(B, 64)`` plus ``CAPTION_len`` ``(B,)``,
    and always ``crops`` ``(B, 5)`` = top, left, h, w, flip.

    ``mode``: ``"memory"`` loads each array into RAM on first use (plain fancy
    indexing); ``"memmap"`` maps chunk files (shared page cache across DataLoader
    workers, bounded RAM); ``"zarr"`` decodes chunks with zarr (any codec); ``"auto"``
    picks memory for stores up to 512 MiB, else memmap, and zarr for arrays whose codec
    is not plain ``bytes``. Picklable: file handles and caches are rebuilt lazily in each
    process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: ReadMode = "auto",
        check_valid: bool = True,
        max_open_chunks: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a token store (no zarr.json)")
        root = _read_json(self.path / "zarr.json")
        self.attrs: dict[str, Any] = dict(root.get("attributes", {}))
        if self.attrs.get("format") != TOKENS_FORMAT:
            raise ValueError(
                f"{self.path}: format {self.attrs.get('format')!r} is not {TOKENS_FORMAT!r}"
            )
        self.n_samples = int(self.attrs["n_samples"])
        self.n_crops = int(self.attrs["n_crops"])
        self.crop_px = int(self.attrs["crop_px"])
        self.shard_samples = int(self.attrs["shard_samples"])
        self.split = str(self.attrs.get("split", split_name(self.path)))
        self.modalities: tuple[str, ...] = tuple(self.attrs["modalities"])
        self.tokenizers: dict[str, Any] = dict(self.attrs.get("tokenizers", {}))
        #: FSQ grouping of each image modality's tokenizer, as encode recorded it (stores
        #: written before it was recorded have none: the tokenizers' defaults apply)
        self.fsq_groups: dict[str, tuple[int, ...]] = {
            str(m): tuple(int(g) for g in groups)
            for m, groups in dict(self.attrs.get("fsq_groups") or {}).items()
        }
        names = [
            *self.modalities,
            *(f"{m}{LEN_SUFFIX}" for m in self.modalities if get_modality(m).layout is Layout.TEXT),
            "crops",
            "valid",
        ]
        self._info = {
            n: _ArrayInfo(self.path, n, _read_json(self.path / n / "zarr.json")) for n in names
        }
        self.check_valid = check_valid
        #: a per-store cap on chunk maps (default none: the process's map budget decides)
        self.max_open_chunks = sys.maxsize if max_open_chunks is None else max_open_chunks
        total = sum(int(np.prod(i.shape)) * i.dtype.itemsize for i in self._info.values())
        if mode == "auto":
            mode = "memory" if total <= AUTO_MEMORY_BYTES else "memmap"
        if mode not in ("memory", "memmap", "zarr"):
            raise ValueError(f"mode must be auto, memory, memmap or zarr, got {mode!r}")
        self.mode = mode
        self.valid = self._load_valid()
        self._reset_caches()

    # -- pickling: drop maps and caches, rebuild lazily in the worker process
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_full", "_maps", "_zarr", "_mapper", "_dir_fds"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._full: dict[str, np.ndarray] = {}
        #: per array: chunk -> ndarray over its map (up to ``max_open_chunks`` in all and
        #: within the process's map budget; past that, records are read with ``os.pread``)
        self._maps: dict[str, dict[int, np.ndarray]] = {}
        self._n_maps = 0
        self._mapper = _ChunkMaps()
        self._maps_fit: bool | None = None
        #: per array: an fd of its chunk directory (``pread`` opens keys relative to it)
        self._dir_fds: dict[str, _DirFd] = {}
        self._zarr: dict[str, Any] = {}

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, n_samples={self.n_samples}, n_crops={self.n_crops}, valid={int(self.valid.sum())}, mode={self.mode!r})"

    @property
    def n_shards(self) -> int:
        return -(-self.n_samples // self.shard_samples)

    @property
    def valid_rows(self) -> np.ndarray:
        return np.flatnonzero(self.valid)

    def committed_shards(self) -> set[int]:
        return set(read_commits(self.path))

    def _load_valid(self) -> np.ndarray:
        """Stored ``valid`` masked by commit markers (an uncommitted shard is not data)."""
        valid = self._read_all("valid").astype(bool)
        if commits_dir(self.path).is_dir():
            committed = np.zeros(self.n_shards, bool)
            for k in read_commits(self.path):
                if 0 <= k < self.n_shards:
                    committed[k] = True
            valid &= np.repeat(committed, self.shard_samples)[: self.n_samples]
        return valid

    # -- chunk access
    def _chunk(self, name: str, chunk: int) -> np.ndarray:
        """One chunk (rows_per_chunk, ...) of an array, fill values where never written."""
        info = self._info[name]
        if self.mode == "zarr" or not info.plain:
            arr = self._zarr.get(name)
            if arr is None:
                import zarr

                arr = self._zarr[name] = zarr.open_array(str(info.dir), mode="r")
            lo = chunk * info.rows_per_chunk
            return np.asarray(arr[lo : lo + info.rows_per_chunk])
        cache = self._maps.setdefault(name, {})
        hit = cache.get(chunk)
        if hit is not None:
            return hit
        try:
            buf = self._mapper.map(info.chunk_path(chunk))
            # a plain ndarray over the map (np.memmap's subclass overhead dominates small reads)
            m = np.frombuffer(buf, info.dtype, count=info.chunk_items).reshape(info.chunk_shape)
            m.flags.writeable = False  # the pages are mapped read-only
        except FileNotFoundError:  # never written: the fill value
            m = np.full(info.chunk_shape, info.fill_value, info.dtype)
        cache[chunk] = m
        self._n_maps += 1
        return m

    def _can_map(self) -> bool:
        if self._maps_fit is None:
            # Map only a store whose chunk files all fit the process's map budget: a map
            # costs about three preads to make, so it pays off when every later read of the
            # file is a memory copy, not when a random read finds a map one time in six.
            files = self.n_shards * sum(
                1 for n, i in self._info.items() if i.plain and n != "valid"
            )
            explicit = self.max_open_chunks != sys.maxsize
            self._maps_fit = explicit or files <= _process_map_budget()
        return self._maps_fit and self._n_maps < self.max_open_chunks and self._mapper.can_map()

    def _open_chunk(self, name: str, chunk: int) -> int | None:
        """A read-only fd of one raw chunk file, opened relative to the array's chunk
        directory (half the cost of a full path walk); ``None`` if it was never written (no
        chunk, or no chunk directory yet). The caller closes it."""
        info = self._info[name]
        try:
            d = self._dir_fds.get(name)
            if d is None:
                d = self._dir_fds[name] = _DirFd(info.chunk_dir)
            return os.open(info.chunk_rel(chunk), os.O_RDONLY, dir_fd=d.fd)
        except FileNotFoundError:
            return None

    def _pread_one(self, name: str, chunk: int, loc: int, crop: int) -> bytes | None:
        """The bytes of one (row, crop) record by ``pread``; ``None`` if its file is missing."""
        info = self._info[name]
        fd = self._open_chunk(name, chunk)
        if fd is None:
            return None
        try:
            data = os.pread(
                fd, info.record_bytes, (loc * info.records_per_row + crop) * info.record_bytes
            )
        finally:
            os.close(fd)
        return data if len(data) == info.record_bytes else None

    def _pread(self, name: str, chunk: int, loc: Any, crop: Any) -> np.ndarray:
        """Read only the requested (row, crop) records of a chunk file, without mapping it
        (used once no more maps may be made: no eviction churn, no fd growth)."""
        info = self._info[name]
        fd = self._open_chunk(name, chunk)
        if fd is None:  # never written: the fill value
            fill = np.full(info.record_shape, info.fill_value, info.dtype)
            return fill if isinstance(loc, int) else np.broadcast_to(fill, (len(loc), *fill.shape))
        try:
            rec, per_row = info.record_bytes, info.records_per_row
            if isinstance(loc, int):
                data = os.pread(fd, rec, (loc * per_row + crop) * rec)
                return np.frombuffer(data, info.dtype).reshape(info.record_shape)
            parts = [
                os.pread(fd, rec, (r * per_row + c) * rec)
                for r, c in zip(loc.tolist(), crop.tolist())
            ]
            return np.frombuffer(b"".join(parts), info.dtype).reshape(
                len(parts), *info.record_shape
            )
        finally:
            os.close(fd)

    def _read_all(self, name: str) -> np.ndarray:
        """A whole array in RAM (chunk files read straight, or via zarr)."""
        info = self._info[name]
        if not info.plain:
            import zarr

            return np.asarray(zarr.open_array(str(info.dir), mode="r")[...])
        out = np.empty(info.shape, info.dtype)
        step = info.rows_per_chunk
        for k in range(-(-info.shape[0] // step)):
            lo, hi = k * step, min((k + 1) * step, info.shape[0])
            path = info.chunk_file(k)
            if path.exists():
                out[lo:hi] = np.fromfile(path, dtype=info.dtype).reshape(info.chunk_shape)[
                    : hi - lo
                ]
            else:
                out[lo:hi] = info.fill_value
        return out

    def preload(self) -> TokenStore:
        """Switch to memory mode and read every array now (before forking DataLoader
        workers, so they share the pages copy-on-write instead of each loading a copy)."""
        self.mode = "memory"
        for name in self._info:
            if name != "valid" and name not in self._full:
                self._full[name] = self._read_all(name)
        return self

    def _gather(
        self, name: str, rows: np.ndarray, crops: np.ndarray, groups: _Groups | None = None
    ) -> np.ndarray:
        """``array[rows, crops]`` without a per-sample loop (one fancy index per shard)."""
        if self.mode == "memory":
            full = self._full.get(name)
            if full is None:
                full = self._full[name] = self._read_all(name)
            return full[rows, crops]
        info = self._info[name]
        g = groups if groups is not None and groups.rows_per_chunk == info.rows_per_chunk else None
        g = g or _Groups(rows, crops, info.rows_per_chunk)
        out = np.empty((len(rows), *info.shape[2:]), info.dtype)
        cache = self._maps.setdefault(name, {})
        direct = self.mode == "memmap" and info.plain
        can_map = direct and self._can_map()
        # single records read by pread: their bytes joined and decoded once at the end
        at: list[int] = []
        parts: list[bytes] = []
        for chunk, o, loc, cr in g.items:
            m = cache.get(chunk)
            if m is not None:
                out[o] = m[loc, cr]
            elif direct and not can_map:
                if isinstance(o, int) and (data := self._pread_one(name, chunk, loc, cr)):
                    at.append(o)
                    parts.append(data)
                else:
                    out[o] = self._pread(name, chunk, loc, cr)
            else:
                try:
                    out[o] = self._chunk(name, chunk)[loc, cr]
                except _MapFailed:
                    out[o] = self._pread(name, chunk, loc, cr)
                can_map = direct and self._can_map()
        if at:
            out[at] = np.frombuffer(b"".join(parts), info.dtype).reshape(
                len(at), *info.record_shape
            )
        return out

    def batch(
        self,
        rows: np.ndarray | Sequence[int],
        crop_idx: np.ndarray | Sequence[int] | int,
        modalities: Iterable[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokens of ``(rows[i], crop_idx[i])`` for each requested modality, as int64 tensors."""
        return {k: torch.from_numpy(v) for k, v in self.arrays(rows, crop_idx, modalities).items()}

    def arrays(
        self,
        rows: np.ndarray | Sequence[int],
        crop_idx: np.ndarray | Sequence[int] | int,
        modalities: Iterable[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`batch` as int64 NumPy arrays: the training loader's read (its masking plan
        and patch gather are NumPy, so no tensor round trip per batch)."""
        r = np.asarray(rows, np.int64).reshape(-1)
        c = np.broadcast_to(np.asarray(crop_idx, np.int64), r.shape)
        if r.size and (r.min() < 0 or r.max() >= self.n_samples):
            raise IndexError(f"rows must lie in 0..{self.n_samples - 1}")
        if c.size and (c.min() < 0 or c.max() >= self.n_crops):
            raise IndexError(f"crop_idx must lie in 0..{self.n_crops - 1}")
        if self.check_valid and r.size and not self.valid[r].all():
            bad = r[~self.valid[r]][:5].tolist()
            raise ValueError(
                f"rows {bad} of {self.path} are invalid (no data or not committed); sample from store.valid_rows"
            )
        groups = None if self.mode == "memory" else _Groups(r, c, self.shard_samples)
        return {
            name: self._gather(name, r, c, groups).astype(np.int64)
            for name in self.array_names(modalities)
        }

    def array_names(self, modalities: Iterable[str] | None = None) -> tuple[str, ...]:
        """The arrays :meth:`arrays` returns for ``modalities``: each modality, its
        ``<name>_len`` for text, then ``crops`` (a modality not in the store: ``KeyError``)."""
        mods = (
            self.modalities
            if modalities is None
            else tuple(get_modality(m).name for m in modalities)
        )
        names: list[str] = []
        for name in mods:
            if name not in self.modalities:
                raise KeyError(
                    f"modality {name!r} is not in {self.path}; it holds {list(self.modalities)}"
                )
            names.append(name)
            if get_modality(name).layout is Layout.TEXT:
                names.append(name + LEN_SUFFIX)
        return (*names, "crops")

    def read_spans(
        self, spans: Sequence[tuple[int, int, int]], modalities: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Whole runs of rows, every crop: ``spans`` are ``(chunk, lo, hi)`` = rows
        ``lo:hi`` of chunk ``chunk`` (rows local to the chunk), concatenated in order.

        The block-shuffled loader's read (``model.data.BlockOrder``): a shuffle window is a
        few hundred chunks, and reading each chunk's rows in one ``preadv`` straight into the
        output (raw chunk files) costs one open/read/close per chunk and array instead of one
        per sample and array. Rows of a chunk file that was never written read as the fill
        value; the validity of rows is the caller's business (it reads spans of valid rows).
        Arrays keep their stored dtype; keys as :meth:`array_names`.
        """
        step = self.shard_samples
        for chunk, lo, hi in spans:
            if not (0 <= lo <= hi <= step and chunk >= 0 and chunk * step + hi <= self.n_samples):
                raise IndexError(f"span {(chunk, lo, hi)} lies outside {self.path}")
        total = sum(hi - lo for _, lo, hi in spans)
        out: dict[str, np.ndarray] = {}
        for name in self.array_names(modalities):
            info = self._info[name]
            buf = np.empty((total, *info.shape[1:]), info.dtype)
            full = self._full.get(name) if self.mode == "memory" else None
            if self.mode == "memory" and full is None:
                full = self._full[name] = self._read_all(name)
            o = 0
            for chunk, lo, hi in spans:
                n, g = hi - lo, chunk * step
                if n == 0:
                    continue
                if full is not None:
                    buf[o : o + n] = full[g + lo : g + hi]
                elif self.mode == "zarr" or not info.plain:
                    buf[o : o + n] = self._chunk(name, chunk)[lo:hi]
                else:
                    self._preadv_rows(name, chunk, lo, buf[o : o + n])
                o += n
            out[name] = buf
        return out

    def _preadv_rows(self, name: str, chunk: int, lo: int, dest: np.ndarray) -> None:
        """Rows ``lo:lo+len(dest)`` of a raw chunk file read straight into ``dest``."""
        info = self._info[name]
        fd = self._open_chunk(name, chunk)
        if fd is None:  # never written: the fill value
            dest[...] = info.fill_value
            return
        try:
            view = dest.reshape(-1).view(np.uint8).data  # contiguous rows: no copy
            offset = lo * info.records_per_row * info.record_bytes
            got = (
                os.preadv(fd, [view], offset)
                if hasattr(os, "preadv")
                else _pread_into(fd, view, offset)
            )
        finally:
            os.close(fd)
        if got != view.nbytes:
            raise OSError(
                f"{info.chunk_path(chunk)}: read {got} of {view.nbytes} bytes (a truncated chunk file)"
            )


class _Groups:
    """Requested (row, crop) pairs grouped by chunk once per batch, shared by every array.

    ``items`` = (chunk, output index, row in chunk, crop) with plain ints for chunks hit
    once (the common case of random batches: basic indexing is several times cheaper
    than a one-element fancy index) and index arrays otherwise.
    """

    def __init__(self, rows: np.ndarray, crops: np.ndarray, rows_per_chunk: int) -> None:
        self.rows_per_chunk = rows_per_chunk
        chunk_of = rows // rows_per_chunk
        local = rows - chunk_of * rows_per_chunk
        order = np.argsort(chunk_of, kind="stable")
        uniq, starts = np.unique(chunk_of[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        self.items: list[tuple[int, Any, Any, Any]] = []
        for chunk, a, b in zip(uniq.tolist(), starts.tolist(), ends.tolist()):
            if b - a == 1:
                i = int(order[a])
                self.items.append((chunk, i, int(local[i]), int(crops[i])))
            else:
                sel = order[a:b]
                self.items.append((chunk, sel, local[sel], crops[sel]))


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """``os.preadv`` for platforms without it (one copy)."""
    data = os.pread(fd, view.nbytes, offset)
    view[: len(data)] = data
    return len(data)


class _DirFd:
    """An open directory descriptor, closed when collected (pickled stores drop it)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.fd)


# --------------------------------------------------------------------------- chunk maps
#
# Python's ``mmap.mmap`` keeps a duplicate of the file descriptor for the life of the map, so
# mapping every chunk file of a store (11 per shard: 34k at 100k samples) would need that many
# descriptors. The kernel does not: a map outlives the descriptor it was made from. So chunk
# files are mapped with libc's ``mmap`` and the descriptor closed at once; what bounds maps is
# then the kernel's per-process map count (``vm.max_map_count``), shared by every store of the
# process through one budget that leaves room for the allocator and thread stacks.

_PROT_READ, _MAP_SHARED = 1, 1
#: maps left to the rest of the process (malloc arenas, thread stacks, libraries)
MAP_RESERVE = 8192
_DEFAULT_MAP_COUNT = 65530  # Linux's default vm.max_map_count
_LIBC: Any = None
_BUDGET: dict[str, int] = {}  # pid -> maps this process may still make ("pid" key: owner)


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC = libc
    return _LIBC


def _process_map_budget() -> int:
    """Maps this process may still make (computed once per process, then counted down)."""
    if _BUDGET.get("pid") != os.getpid():
        try:
            with open("/proc/sys/vm/max_map_count") as f:
                limit = int(f.read())
            with open(f"/proc/{os.getpid()}/maps", "rb") as f:
                in_use = sum(1 for _ in f)
        except (OSError, ValueError):  # not Linux: stay with descriptor-bounded defaults
            limit, in_use = _DEFAULT_MAP_COUNT, 0
        _BUDGET.update(pid=os.getpid(), left=max(0, limit - in_use - MAP_RESERVE))
    return _BUDGET["left"]


def _munmap_all(regions: list[tuple[int, int]]) -> None:
    libc = _libc()
    for addr, size in regions:
        libc.munmap(addr, size)
    if _BUDGET.get("pid") == os.getpid():
        _BUDGET["left"] += len(regions)
    regions.clear()


class _ChunkMaps:
    """Read-only maps of whole chunk files that hold no descriptor; unmapped when the
    last array over any of them is gone (each buffer references this owner)."""

    def __init__(self) -> None:
        import weakref

        self._regions: list[tuple[int, int]] = []
        self._pid = os.getpid()
        self._failed = False
        weakref.finalize(self, _munmap_all, self._regions)

    def can_map(self) -> bool:
        return not self._failed and os.name == "posix" and _process_map_budget() > 0

    def map(self, path: str) -> Any:
        """A writable-looking but read-only buffer over ``path``'s bytes (empty files: b"")."""
        import ctypes

        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return b""
            addr = _libc().mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        finally:
            os.close(fd)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            self._failed = True  # ENOMEM (map count) or similar: read the rest by pread
            raise _MapFailed(path)
        self._regions.append((addr, size))
        _BUDGET["left"] -= 1
        buf = (ctypes.c_char * size).from_address(addr)
        buf._owner = self  # type: ignore[attr-defined]  # keeps the maps alive with any view
        return buf


class _MapFailed(OSError):
    """The kernel refused a map (the process's map count): fall back to ``pread``."""
