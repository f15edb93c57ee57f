"""The partitioned plan: a directory of GeoParquet files, one per block, and a commit marker.

A plan of a continent is written by many workers, one block of grid cells each, so it is a
dataset rather than one file::

    plan/_job.json                 what is being planned (source, region, period, config digest)
    plan/_blocks/<block>.parquet   a block's rows as planned (split and row not yet assigned)
    plan/_blocks/<block>.json      its commit marker (rows, bytes, sha256, skipped items),
                                   written after the data: a block with one is done
    plan/part-<block>.parquet      the final rows of a block (split, row assigned), a valid
                                   plan GeoParquet file on its own
    plan/_plan.json                the dataset's commit marker: its parts with their row
                                   counts and sha256, written last

A killed plan resumes by re-running it: blocks with a valid marker are not planned again
(their searches are not asked again). ``_plan.json`` is written only when every part is,
so a reader never sees half a plan. :func:`read_plan` reads a dataset or a single
``plan.parquet`` alike; the build reads plans through it. Every path here is a storage
location (a local path, ``s3://``, ``gs://``, ``memory://`` ...): markers are single
whole-object writes, so nothing relies on a rename.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from terraloom.pipeline.corpus_writer import Where, write_json_atomic
from terraloom.schemas.layouts import SPLITS
from terraloom.schemas.tables import from_rows, read_table, write_geoparquet
from terraloom.storage.location import Location

DATASET_FORMAT = "terraloom-plan-dataset"
DATASET_VERSION = 1
COMMIT_FILE = "_plan.json"
JOB_FILE = "_job.json"
BLOCKS_DIR = "_blocks"


class PlanStoreError(ValueError):
    """A plan dataset is missing, uncommitted, damaged or belongs to another job."""


def is_dataset(path: Where) -> bool:
    """Whether ``path`` names a partitioned plan (a directory, or on an object store a
    prefix with objects below it), not one ``plan.parquet``."""
    p = Location.parse(path)
    if p.is_dir():
        return True
    return not p.exists() and not p.name.lower().endswith(".parquet")


def sha256_file(path: Where) -> str:
    """sha256 of a file's (an object's) bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with Location.parse(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Location) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # torn or foreign: treated as absent (the block is planned again)
    return data if isinstance(data, dict) else None


# --- the job ----------------------------------------------------------------------------------


def open_job(root: Where, job: Mapping[str, Any]) -> None:
    """Start or resume the job ``job`` (a JSON-able description) in ``root``: a directory
    holding another job's plan is refused instead of mixing two plans."""
    r = Location.parse(root)
    if r.exists() and not r.is_dir():
        raise PlanStoreError(f"{r} exists and is not a plan directory")
    current = _read_json(r / JOB_FILE)
    if current is None:
        if any(name not in (BLOCKS_DIR,) for name in r.listdir()):
            raise PlanStoreError(
                f"{r} is not empty and holds no plan job; plan into a new directory"
            )
        write_json_atomic(r / JOB_FILE, dict(job))
        return
    want = json.loads(json.dumps(dict(job), sort_keys=True, default=str))
    if current != want:
        diffs = sorted(k for k in set(current) | set(want) if current.get(k) != want.get(k))
        raise PlanStoreError(
            f"{r} holds a plan of another job (differs in {', '.join(diffs)}); "
            "plan into a new directory"
        )


# --- blocks -----------------------------------------------------------------------------------


def block_path(root: Where, name: str) -> Location:
    return Location.parse(root) / f"{BLOCKS_DIR}/{name}.parquet"


def block_marker_path(root: Where, name: str) -> Location:
    return Location.parse(root) / f"{BLOCKS_DIR}/{name}.json"


def write_block(
    root: Where,
    name: str,
    rows: Sequence[dict[str, Any]],
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a planned block's rows, then its marker (data first: a marker means done)."""
    path = block_path(root, name)
    write_geoparquet("plan", from_rows("plan", rows), path)
    marker = {
        "block": name,
        "rows": len(rows),
        "bytes": path.size(),
        "sha256": sha256_file(path),
        **dict(info or {}),
    }
    write_json_atomic(block_marker_path(root, name), marker)
    return marker


def block_done(root: Where, name: str) -> dict[str, Any] | None:
    """A block's marker when the block is committed and its file has the recorded size."""
    marker = _read_json(block_marker_path(root, name))
    if marker is None:
        return None
    try:
        size = block_path(root, name).size()
    except OSError:
        return None
    return marker if marker.get("bytes") == size else None


def read_block(root: Where, name: str) -> pa.Table:
    return read_table("plan", block_path(root, name))


# --- the dataset --------------------------------------------------------------------------------


def part_name(block: str) -> str:
    return f"part-{block}.parquet"


def commit(
    root: Where,
    parts: Iterable[tuple[str, pa.Table]],
    metadata: Mapping[bytes, bytes],
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the final parts (split and row assigned; empty ones left out) and then the
    dataset's commit marker. Each part carries the plan's schema metadata (href scope)."""
    r = Location.parse(root)
    listed = []
    for block, table in parts:
        if table.num_rows == 0:
            continue
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        path = r / part_name(block)
        write_geoparquet("plan", table, path)
        listed.append(
            {
                "file": path.name,
                "block": block,
                "rows": table.num_rows,
                "bytes": path.size(),
                "sha256": sha256_file(path),
            }
        )
    doc = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "rows": sum(p["rows"] for p in listed),
        "parts": listed,
        "metadata": {k.decode(): v.decode() for k, v in metadata.items()},
        **dict(info or {}),
    }
    write_json_atomic(r / COMMIT_FILE, doc)
    return doc


def read_commit(root: Where) -> dict[str, Any]:
    r = Location.parse(root)
    doc = _read_json(r / COMMIT_FILE)
    if doc is None:
        if (r / JOB_FILE).exists():
            raise PlanStoreError(
                f"plan {r} is not committed (planning did not finish); re-run the plan to resume it"
            )
        raise PlanStoreError(f"{r} is not a plan dataset (no {COMMIT_FILE})")
    if doc.get("format") != DATASET_FORMAT or not isinstance(doc.get("parts"), list):
        raise PlanStoreError(f"{r / COMMIT_FILE} is not a {DATASET_FORMAT} marker")
    return doc


def is_committed(root: Where) -> bool:
    try:
        read_commit(root)
    except PlanStoreError:
        return False
    return True


def plan_fingerprint(path: Where) -> str:
    """sha256 of a plan: of the file, or of a dataset's commit marker (which lists every
    part's sha256)."""
    p = Location.parse(path)
    if p.is_dir():
        read_commit(p)
        return sha256_file(p / COMMIT_FILE)
    return sha256_file(p)


def plan_metadata(path: Where) -> dict[bytes, bytes]:
    """The plan's schema metadata (its source's href scope) without reading its rows."""
    p = Location.parse(path)
    if p.is_dir():
        meta = read_commit(p).get("metadata") or {}
        return {str(k).encode(): str(v).encode() for k, v in dict(meta).items()}
    if p.is_local:
        return dict(pq.read_schema(p.path).metadata or {})
    fs, key = p.arrow_filesystem()
    return dict(pq.read_schema(key, filesystem=fs).metadata or {})


def _sorted(table: pa.Table) -> pa.Table:
    order = {s: i for i, s in enumerate(SPLITS)}
    rank = pa.array([order.get(s, len(order)) for s in table.column("split").to_pylist()])
    keyed = table.append_column("__split_rank", rank)
    return keyed.sort_by([("__split_rank", "ascending"), ("row", "ascending")]).drop_columns(
        ["__split_rank"]
    )


def read_plan(path: Where) -> pa.Table:
    """A plan as one table sorted by (split, row): a ``plan.parquet`` file or a committed
    dataset (every listed part checked against its recorded size)."""
    p = Location.parse(path)
    if not p.is_dir():
        return read_table("plan", p)
    doc = read_commit(p)
    tables = []
    for part in doc["parts"]:
        name = str(part.get("file", ""))
        if not name or PurePosixPath(name).name != name or name in (".", ".."):
            raise PlanStoreError(f"plan {p}: part {part.get('file')!r} is missing")
        f = p / name
        try:
            size = f.size()
        except (FileNotFoundError, IsADirectoryError):
            raise PlanStoreError(f"plan {p}: part {part.get('file')!r} is missing") from None
        if size != part.get("bytes"):
            raise PlanStoreError(f"plan {p}: part {f.name} does not have its recorded size")
        tables.append(read_table("plan", f))
    if not tables:
        return from_rows("plan", []).replace_schema_metadata(plan_metadata(p))
    table = pa.concat_tables(tables)
    if table.num_rows != doc.get("rows"):
        raise PlanStoreError(f"plan {p}: {table.num_rows} rows, the marker says {doc.get('rows')}")
    table = _sorted(table)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **plan_metadata(p)})


def part_rows(table: pa.Table, numbers: Mapping[str, tuple[str, int]]) -> pa.Table:
    """A block's kept rows with their split and row filled in, sorted by (split, row)."""
    ids = table.column("sample_id").to_pylist()
    keep = [sid in numbers for sid in ids]
    t = table.filter(pa.array(keep, pa.bool_())) if not all(keep) else table
    ids = t.column("sample_id").to_pylist()
    split = pa.array([numbers[s][0] for s in ids], t.schema.field("split").type)
    row = pa.array([numbers[s][1] for s in ids], t.schema.field("row").type)
    t = t.set_column(t.schema.get_field_index("split"), t.schema.field("split"), split)
    t = t.set_column(t.schema.get_field_index("row"), t.schema.field("row"), row)
    return _sorted(t)


def kept_ids(table: pa.Table, keep_unmatched: bool) -> Iterable[tuple[str, str]]:
    """(sample id, cell id) of a block's rows that stay in the plan."""
    ids = table.column("sample_id").to_pylist()
    cells = table.column("cell_id").to_pylist()
    if keep_unmatched:
        return zip(ids, cells)
    n_unmatched = pc.list_value_length(table.column("unmatched")).to_pylist()
    return ((s, c) for s, c, n in zip(ids, cells, n_unmatched) if not n)


__all__ = [
    "BLOCKS_DIR",
    "COMMIT_FILE",
    "JOB_FILE",
    "PlanStoreError",
    "block_done",
    "block_path",
    "commit",
    "is_committed",
    "is_dataset",
    "kept_ids",
    "open_job",
    "part_rows",
    "plan_fingerprint",
    "plan_metadata",
    "read_block",
    "read_commit",
    "read_plan",
    "write_block",
]
