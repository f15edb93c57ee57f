"""Preparing a corpus build: config fingerprint, the lease, the frozen plan, the stores.

The driver's O(plan) work before any block runs: validate the plan, freeze a copy of it
into the output (one Parquet row group per block, so a worker reads just its rows),
create every split store template-first, and, on a resume, check that the output is of
this plan and config and that its committed blocks hold what their markers record.
Credentials never reach the manifest or a message (``storage.redact``). The plan and the
output are storage locations: the frozen plan goes to an object store as one upload, the
stores through zarr's fsspec store, nothing through a rename.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from terraloom.pipeline.build_config import (
    BuildConfig,
    follow_plan,
    planned_bands,
    planned_modalities,
    store_attrs,
)
from terraloom.pipeline.build_layout import (
    BUILD_DIR,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    BuildBusyError,
    BuildInputError,
    all_blocks,
    frozen_plan_path,
    lease_path,
    manifest_path,
    pending_blocks,
    read_manifest,
)
from terraloom.pipeline.corpus_writer import (
    BlockKey,
    Where,
    canonical_modalities,
    check_committed_block,
    create_split_store,
    n_blocks,
    open_split_store,
    split_store_path,
    write_json_atomic,
)
from terraloom.pipeline.plan_store import PlanStoreError, plan_fingerprint, plan_metadata, read_plan
from terraloom.pipeline.provenance import modality_sources
from terraloom.schemas.layouts import CORPUS_MODALITIES, DEFAULT_SHARD_SAMPLES, SPLITS
from terraloom.storage.lease import Lease, LeaseHeld
from terraloom.storage.lease import acquire as acquire_lease
from terraloom.storage.location import Location, LocationError
from terraloom.storage.redact import redact

__all__ = [
    "LEASE_TTL_S",
    "PLAN_ROWS_PER_GROUP",
    "acquire_build_lease",
    "blocks_per_row_group",
    "check_committed",
    "check_fresh_out",
    "config_digest",
    "config_for_plan",
    "config_modalities",
    "config_to_json",
    "prepare",
    "scope_config",
]

#: Lease time-to-live; the driver renews it every third of this while it runs, so only a
#: dead build's lease expires (on the same host a dead pid frees it at once).
LEASE_TTL_S = 120.0


#: Plan rows per Parquet row group of the frozen plan (rounded to whole blocks): small
#: enough that a worker decodes little beyond its block, large enough that the footer
#: stays small for millions of rows.
PLAN_ROWS_PER_GROUP = 4096


def config_to_json(config: Any) -> dict[str, Any]:
    """A JSON-comparable view of a config dataclass (tuples -> lists), credentials redacted.

    This is what the manifest stores and what clash messages show, so it never holds a
    secret (``gdal_options`` may carry an ``Authorization`` header or a cloud key)."""
    data = (
        dataclasses.asdict(config)
        if dataclasses.is_dataclass(config) and not isinstance(config, type)
        else dict(config)
    )
    out: dict[str, Any] = redact(json.loads(json.dumps(data, default=str)))
    return out


def config_digest(config_json: dict[str, Any]) -> str:
    """sha256 of a (redacted) config's canonical JSON: what a resume compares."""
    canon = json.dumps(redact(config_json), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def _short(v: Any, n: int = 60) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


def _as_mapping(v: Any) -> dict[str, Any] | None:
    """A dict, or a list of (key, value) pairs such as ``gdal_options``, as a dict."""
    if isinstance(v, dict):
        return v
    if isinstance(v, list) and v and all(isinstance(p, list) and len(p) == 2 for p in v):
        return {str(p[0]): p[1] for p in v}
    return None


def _config_differences(old: Any, new: dict[str, Any]) -> str:
    """``field: old -> new`` for each differing field, one level into mappings and pair
    lists (``gdal_options.KEY: ...``); both sides redacted."""
    old = redact(old) if isinstance(old, dict) else {}
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        ma, mb = _as_mapping(a), _as_mapping(b)
        if ma is not None and mb is not None:
            diffs += [
                f"{k}.{sub}: {_short(ma.get(sub))} -> {_short(mb.get(sub))}"
                for sub in sorted(set(ma) | set(mb))
                if ma.get(sub) != mb.get(sub)
            ] or [f"{k}: order differs"]
        else:
            diffs.append(f"{k}: {_short(a)} -> {_short(b)}")
    return "; ".join(diffs)


def scope_config(config: BuildConfig, plan_path: Where) -> BuildConfig:
    """The config workers get: its href policy scoped with the plan's recorded source
    scope (catalog root, schemes), so local hrefs stay under the catalog's root."""
    from terraloom.pipeline.hrefs import plan_scope

    policy = config.href_policy
    try:
        scope = plan_scope(plan_metadata(plan_path))
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise BuildInputError(f"{plan_path}: {exc}") from exc
    return dataclasses.replace(config, href_policy=policy.scoped(scope))


def config_for_plan(config: BuildConfig, plan_path: Where) -> BuildConfig:
    """``config`` with the modalities, required set and band subset it leaves at their
    defaults taken from what the plan was asked for (``build_config.follow_plan``)."""
    if not Location.parse(plan_path).exists():
        return config  # prepare says so, in its words
    try:
        meta = plan_metadata(plan_path)
        return follow_plan(config, planned_modalities(meta), planned_bands(meta))
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise BuildInputError(f"{plan_path}: {exc}") from exc


def config_modalities(config: BuildConfig) -> tuple[str, ...]:
    return canonical_modalities(config.modalities or CORPUS_MODALITIES)


def acquire_build_lease(out: Where, ttl: float = LEASE_TTL_S) -> Lease:
    """The exclusive lease of one build on ``out``; :class:`BuildBusyError` if another
    live build holds it."""
    try:
        return acquire_lease(lease_path(out), {"job": "terraloom-pipeline build"}, ttl=ttl)
    except LeaseHeld as exc:
        raise BuildBusyError(f"another build is running on {out}: {exc}") from exc


def _load_plan(plan_path: Location) -> pa.Table:
    """A ``plan.parquet`` file or a committed partitioned plan (``pipeline.plan_store``)."""
    if not plan_path.exists():
        raise BuildInputError(f"plan {plan_path} does not exist")
    try:
        plan = read_plan(plan_path)
    except (ValueError, KeyError, OSError, pa.ArrowException) as exc:
        raise BuildInputError(f"{plan_path} is not a valid plan table: {exc}") from exc
    return plan


def _split_sizes(plan: pa.Table) -> dict[str, int]:
    """Rows per split, checking that each split's rows are exactly 0..n-1."""
    sizes: dict[str, int] = {}
    splits = plan.column("split").to_pylist()
    rows = plan.column("row").to_pylist()
    ids = plan.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = [k for k, v in Counter(ids).items() if v > 1][:3]
        raise BuildInputError(f"plan has duplicate sample ids, e.g. {dup}")
    by_split: dict[str, list[int]] = {}
    for s, r in zip(splits, rows):
        by_split.setdefault(s, []).append(r)
    order = [s for s in SPLITS if s in by_split] + sorted(set(by_split) - set(SPLITS))
    for s in order:
        rs = sorted(by_split[s])
        if rs != list(range(len(rs))):
            raise BuildInputError(
                f"plan rows of split {s!r} are not exactly 0..{len(rs) - 1} (got {len(rs)} rows, min {rs[0]}, max {rs[-1]})"
            )
        sizes[s] = len(rs)
    return sizes


def blocks_per_row_group(shard_samples: int) -> int:
    return max(1, PLAN_ROWS_PER_GROUP // shard_samples)


def _freeze_plan(
    plan: pa.Table, sizes: dict[str, int], shard_samples: int, path: Location
) -> dict[str, int]:
    """Write the plan sorted by (split, row), row groups of whole blocks; return each
    split's first row group. Written to a temp file first, then renamed into place
    (locally) or uploaded as one object (a streamed multipart upload on object stores)."""
    if path.is_local:
        local = path.local_path
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
        offsets = _write_frozen(plan, sizes, shard_samples, str(tmp))
        os.replace(tmp, local)
        return offsets
    with tempfile.TemporaryDirectory(prefix="terraloom-plan-") as d:
        tmp_name = os.path.join(d, "plan.parquet")
        offsets = _write_frozen(plan, sizes, shard_samples, tmp_name)
        path.fs.put_file(tmp_name, path.path)
    return offsets


def _write_frozen(
    plan: pa.Table, sizes: dict[str, int], shard_samples: int, tmp: str
) -> dict[str, int]:
    offsets: dict[str, int] = {}
    rows_per_group = blocks_per_row_group(shard_samples) * shard_samples
    group = 0
    with pq.ParquetWriter(tmp, plan.schema, compression="zstd") as writer:
        for split, n in sizes.items():
            offsets[split] = group
            part = plan.filter(pc.equal(plan.column("split"), split)).sort_by("row")
            for a in range(0, n, rows_per_group):
                writer.write_table(part.slice(a, rows_per_group), row_group_size=rows_per_group)
                group += 1
    return offsets


def build_locations(plan: Where, out: Where) -> tuple[Location, Location]:
    """(plan, out) as locations; a bad URL or a read-only output is bad input, before anything
    is read or written."""
    try:
        plan_loc, out_loc = Location.parse(plan), Location.parse(out)
    except LocationError as exc:
        raise BuildInputError(str(exc)) from None
    if out_loc.read_only:
        raise BuildInputError(f"--out {out_loc} is read-only ({out_loc.scheme}://)")
    return plan_loc, out_loc


def prepare(
    plan_path: Where,
    out: Where,
    config: BuildConfig,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    lease: Lease | None = None,
) -> dict[str, Any]:
    """Validate the plan, freeze it into ``out``, create all split stores; return the manifest.

    Idempotent: against an existing output, the plan fingerprint, shard size and build
    config (compared redacted, by digest) must match (else :class:`BuildInputError`), and
    nothing is rewritten. Runs under the build's ``lease``; without one it takes the
    lease itself for its own duration (:class:`BuildBusyError` if another build holds it).
    """
    if shard_samples < 1:
        raise BuildInputError("shard_samples must be >= 1")
    plan_path, out = build_locations(plan_path, out)
    if not plan_path.exists():
        raise BuildInputError(f"plan {plan_path} does not exist")
    if not manifest_path(out).exists():
        check_fresh_out(out)  # before the lease creates anything in a foreign dir
    if lease is None:
        with acquire_build_lease(out) as own:
            return prepare(plan_path, out, config, shard_samples, own)
    try:
        sha = plan_fingerprint(plan_path)  # a dataset: its commit marker's (lists every part)
    except PlanStoreError as exc:
        raise BuildInputError(str(exc)) from exc
    cfg = config_to_json(config)
    modality_names = config_modalities(config)
    mpath = manifest_path(out)
    if mpath.exists():
        manifest = read_manifest(out)
        stored_cfg = manifest.get("config")
        got = {
            "plan_sha256": manifest.get("plan_sha256"),
            "shard_samples": manifest.get("shard_samples"),
            "config": config_digest(stored_cfg) if isinstance(stored_cfg, dict) else None,
        }
        want = {"plan_sha256": sha, "shard_samples": shard_samples, "config": config_digest(cfg)}
        clash = sorted(k for k in want if got[k] != want[k])
        if clash:
            details = []
            if "plan_sha256" in clash:
                details.append(f"plan sha256 {str(got['plan_sha256'])[:12]} -> {sha[:12]}")
            if "shard_samples" in clash:
                details.append(f"shard_samples {got['shard_samples']} -> {shard_samples}")
            if "config" in clash:
                details.append(f"config {_config_differences(stored_cfg, cfg)}")
            raise BuildInputError(
                f"{out} was built from a different {', '.join(clash)}; build into a fresh --out directory (differences: {'; '.join(details)})"
            )
    else:
        check_fresh_out(out)
        plan = _load_plan(plan_path)
        sizes = _split_sizes(plan)
        if not sizes:
            raise BuildInputError(f"plan {plan_path} has no rows")
        offsets = _freeze_plan(plan, sizes, shard_samples, frozen_plan_path(out))
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "plan_sha256": sha,
            # which source each modality came from (STAC collection or Earth Engine)
            "modality_sources": modality_sources(plan),
            "plan_source": redact(str(plan_path)),
            "shard_samples": shard_samples,
            "modalities": list(modality_names),
            "config": cfg,
            "config_sha256": config_digest(cfg),
            "splits": {
                s: {
                    "n_samples": n,
                    "n_blocks": n_blocks(n, shard_samples),
                    "row_group_offset": offsets[s],
                }
                for s, n in sizes.items()
            },
            "blocks_per_row_group": blocks_per_row_group(shard_samples),
            "stores_ready": False,
        }
        write_json_atomic(mpath, manifest)
    if not manifest.get("stores_ready"):
        # No worker has run yet, so a store left half-created by a killed prepare holds no
        # data: remove it and create it again.
        for split in manifest["splits"]:
            split_store_path(out, split).delete(recursive=True)
    for split, info in manifest["splits"].items():
        create_split_store(
            out,
            split,
            info["n_samples"],
            shard_samples,
            modality_names,
            attrs={"plan_sha256": sha, **store_attrs(config), **_sources_attr(manifest)},
        )
    if not manifest.get("stores_ready"):
        manifest["stores_ready"] = True
        write_json_atomic(mpath, manifest)
    return manifest


def _sources_attr(manifest: dict[str, Any]) -> dict[str, Any]:
    """The store attribute naming each modality's source (absent for manifests written
    before it was recorded, so their stores reopen unchanged)."""
    sources = manifest.get("modality_sources")
    return {"modality_sources": sources} if sources else {}


def check_fresh_out(out: Where) -> None:
    """A new build needs an empty (or absent) --out, or the leftovers of a killed prepare."""
    out = Location.parse(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise BuildInputError(f"--out {out} exists and is not a directory")
    other = [name for name in out.listdir() if name != BUILD_DIR]
    if other:
        raise BuildInputError(
            f"--out {out} is not empty and is not a terraloom build (holds {sorted(other)[:5]}); choose a fresh directory"
        )


def check_committed(
    out: Where, manifest: dict[str, Any], *, full: bool = False
) -> list[tuple[BlockKey, str]]:
    """Committed blocks that fail their check (cheap: marker parses, file sizes as
    recorded; ``full``: checksums and part row counts too), with the reason."""
    failed: list[tuple[BlockKey, str]] = []
    groups: dict[str, Any] = {}
    pending = set(pending_blocks(out, manifest))
    for key in all_blocks(manifest):
        if key in pending:
            continue
        if key.split not in groups:
            groups[key.split] = open_split_store(out, key.split)
        why = check_committed_block(out, key, groups[key.split], full=full)
        if why is not None:
            failed.append((key, why))
    return failed
