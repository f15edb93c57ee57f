"""Corpus writer: template-first split stores, whole-shard block writes, commit markers.

A *block* is the plan rows ``[k*S, min((k+1)*S, n))`` of one split (``S`` = shard
samples), i.e. exactly one shard of every sharded array and one chunk of the small
per-row arrays. Because rows are assigned by the plan, any worker writes its block with
one region write per array (``arr[a:b] = block``) and never touches another worker's
files: no locks, no read-modify-write races.

A block is *committed* by ``_parts/<split>/block-<k>.done``, a JSON object written last,
write-once (``storage.commit.write_once``: create-if-absent, so nothing relies on a rename
and of two writers of one block exactly one commits), after the shard data and the
block's index/rejects parts. A block without a marker is simply written again (whole
shards are overwritten), which is what makes a killed build resumable and a finished
build's re-run a no-op. ``out`` is any storage location (a local path, ``s3://``,
``gs://``, ``memory://`` ...); every path helper here returns a ``Location``.

A marker is a claim, not a proof: it records the size of every file of its block (each
array's shard and both table parts; ``None`` for a shard zarr elided because it holds
only fill values), so a resume can check each committed block with a few ``stat`` calls
(:func:`check_committed_block`) and, on request, against the block checksums, and redo
a block whose files were deleted, truncated, replaced or whose marker is damaged.

Blocks are assembled in :mod:`~terraloom.pipeline.block_assembly`; checksums
(:mod:`~terraloom.pipeline.checksums`) are CRC-32 of each array's value as stored: per sample
(the index row's ``checksums`` map, one entry per array) and per block (the marker, covering
rejected rows' fill values too).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pyarrow as pa

from terraloom.pipeline.checksums import CHECKSUM_ALGORITHM, checksum
from terraloom.pipeline.checksums import array_bytes as array_bytes  # re-exported
from terraloom.pipeline.checksums import canonicalize_nans as canonicalize_nans  # re-exported
from terraloom.schemas.layouts import (
    StoreLayout,
    corpus_layout,
    create_corpus_store,
)
from terraloom.schemas.modalities import MODALITY_NAMES
from terraloom.schemas.tables import from_rows, write_geoparquet
from terraloom.storage.commit import write_once
from terraloom.storage.location import Location

if TYPE_CHECKING:
    from terraloom.pipeline.block_assembly import AssembledBlock

#: Where a store lives: a local path or a location URL (``storage.location``).
Where = str | os.PathLike[str] | Location
_T = TypeVar("_T")

MARKER_FORMAT = "terraloom-block-commit"
#: 2: the marker records the size of each of the block's files (``files``).
MARKER_VERSION = 2
PARTS_DIR = "_parts"


@dataclass(frozen=True, order=True)
class BlockKey:
    """One unit of work, write and commit: shard block ``block`` of split ``split``."""

    split: str
    block: int

    def __str__(self) -> str:
        return f"{self.split}/block-{self.block}"


@dataclass
class BlockOutcome:
    """What happened to one block; summed by the engines into counters and the summary."""

    key: BlockKey
    n_rows: int
    accepted: int
    rejected: dict[str, int] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # already committed before this attempt: nothing written

    def counters(self) -> dict[str, int]:
        """Engine-independent counter values (Beam counters, Dask summary)."""
        out: dict[str, int] = {
            "blocks_written": 0 if self.skipped else 1,
            "blocks_skipped": 1 if self.skipped else 0,
            "samples_accepted": self.accepted,
            "samples_rejected": sum(self.rejected.values()),
        }
        for reason, n in self.rejected.items():
            out[f"samples_rejected_{reason}"] = n
        for name, value in self.stats.items():
            out[name] = int(round(value))
        return out


# --------------------------------------------------------------------------- paths


def split_store_path(out: Where, split: str) -> Location:
    return Location.parse(out) / f"{split}.zarr"


def parts_dir(out: Where, split: str) -> Location:
    return Location.parse(out) / f"{PARTS_DIR}/{split}"


def marker_path(out: Where, key: BlockKey) -> Location:
    return parts_dir(out, key.split) / f"block-{key.block}.done"


def part_rel(key: BlockKey, table: str) -> str:
    """A block's table part, relative to the output (the name its marker records)."""
    return f"{PARTS_DIR}/{key.split}/block-{key.block}.{table}.parquet"


def part_path(out: Where, key: BlockKey, table: str) -> Location:
    return Location.parse(out) / part_rel(key, table)


def open_split_store(out: Where, split: str, mode: Literal["r", "r+"] = "r") -> Any:
    """The zarr group of a split store (``LocalStore`` locally, fsspec on object stores)."""
    import zarr

    loc = split_store_path(out, split)
    return zarr.open_group(loc.zarr_store(read_only=mode == "r"), mode=mode)


def block_rows(key: BlockKey, n_samples: int, shard_samples: int) -> tuple[int, int]:
    """Row range ``[a, b)`` of a block."""
    a = key.block * shard_samples
    b = min(a + shard_samples, n_samples)
    if key.block < 0 or a >= n_samples:
        raise ValueError(f"block {key} is outside a split of {n_samples} rows")
    return a, b


def n_blocks(n_samples: int, shard_samples: int) -> int:
    return -(-n_samples // shard_samples)


def write_bytes_atomic(path: Where, data: bytes) -> None:
    """Write a file so readers see either nothing or all of it: locally tmp + fsync +
    rename; on an object store one PUT, which is already whole or absent."""
    loc = Location.parse(path)
    if not loc.is_local:
        loc.write_bytes(data)
        return
    path = loc.local_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_json_atomic(path: Where, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


# --------------------------------------------------------------------------- stores


def canonical_modalities(names: Iterable[str]) -> tuple[str, ...]:
    """Modality names in registry order (the store layout depends on the order)."""
    wanted = {n.upper() for n in names}
    unknown = wanted - {m.upper() for m in MODALITY_NAMES}
    if unknown:
        raise ValueError(
            f"unknown modalities {sorted(unknown)}; valid: {', '.join(MODALITY_NAMES)}"
        )
    return tuple(m for m in MODALITY_NAMES if m.upper() in wanted)


def create_split_store(
    out: Where,
    split: str,
    n_samples: int,
    shard_samples: int,
    modality_names: Sequence[str],
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """Create (or reopen, if identical) ``<out>/<split>.zarr`` template-first.

    ``attrs`` (e.g. the plan fingerprint) must match those of an existing store, so a
    resumed build can never mix the shards of two different plans.
    """
    path = split_store_path(out, split)
    extra = {**dict(attrs or {}), "checksum_algorithm": CHECKSUM_ALGORITHM}
    group = create_corpus_store(
        path,
        n_samples=n_samples,
        shard_samples=shard_samples,
        split=split,
        modality_names=tuple(modality_names),
        attrs=extra,
    )
    existing = dict(group.attrs)
    clash = {k: (existing.get(k), v) for k, v in extra.items() if existing.get(k) != v}
    if clash:
        raise ValueError(
            f"existing store {path} was created with different attributes {clash}; build into a fresh --out directory"
        )
    return group


def store_layout(group: Any) -> StoreLayout:
    """The layout a split store was created with (from its group attributes)."""
    a = dict(group.attrs)
    return corpus_layout(
        int(a["n_samples"]),
        int(a["shard_samples"]),
        tuple(a["modalities"]),
        str(a["split"]),
        int(a.get("format_version", 1)),
    )


def per_sample_arrays(group: Any) -> list[str]:
    """Names of a split store's arrays with a sample axis, sorted: what blocks write,
    commit and checksum. Coordinate labels (``s2l2a_band``, ``affine``, ...) are
    written once with the template and belong to no block."""
    names = []
    for name in sorted(group.array_keys()):
        dims = tuple(group[name].metadata.dimension_names or ())
        if dims[:1] == ("sample",):
            names.append(name)
    return names


# --------------------------------------------------------------------------- writing


def is_committed(out: Where, key: BlockKey) -> bool:
    """A marker exists (whether it is sound is :func:`check_committed_block`'s question)."""
    return marker_path(out, key).exists()


def committed_blocks(out: Where, split: str) -> set[int]:
    """The blocks of ``split`` whose commit marker exists, from one listing (not a request
    per block: on an object store, one round trip instead of thousands)."""
    found = set()
    for name in parts_dir(out, split).listdir():
        stem = name[len("block-") : -len(".done")]
        if name.startswith("block-") and name.endswith(".done") and stem.isdigit():
            found.add(int(stem))
    return found


class MarkerError(ValueError):
    """A commit marker that cannot be read or does not describe its block."""


def read_marker(out: Where, key: BlockKey) -> dict[str, Any]:
    """The commit marker of ``key``; :class:`MarkerError` if it is damaged or not its own."""
    try:
        data = json.loads(marker_path(out, key).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MarkerError(f"{key}: commit marker is damaged (not JSON: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        raise MarkerError(f"{key}: commit marker is damaged (not a {MARKER_FORMAT} object)")
    try:
        ok = (
            data["split"] == key.split
            and int(data["block"]) == key.block
            and int(data["row_stop"]) > int(data["row_start"]) >= 0
            and int(data["accepted"]) >= 0
            and isinstance(data["rejected"], dict)
            and isinstance(data["checksums"], dict)
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise MarkerError(f"{key}: commit marker is damaged (fields missing or not its block)")
    return data


def block_storage_keys(group: Any, key: BlockKey) -> dict[str, list[str]]:
    """Per array, the store keys (``<array>/c/<k>/0/...``) of the shards holding block ``key``.

    Every array is stored in units of one block along the sample axis (a shard, or a chunk
    for the small per-row arrays); the other axes may span several units.
    """
    out: dict[str, list[str]] = {}
    for name in per_sample_arrays(group):
        arr = group[name]
        md = arr.metadata
        unit = tuple(md.chunk_grid.chunk_shape)
        rest = [range(-(-int(n) // int(c))) for n, c in zip(arr.shape[1:], unit[1:])]
        out[name] = [
            f"{name}/{md.encode_chunk_key((key.block, *idx))}" for idx in itertools.product(*rest)
        ]
    return out


def block_files(
    out: Where, key: BlockKey, group: Any, written: Mapping[str, int | None] | None = None
) -> dict[str, int | None]:
    """Size of every file of a block (``None``: absent), keyed by path relative to ``out``.

    ``written``: sizes of the split store's keys as the block write recorded them
    (``split_handle.BlockWriteStore``), which spares a ``stat`` (a HEAD on an object store)
    per shard; any other file is asked for its size."""
    root = Location.parse(out)
    store = split_store_path(root, key.split).name
    known = written or {}
    sizes: dict[str, int | None] = {}
    rels: list[str] = []
    for keys in block_storage_keys(group, key).values():
        for k in keys:
            if k in known:
                sizes[f"{store}/{k}"] = known[k]
            else:
                rels.append(f"{store}/{k}")
    rels += [part_rel(key, t) for t in ("index", "rejects")]
    for rel in rels:
        try:
            sizes[rel] = (root / rel).size()
        except FileNotFoundError:
            sizes[rel] = None
    return sizes


def _describe(rel: str, got: int | None, want: int | None) -> str:
    if want is not None and got is None:
        return f"{rel} is missing"
    if want is None:
        return f"{rel} exists ({got} bytes) but was absent (all fill) at commit"
    return f"{rel} is {got} bytes, committed {want}"


def check_committed_block(
    out: Where, key: BlockKey, group: Any = None, *, full: bool = False
) -> str | None:
    """Why the committed block ``key`` cannot be trusted, or ``None`` if it checks out.

    Cheap by default: the marker parses and every file of the block has the size it
    recorded. ``full`` also reads the block back and compares its checksums and the
    table parts' row counts with the marker. A block without a marker is not committed and
    not this function's business (``None``).
    """
    if not is_committed(out, key):
        return None
    try:
        marker = read_marker(out, key)
    except (MarkerError, OSError) as exc:
        return str(exc) if isinstance(exc, MarkerError) else f"{key}: marker unreadable: {exc}"
    if group is None:
        group = open_split_store(out, key.split)
    recorded = marker.get("files")
    if isinstance(recorded, dict):
        now = block_files(out, key, group)
        bad = [
            _describe(r, now.get(r), recorded.get(r))
            for r in sorted(set(now) | set(recorded))
            if now.get(r) != recorded.get(r)
        ]
        if bad:
            more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
            return f"{key}: {bad[0]}{more}"
    else:  # a version-1 marker records no sizes: at least the parts must be there
        for t in ("index", "rejects"):
            if not part_path(out, key, t).exists():
                return f"{key}: {part_path(out, key, t).name} is missing"
    if not full:
        return None
    a, b = int(marker["row_start"]), int(marker["row_stop"])
    want = marker["checksums"]
    for name in per_sample_arrays(group):
        try:
            got = checksum(group[name][a:b])
        except Exception as exc:  # a corrupt shard, whatever the codec raises
            return f"{key}: array {name!r} cannot be read: {type(exc).__name__}: {exc}"
        if want.get(name) != got:
            return f"{key}: array {name!r} checksum {got} != committed {want.get(name)}"
    from terraloom.schemas.tables import read_table

    n_rejected = sum(int(v) for v in marker["rejected"].values())
    for t, n in (("index", int(marker["accepted"])), ("rejects", n_rejected)):
        try:
            rows = read_table(t, part_path(out, key, t)).num_rows
        except Exception as exc:  # a damaged part, whatever pyarrow raises
            return f"{key}: {t} part cannot be read: {type(exc).__name__}: {exc}"
        if rows != n:
            return f"{key}: {t} part has {rows} rows, the marker says {n}"
    return None


def outcome_from_marker(out: Where, key: BlockKey, skipped: bool = True) -> BlockOutcome:
    m = read_marker(out, key)
    return BlockOutcome(
        key,
        int(m["row_stop"]) - int(m["row_start"]),
        int(m["accepted"]),
        dict(m["rejected"]),
        {},
        skipped=skipped,
    )


def write_block(group: Any, block: AssembledBlock, out: Where) -> BlockOutcome:
    """Write one assembled block: shard data, index/rejects parts, then the commit marker.

    ``group`` is the split store: an open zarr group or, on a worker, the
    ``split_handle.SplitHandle`` it opened once. Each array gets exactly one region write
    covering its whole shard (or the last, partial one), through a per-block
    ``BlockWriteStore`` that never reads the shards it replaces, so a re-run replaces
    whatever a killed attempt (a torn file) or a damage found on resume left behind, and a
    fresh block on an object store costs one PUT per shard and nothing else. A whole shard
    of a sharded array is encoded by ``shard_write`` (zarr's codecs without its per-chunk
    indexing; the same bytes), the rest by zarr's ``setitem``.
    """
    from terraloom.pipeline.shard_write import write_block_arrays
    from terraloom.pipeline.split_handle import BlockWriteStore, split_handle_of

    key = block.key
    t0 = time.perf_counter()
    handle = split_handle_of(group)
    shard_keys = block_storage_keys(handle, key)
    store = BlockWriteStore(handle.store, frozenset(k for ks in shard_keys.values() for k in ks))
    write_block_arrays(handle, store, block.start, block.stop, block.arrays)
    t1 = time.perf_counter()
    block_sums = {
        name: block.checksums.get(name) or checksum(value) for name, value in block.arrays.items()
    }
    write_geoparquet("index", from_rows("index", block.index_rows), part_path(out, key, "index"))
    write_geoparquet(
        "rejects", from_rows("rejects", block.reject_rows), part_path(out, key, "rejects")
    )
    t2 = time.perf_counter()
    rejected = dict(sorted(Counter(r["reason"] for r in block.reject_rows).items()))
    stats = {
        **block.stats,
        "msec_write": (t1 - t0) * 1e3,
        "msec_parts": (t2 - t1) * 1e3,
        "bytes_written": float(sum(v.nbytes for v in block.arrays.values())),
    }
    files = block_files(out, key, handle, store.written)
    marker = {
        "files": files,
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "split": key.split,
        "block": key.block,
        "row_start": block.start,
        "row_stop": block.stop,
        "accepted": len(block.index_rows),
        "rejected": rejected,
        "checksum_algorithm": CHECKSUM_ALGORITHM,
        "checksums": block_sums,
        "stats": {k: round(v, 3) for k, v in sorted(stats.items())},
    }
    # create-if-absent: a concurrent writer of the same block (same plan, same bytes) may
    # have committed first; its marker stands
    write_once(marker_path(out, key), json_bytes(marker))
    return BlockOutcome(key, block.stop - block.start, len(block.index_rows), rejected, stats)


# --------------------------------------------------------------------------- merging


def _map_io(out: Where, fn: Callable[[Any], _T], items: Sequence[Any]) -> list[_T]:
    """``[fn(x) for x in items]``, overlapped on an object store, where each is a few small
    requests in turn (the driver of a build of thousands of blocks reads a marker and two
    parts per block); in order, and the first exception raised as is."""
    if len(items) < 2 or Location.parse(out).is_local:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, len(items))) as pool:
        return list(pool.map(fn, items))


def read_markers(out: Where, keys: Sequence[BlockKey]) -> list[dict[str, Any]]:
    """:func:`read_marker` of every key, in order (read concurrently from object stores)."""
    return _map_io(out, lambda k: read_marker(out, k), keys)


def merge_parts(out: Where, keys: Sequence[BlockKey], table: str) -> pa.Table:
    """Concatenate the per-block parts of ``table`` ('index' or 'rejects'), sorted by (split, row)."""
    from terraloom.schemas.tables import empty_table, read_table

    def read(path: Location) -> pa.Table:
        if path.is_local:
            return read_table(table, path)
        # a part is small: one whole-object read, not arrow's file-info and ranged requests
        return read_table(table, pa.BufferReader(path.read_bytes()))  # type: ignore[arg-type]

    parts = _map_io(out, read, [part_path(out, k, table) for k in sorted(keys)])
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return empty_table(table)
    merged = pa.concat_tables(parts)
    return merged.sort_by([("split", "ascending"), ("row", "ascending")])
