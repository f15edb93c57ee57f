"""Verify a built corpus: layout, commit markers, index/rejects consistency, checksums.

Everything is recomputed from what is on disk: each committed block's arrays are read
back (so undecodable shards are caught), hashed per block against the commit marker
and per sample against the index row's ``checksums``; ``valid`` must be True exactly on
the index rows; accepted + rejected must cover the plan exactly once. The corpus is any
storage location (local disk or an object store).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terraloom.pipeline.build import (
    BuildInputError,
    all_blocks,
    finalized_problem,
    read_manifest,
    read_plan_block,
)
from terraloom.pipeline.corpus_writer import (
    MarkerError,
    array_bytes,
    block_rows,
    check_committed_block,
    checksum,
    committed_blocks,
    open_split_store,
    per_sample_arrays,
    read_marker,
    split_store_path,
)
from terraloom.schemas.layouts import validate_corpus
from terraloom.schemas.tables import read_table
from terraloom.storage.location import Location


@dataclass
class VerifyReport:
    """Findings (empty = the corpus is sound) and how much was checked."""

    findings: list[str] = field(default_factory=list)
    blocks_checked: int = 0
    samples_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings


def _rows_by_split(table: Any) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in table.to_pylist():
        out.setdefault(r["split"], {})[int(r["row"])] = r
    return out


def verify_corpus(
    out: str | os.PathLike[str] | Location, *, checksums: bool = True, progress: bool = False
) -> VerifyReport:
    """Check a build output (a directory or URL); never raises for a defect, reports it."""
    out = Location.parse(out)
    report = VerifyReport()
    f = report.findings
    try:
        manifest = read_manifest(out)
    except (BuildInputError, ValueError, OSError) as exc:
        f.append(str(exc))
        return report
    tables: dict[str, Any] = {}
    for name in ("index", "rejects"):
        try:
            tables[name] = read_table(name, out / f"{name}.parquet")
        except (OSError, ValueError) as exc:
            f.append(f"{name}.parquet: cannot read: {exc}")
    if tables:
        problem = finalized_problem(out, manifest, full=checksums)
        if problem is not None:
            f.append(f"index/rejects: {problem}; re-run build to merge them again")
    index = _rows_by_split(tables["index"]) if "index" in tables else {}
    rejects = _rows_by_split(tables["rejects"]) if "rejects" in tables else {}
    keys = all_blocks(manifest)
    bar = None
    if progress and checksums:
        from tqdm import tqdm

        bar = tqdm(total=len(keys), unit="block", desc="verify", file=sys.stderr)
    for split, info in manifest["splits"].items():
        n = int(info["n_samples"])
        path = split_store_path(out, split)
        layout_findings = validate_corpus(path)
        f.extend(f"{split}.zarr: {x}" for x in layout_findings)
        if layout_findings:
            continue
        group = open_split_store(out, split)
        attrs: dict[str, Any] = dict(group.attrs)
        s = int(attrs["shard_samples"])
        if int(attrs["n_samples"]) != n:
            f.append(
                f"{split}.zarr: n_samples {group.attrs['n_samples']} but the plan has {n} rows"
            )
            continue
        acc, rej = index.get(split, {}), rejects.get(split, {})
        both = set(acc) & set(rej)
        if both:
            f.append(f"{split}: rows both accepted and rejected, e.g. {sorted(both)[:5]}")
        if tables and set(acc) | set(rej) != set(range(n)):
            f.append(
                f"{split}: accepted ({len(acc)}) + rejected ({len(rej)}) rows do not cover the {n} planned rows"
            )
        done = committed_blocks(out, split)
        for key in (k for k in keys if k.split == split):
            if key.block not in done:
                f.append(f"{key}: not committed (no commit marker); re-run build to resume")
                if bar is not None:
                    bar.update()
                continue
            try:
                marker = read_marker(out, key)
            except (MarkerError, OSError) as exc:
                why = str(exc) if isinstance(exc, MarkerError) else f"{key}: {exc}"
                f.append(f"{why}; re-run build to redo the block")
                if bar is not None:
                    bar.update()
                continue
            damage = check_committed_block(out, key, group)  # files there, sizes as committed
            if damage is not None:
                f.append(f"{damage}; re-run build to redo the block")
            a, b = block_rows(key, n, s)
            plan_ids = {int(r["row"]): r["sample_id"] for r in read_plan_block(out, key, manifest)}
            for row in range(a, b):
                got = acc.get(row) or rej.get(row)
                if got is not None and got["sample_id"] != plan_ids[row]:
                    f.append(
                        f"{key}: row {row} is {got['sample_id']!r} in the tables but {plan_ids[row]!r} in the plan"
                    )
            if checksums:
                _verify_block(group, key, a, b, marker, acc, report)
            report.blocks_checked += 1
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    extra = set(index) | set(rejects)
    extra -= set(manifest["splits"])
    if extra:
        f.append(f"tables have rows of splits not in the plan: {sorted(extra)}")
    return report


def _verify_block(
    group: Any,
    key: Any,
    a: int,
    b: int,
    marker: dict[str, Any],
    acc: dict[int, dict[str, Any]],
    report: VerifyReport,
) -> None:
    f = report.findings
    want = marker.get("checksums", {})
    valid: np.ndarray | None = None
    for name in per_sample_arrays(group):
        try:
            x = group[name][a:b]
        except Exception as exc:  # a corrupt shard must be a finding, whatever the codec raises
            f.append(f"{key}: array {name!r} cannot be read: {type(exc).__name__}: {exc}")
            continue
        if want.get(name) != checksum(x):
            f.append(f"{key}: array {name!r} checksum {checksum(x)} != committed {want.get(name)}")
        if name == "valid":
            valid = x
        for row in range(a, b):
            r = acc.get(row)
            if r is None:
                continue
            sums = dict(r["checksums"] or [])
            if sums.get(name) != checksum(x[row - a]):
                f.append(
                    f"{key}: sample {r['sample_id']} (row {row}) array {name!r} checksum differs from the index"
                )
    if valid is not None:
        bad = [row for row in range(a, b) if bool(valid[row - a]) != (row in acc)]
        if bad:
            f.append(f"{key}: 'valid' disagrees with index.parquet at rows {bad[:5]}")
    report.samples_checked += sum(1 for row in range(a, b) if row in acc)


def array_digests(out: str | os.PathLike[str] | Location) -> dict[str, str]:
    """sha256 of every array of every split store (read block by block), for comparing builds."""
    manifest = read_manifest(out)
    digests: dict[str, str] = {}
    for split in manifest["splits"]:
        group = open_split_store(out, split)
        attrs: dict[str, Any] = dict(group.attrs)
        s, n = int(attrs["shard_samples"]), int(attrs["n_samples"])
        for name in per_sample_arrays(group):
            h = hashlib.sha256()
            arr: Any = group[name]
            for a in range(0, n, s):
                h.update(array_bytes(arr[a : min(a + s, n)]))
            digests[f"{split}/{name}"] = h.hexdigest()
    return digests
