"""Finishing a corpus build: merge the block parts into ``index.parquet`` /
``rejects.parquet`` (atomically, checked: accepted + rejected = planned, no row twice) and
tell a sound finished output from one whose tables must be merged again.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from terraloom.pipeline.build_layout import (
    all_blocks,
    file_sha256,
    final_path,
    pending_blocks,
    read_manifest,
)
from terraloom.pipeline.corpus_writer import (
    MarkerError,
    Where,
    merge_parts,
    read_markers,
    write_json_atomic,
)
from terraloom.schemas.tables import write_geoparquet
from terraloom.storage.location import Location


def _footer_rows(loc: Location) -> int:
    """Rows the Parquet footer of ``loc`` records (reads the footer only)."""
    with loc.open("rb") as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


__all__ = ["finalize", "finalized_problem", "is_finalized", "missing_modality_counts"]


def missing_modality_counts(index: pa.Table, split: str) -> dict[str, dict[str, int]]:
    """Accepted samples of ``split`` without an optional modality: modality -> reason -> n."""
    if "missing_modalities" not in index.schema.names:
        return {}
    counts: Counter[tuple[str, str]] = Counter()
    for s, entries in zip(
        index.column("split").to_pylist(), index.column("missing_modalities").to_pylist()
    ):
        if s == split:
            counts.update((e["modality"], e["reason"]) for e in entries or [])
    out: dict[str, dict[str, int]] = {}
    for (modality, reason), n in sorted(counts.items()):
        out.setdefault(modality, {})[reason] = n
    return out


def finalize(out: Where, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the block parts into ``index.parquet`` and ``rejects.parquet`` (atomically).

    Refuses while any block is uncommitted, and checks accepted + rejected = planned and
    that no row appears twice.
    """
    manifest = manifest or read_manifest(out)
    keys = all_blocks(manifest)
    missing = [str(k) for k in pending_blocks(out, manifest)]
    if missing:
        raise RuntimeError(
            f"cannot finalize: {len(missing)} blocks are not committed, e.g. {missing[:3]}"
        )
    committed: dict[str, Counter[str]] = {s: Counter() for s in manifest["splits"]}
    try:
        for k, m in zip(keys, read_markers(out, keys)):
            committed[k.split]["index"] += int(m["accepted"])
            committed[k.split]["rejects"] += sum(int(v) for v in m["rejected"].values())
        index = merge_parts(out, keys, "index")
        rejects = merge_parts(out, keys, "rejects")
    except (MarkerError, OSError, ValueError, pa.ArrowException) as exc:
        raise RuntimeError(
            f"cannot finalize: a block part or marker is damaged ({exc}); re-run the build with --verify-committed to redo it"
        ) from exc
    counts: dict[str, Any] = {}
    for split, info in manifest["splits"].items():
        acc = [
            r
            for s, r in zip(index.column("split").to_pylist(), index.column("row").to_pylist())
            if s == split
        ]
        rej = [
            r
            for s, r in zip(rejects.column("split").to_pylist(), rejects.column("row").to_pylist())
            if s == split
        ]
        if sorted(acc + rej) != list(range(info["n_samples"])):
            raise RuntimeError(
                f"split {split!r}: accepted ({len(acc)}) + rejected ({len(rej)}) rows do not cover the {info['n_samples']} planned rows exactly once"
            )
        want = committed[split]
        if (len(acc), len(rej)) != (want["index"], want["rejects"]):
            raise RuntimeError(
                f"split {split!r}: the parts hold {len(acc)} accepted and {len(rej)} rejected rows, the commit markers {want['index']} and {want['rejects']}; re-run the build with --verify-committed"
            )
        reasons = Counter(
            r
            for s, r in zip(
                rejects.column("split").to_pylist(), rejects.column("reason").to_pylist()
            )
            if s == split
        )
        counts[split] = {
            "planned": info["n_samples"],
            "accepted": len(acc),
            "rejected": dict(sorted(reasons.items())),
            "missing": missing_modality_counts(index, split),
        }
    tables: dict[str, dict[str, Any]] = {}
    for name, table in (("index", index), ("rejects", rejects)):
        path = Location.parse(out) / f"{name}.parquet"
        write_geoparquet(name, table, path)
        rows = _footer_rows(path)  # what was written reads back whole
        if rows != table.num_rows:
            raise RuntimeError(f"{path} reads back {rows} rows, {table.num_rows} were written")
        tables[name] = {"rows": table.num_rows, "bytes": path.size(), "sha256": file_sha256(path)}
    final = {
        "plan_sha256": manifest["plan_sha256"],
        "blocks": len(keys),
        "splits": counts,
        "tables": tables,
    }
    write_json_atomic(final_path(out), final)
    return final


def finalized_problem(out: Where, manifest: dict[str, Any], *, full: bool = False) -> str | None:
    """Why ``out`` is not a sound finished build (``None`` if it is): ``final.json`` is
    readable and of this plan, and index/rejects have the row count, size (``full``: the
    sha256) it recorded and a readable footer."""
    fp = final_path(out)
    try:
        final = json.loads(fp.read_bytes())
    except FileNotFoundError:
        return "not finalized"
    except ValueError as exc:
        return f"{fp.name} is damaged or of an older format ({type(exc).__name__})"
    try:
        tables = final["tables"]
        plan_ok = final["plan_sha256"] == manifest["plan_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{fp.name} is damaged or of an older format ({type(exc).__name__})"
    if not plan_ok:
        return f"{fp.name} is of another plan"
    for name in ("index", "rejects"):
        path = Location.parse(out) / f"{name}.parquet"
        try:
            want = tables[name]
            size = path.size()
            if size != want["bytes"]:
                return f"{path.name} is {size} bytes, {want['bytes']} were written"
            rows = _footer_rows(path)
            if rows != want["rows"]:
                return f"{path.name} has {rows} rows, {want['rows']} were written"
            if full and file_sha256(path) != want["sha256"]:
                return f"{path.name} sha256 differs from the one written"
        except FileNotFoundError:
            return f"{path.name} is missing"
        except (KeyError, TypeError) as exc:
            return f"{fp.name} is damaged ({type(exc).__name__})"
        except (OSError, pa.ArrowException) as exc:
            return f"{path.name} cannot be read: {exc}"
    return None


def is_finalized(out: Where, manifest: dict[str, Any]) -> bool:
    return finalized_problem(out, manifest) is None
