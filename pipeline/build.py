"""Build orchestration: plan -> split stores -> pending blocks -> engine -> index/rejects.

The driver does only cheap, O(plan) work: it validates the plan, freezes a copy of it
into the output (one Parquet row group per block, so a worker reads just its rows),
creates every split store template-first, lists the blocks without a commit marker, hands
them to an engine and, when all blocks are committed, merges the per-block parts into
``index.parquet`` / ``rejects.parquet`` atomically. Engines call exactly one function per
block, :func:`process_block`, so Beam and Dask produce the same bytes.

Output layout::

    out/<split>.zarr                      corpus split stores (schemas.layouts)
    out/index.parquet, out/rejects.parquet
    out/_build/manifest.json              plan fingerprint, shard size, build config
    out/_build/plan.parquet               the plan, sorted by (split, row), row group = block
    out/_build/final.json                 written after the merge: a re-run is a no-op
    out/_build/lease.json                 while a build runs: who holds the output (storage.lease)
    out/_parts/<split>/block-<k>.{index,rejects}.parquet, block-<k>.done

One build at a time owns an output: ``run_build`` holds an exclusive lease on it from
prepare to finalize, so a second build refuses (one line, exit 2) instead of racing. A
resume does not trust its commit markers blindly: each committed block is checked against
the file sizes its marker records (``--verify-committed``: against its checksums) and
redone if it fails; a finished output is re-finalized if its tables do not match
``final.json``. Credentials never reach the manifest or a message (``storage.redact``).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from terraloom.pipeline.corpus_writer import (
    PARTS_DIR,
    BlockKey,
    BlockOutcome,
    MarkerError,
    assemble_block,
    canonical_modalities,
    check_committed_block,
    create_split_store,
    is_committed,
    marker_path,
    merge_parts,
    n_blocks,
    outcome_from_marker,
    read_marker,
    split_store_path,
    store_layout,
    write_block,
    write_json_atomic,
)
from terraloom.pipeline.plan_store import (
    PlanStoreError,
    plan_fingerprint,
    plan_metadata,
    read_plan,
)
from terraloom.schemas.layouts import CORPUS_MODALITIES, DEFAULT_SHARD_SAMPLES, SPLITS
from terraloom.schemas.tables import PLAN_SCHEMA, write_geoparquet
from terraloom.storage.lease import Lease, LeaseHeld, LeaseLost
from terraloom.storage.lease import acquire as acquire_lease
from terraloom.storage.redact import redact

log = logging.getLogger(__name__)

BUILD_DIR = "_build"
#: Lease time-to-live; the driver renews it every third of this while it runs, so only a
#: dead build's lease expires (on the same host a dead pid frees it at once).
LEASE_TTL_S = 120.0
MANIFEST_FORMAT = "terraloom-build"
MANIFEST_VERSION = 1
ENGINES = ("beam", "dask")

BlockFn = Callable[[list[dict[str, Any]], Any], list[Any]]


class BuildInputError(ValueError):
    """Bad user input (missing/invalid plan, output built from another plan): CLI exit 2."""


class BuildBusyError(BuildInputError):
    """Another build holds (or took over) the output's lease: CLI exit 2, one line."""


@dataclass(frozen=True)
class BuildJob:
    """Everything a worker needs to process any block; small and picklable.

    ``block_fn`` is the per-block sample processor; ``None`` means
    :func:`pipeline.sample.build_block` (resolved on the worker).
    """

    out: str
    config: Any  # pipeline.sample.BuildConfig
    shard_samples: int = DEFAULT_SHARD_SAMPLES
    block_fn: BlockFn | None = None

    def resolve_block_fn(self) -> BlockFn:
        if self.block_fn is not None:
            return self.block_fn
        fn: BlockFn = importlib.import_module("terraloom.pipeline.sample").build_block
        return fn


@dataclass
class BuildSummary:
    """Per-split counts, counters and timing of one ``run_build`` call."""

    out: str
    engine: str
    workers: int
    planned: dict[str, int]
    accepted: dict[str, int]
    rejected: dict[str, dict[str, int]]
    blocks_total: int
    blocks_run: int
    blocks_skipped: int
    seconds: float
    counters: dict[str, int] = field(default_factory=dict)
    #: Per split, accepted samples without an optional modality: modality -> reason -> n.
    missing: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    #: Committed blocks that failed their check on this resume and were redone: (key, why).
    blocks_redone: list[tuple[str, str]] = field(default_factory=list)
    #: Why index/rejects were merged again although the build was finished ("" if not).
    tables_rewritten: str = ""

    @property
    def samples_processed(self) -> int:
        return int(
            self.counters.get("samples_accepted", 0) + self.counters.get("samples_rejected", 0)
        )

    @property
    def samples_per_second(self) -> float:
        return self.samples_processed / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        """The final summary table printed by the CLI."""
        lines = [f"{'split':<8}{'planned':>9}{'accepted':>10}{'rejected':>10}  rejected by reason"]
        for split in self.planned:
            rej = self.rejected.get(split, {})
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(rej.items())) or "-"
            lines.append(
                f"{split:<8}{self.planned[split]:>9}{self.accepted.get(split, 0):>10}{sum(rej.values()):>10}  {reasons}"
            )
        for split, by_modality in self.missing.items():
            for modality, reasons_m in by_modality.items():
                why = ", ".join(f"{k} {v}" for k, v in sorted(reasons_m.items()))
                lines.append(
                    f"{split}: {sum(reasons_m.values())} accepted samples without {modality} ({why})"
                )
        lines.append(
            f"blocks: {self.blocks_total} total, {self.blocks_run} written now, {self.blocks_skipped} already committed"
        )
        if self.blocks_redone:
            shown_redone = "; ".join(why for _, why in self.blocks_redone[:3])
            more = len(self.blocks_redone) - 3
            lines.append(
                f"redone: {len(self.blocks_redone)} committed blocks failed their check: {shown_redone}"
                + (f"; +{more} more" if more > 0 else "")
            )
        if self.tables_rewritten:
            lines.append(f"index/rejects merged again: {self.tables_rewritten}")
        lines.append(
            f"engine: {self.engine} ({self.workers} worker{'s' if self.workers != 1 else ''}); {self.seconds:.1f} s; {self.samples_per_second:.2f} samples/s"
        )
        shown = {
            k: v for k, v in sorted(self.counters.items()) if k.startswith(("bytes_", "msec_"))
        }
        if shown:
            lines.append("counters: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        return "\n".join(lines)


# --------------------------------------------------------------------------- config


def default_config() -> Any:
    from terraloom.pipeline.sample import BuildConfig

    return BuildConfig()


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


def scope_config(config: Any, plan_path: str | os.PathLike[str]) -> Any:
    """The config workers get: its href policy scoped with the plan's recorded source
    scope (catalog root, schemes), so local hrefs stay under the catalog's root."""
    from terraloom.pipeline.hrefs import HrefPolicy, plan_scope

    policy = getattr(config, "href_policy", None)
    if not isinstance(policy, HrefPolicy):
        return config
    try:
        scope = plan_scope(plan_metadata(plan_path))
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise BuildInputError(f"{plan_path}: {exc}") from exc
    return dataclasses.replace(config, href_policy=policy.scoped(scope))


def config_modalities(config: Any) -> tuple[str, ...]:
    return canonical_modalities(getattr(config, "modalities", None) or CORPUS_MODALITIES)


# --------------------------------------------------------------------------- prepare


def build_dir(out: str | os.PathLike[str]) -> Path:
    return Path(out) / BUILD_DIR


def manifest_path(out: str | os.PathLike[str]) -> Path:
    return build_dir(out) / "manifest.json"


def frozen_plan_path(out: str | os.PathLike[str]) -> Path:
    return build_dir(out) / "plan.parquet"


def final_path(out: str | os.PathLike[str]) -> Path:
    return build_dir(out) / "final.json"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    path = manifest_path(out)
    if not path.exists():
        raise BuildInputError(
            f"{out} is not a terraloom build output (no {BUILD_DIR}/manifest.json)"
        )
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildInputError(f"{path} is damaged (not JSON: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise BuildInputError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return data


def lease_path(out: str | os.PathLike[str]) -> Path:
    return build_dir(out) / "lease.json"


def acquire_build_lease(out: str | os.PathLike[str], ttl: float = LEASE_TTL_S) -> Lease:
    """The exclusive lease of one build on ``out``; :class:`BuildBusyError` if another
    live build holds it."""
    try:
        return acquire_lease(lease_path(out), {"job": "terraloom-pipeline build"}, ttl=ttl)
    except LeaseHeld as exc:
        raise BuildBusyError(f"another build is running on {out}: {exc}") from exc


def _load_plan(plan_path: Path) -> pa.Table:
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


#: Plan rows per Parquet row group of the frozen plan (rounded to whole blocks): small
#: enough that a worker decodes little beyond its block, large enough that the footer
#: stays small for millions of rows.
PLAN_ROWS_PER_GROUP = 4096


def blocks_per_row_group(shard_samples: int) -> int:
    return max(1, PLAN_ROWS_PER_GROUP // shard_samples)


def _freeze_plan(
    plan: pa.Table, sizes: dict[str, int], shard_samples: int, path: Path
) -> dict[str, int]:
    """Write the plan sorted by (split, row), row groups of whole blocks; return each
    split's first row group."""
    offsets: dict[str, int] = {}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows_per_group = blocks_per_row_group(shard_samples) * shard_samples
    group = 0
    with pq.ParquetWriter(tmp, plan.schema, compression="zstd") as writer:
        for split, n in sizes.items():
            offsets[split] = group
            part = plan.filter(pc.equal(plan.column("split"), split)).sort_by("row")
            for a in range(0, n, rows_per_group):
                writer.write_table(part.slice(a, rows_per_group), row_group_size=rows_per_group)
                group += 1
    os.replace(tmp, path)
    return offsets


def prepare(
    plan_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: Any,
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
    plan_path = Path(plan_path)
    if not plan_path.exists():
        raise BuildInputError(f"plan {plan_path} does not exist")
    if not manifest_path(out).exists():
        _check_fresh_out(Path(out))  # before the lease creates anything in a foreign dir
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
        _check_fresh_out(Path(out))
        plan = _load_plan(plan_path)
        sizes = _split_sizes(plan)
        if not sizes:
            raise BuildInputError(f"plan {plan_path} has no rows")
        offsets = _freeze_plan(plan, sizes, shard_samples, frozen_plan_path(out))
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "plan_sha256": sha,
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
            shutil.rmtree(split_store_path(out, split), ignore_errors=True)
    for split, info in manifest["splits"].items():
        create_split_store(
            out, split, info["n_samples"], shard_samples, modality_names, attrs={"plan_sha256": sha}
        )
    if not manifest.get("stores_ready"):
        manifest["stores_ready"] = True
        write_json_atomic(mpath, manifest)
    return manifest


def _check_fresh_out(out: Path) -> None:
    """A new build needs an empty (or absent) --out, or the leftovers of a killed prepare."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BuildInputError(f"--out {out} exists and is not a directory")
    other = [p.name for p in out.iterdir() if p.name != BUILD_DIR]
    if other:
        raise BuildInputError(
            f"--out {out} is not empty and is not a terraloom build (holds {sorted(other)[:5]}); choose a fresh directory"
        )


def all_blocks(manifest: dict[str, Any]) -> list[BlockKey]:
    return [
        BlockKey(s, k) for s, info in manifest["splits"].items() for k in range(info["n_blocks"])
    ]


def pending_blocks(
    out: str | os.PathLike[str], manifest: dict[str, Any] | None = None
) -> list[BlockKey]:
    """Blocks without a commit marker: what a (resumed) build still has to do."""
    manifest = manifest or read_manifest(out)
    return [k for k in all_blocks(manifest) if not is_committed(out, k)]


def check_committed(
    out: str | os.PathLike[str], manifest: dict[str, Any], *, full: bool = False
) -> list[tuple[BlockKey, str]]:
    """Committed blocks that fail their check (cheap: marker parses, file sizes as
    recorded; ``full``: checksums and part row counts too), with the reason."""
    import zarr

    failed: list[tuple[BlockKey, str]] = []
    groups: dict[str, Any] = {}
    for key in all_blocks(manifest):
        if not is_committed(out, key):
            continue
        if key.split not in groups:
            groups[key.split] = zarr.open_group(str(split_store_path(out, key.split)), mode="r")
        why = check_committed_block(out, key, groups[key.split], full=full)
        if why is not None:
            failed.append((key, why))
    return failed


# --------------------------------------------------------------------------- one block


def _plan_file(path: str) -> pq.ParquetFile:
    """The frozen plan, opened once per process and file version (the footer is read once,
    not per block; a plan rewritten at the same path is opened afresh)."""
    st = os.stat(path)
    return _open_plan_file(path, st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _open_plan_file(path: str, inode: int, mtime_ns: int, size: int) -> pq.ParquetFile:
    return pq.ParquetFile(path)


def read_plan_block(
    out: str | os.PathLike[str], key: BlockKey, manifest: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The plan rows of one block (a slice of one row group of the frozen plan)."""
    manifest = manifest or read_manifest(out)
    info = manifest["splits"][key.split]
    if not 0 <= key.block < info["n_blocks"]:
        raise ValueError(
            f"{key} is not a block of this build ({info['n_blocks']} blocks in {key.split!r})"
        )
    per_group = int(manifest["blocks_per_row_group"])
    group = info["row_group_offset"] + key.block // per_group
    first = (key.block % per_group) * int(manifest["shard_samples"])
    table = (
        _plan_file(str(frozen_plan_path(out)))
        .read_row_group(group)
        .slice(first, int(manifest["shard_samples"]))
    )
    rows: list[dict[str, Any]] = table.cast(PLAN_SCHEMA).to_pylist()
    return rows


def process_block(job: BuildJob, key: BlockKey) -> BlockOutcome:
    """Build, write and commit one block; a no-op for a committed block.

    This is the only function the engines run, so every engine writes identical bytes.
    """
    import zarr

    if is_committed(job.out, key):
        try:
            return outcome_from_marker(job.out, key)
        except MarkerError:
            pass  # a damaged marker commits nothing: write the block again
    manifest = read_manifest(job.out)
    rows = read_plan_block(job.out, key, manifest)
    t0 = time.perf_counter()
    results = job.resolve_block_fn()(rows, job.config)
    t1 = time.perf_counter()
    group = zarr.open_group(str(split_store_path(job.out, key.split)), mode="r+")
    block = assemble_block(store_layout(group), key, rows, results)
    block.stats.setdefault("msec_build_block", (t1 - t0) * 1e3)
    block.stats["msec_assemble"] = (time.perf_counter() - t1) * 1e3
    return write_block(group, block, job.out)


# --------------------------------------------------------------------------- finalize


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


def finalize(out: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the block parts into ``index.parquet`` and ``rejects.parquet`` (atomically).

    Refuses while any block is uncommitted, and checks accepted + rejected = planned and
    that no row appears twice.
    """
    manifest = manifest or read_manifest(out)
    keys = all_blocks(manifest)
    missing = [str(k) for k in keys if not is_committed(out, k)]
    if missing:
        raise RuntimeError(
            f"cannot finalize: {len(missing)} blocks are not committed, e.g. {missing[:3]}"
        )
    committed: dict[str, Counter[str]] = {s: Counter() for s in manifest["splits"]}
    try:
        for k in keys:
            m = read_marker(out, k)
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
        path = write_geoparquet(name, table, Path(out) / f"{name}.parquet")
        rows = pq.ParquetFile(path).metadata.num_rows  # what was written reads back whole
        if rows != table.num_rows:
            raise RuntimeError(f"{path} reads back {rows} rows, {table.num_rows} were written")
        tables[name] = {
            "rows": table.num_rows,
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
    final = {
        "plan_sha256": manifest["plan_sha256"],
        "blocks": len(keys),
        "splits": counts,
        "tables": tables,
    }
    write_json_atomic(final_path(out), final)
    return final


def finalized_problem(
    out: str | os.PathLike[str], manifest: dict[str, Any], *, full: bool = False
) -> str | None:
    """Why ``out`` is not a sound finished build (``None`` if it is): ``final.json`` is
    readable and of this plan, and index/rejects have the row count, size (``full``: the
    sha256) it recorded and a readable footer."""
    fp = final_path(out)
    if not fp.exists():
        return "not finalized"
    try:
        final = json.loads(fp.read_bytes())
        tables = final["tables"]
        plan_ok = final["plan_sha256"] == manifest["plan_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{fp.name} is damaged or of an older format ({type(exc).__name__})"
    if not plan_ok:
        return f"{fp.name} is of another plan"
    for name in ("index", "rejects"):
        path = Path(out) / f"{name}.parquet"
        try:
            want = tables[name]
            size = path.stat().st_size
            if size != want["bytes"]:
                return f"{path.name} is {size} bytes, {want['bytes']} were written"
            rows = pq.ParquetFile(path).metadata.num_rows
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


def is_finalized(out: str | os.PathLike[str], manifest: dict[str, Any]) -> bool:
    return finalized_problem(out, manifest) is None


# --------------------------------------------------------------------------- run


class MarkerProgress:
    """A tqdm bar fed by counting commit markers on disk: works with any runner whose
    workers share the output filesystem, without any message passing."""

    def __init__(
        self,
        out: str | os.PathLike[str],
        total: int,
        done: int,
        enabled: bool = True,
        interval_s: float = 0.5,
    ) -> None:
        self.out = Path(out)
        self.total = total
        self.start = done
        self.enabled = enabled
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None

    def _count(self) -> int:
        return sum(1 for _ in (self.out / PARTS_DIR).glob("*/block-*.done"))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._bar.n = self._count()
            self._bar.refresh()

    def __enter__(self) -> MarkerProgress:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.start, unit="block", desc="build", file=sys.stderr
            )
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._bar.n = self._count()
            self._bar.close()


def run_engine(
    engine: str,
    job: BuildJob,
    keys: Sequence[BlockKey],
    *,
    workers: int = 1,
    runner: str | None = None,
    pipeline_args: Sequence[str] = (),
    scheduler: str | None = None,
) -> tuple[list[BlockOutcome], dict[str, int]]:
    """Run ``process_block`` over ``keys`` on an engine; return outcomes and counters."""
    if engine == "beam":
        from terraloom.pipeline.beam import run_beam

        return run_beam(job, keys, runner=runner, workers=workers, pipeline_args=pipeline_args)
    if engine == "dask":
        if runner is not None or pipeline_args:
            raise BuildInputError("--runner and pipeline options apply to --engine beam only")
        from terraloom.pipeline.dask_job import run_dask

        return run_dask(job, keys, workers=workers, scheduler=scheduler)
    raise BuildInputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def sum_counters(outcomes: Sequence[BlockOutcome]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for o in outcomes:
        total.update(o.counters())
    return dict(sorted(total.items()))


def run_build(
    plan: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    engine: str = "beam",
    config: Any = None,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    workers: int = 1,
    runner: str | None = None,
    pipeline_args: Sequence[str] = (),
    scheduler: str | None = None,
    progress: bool = True,
    block_fn: BlockFn | None = None,
    verify_committed: bool = False,
) -> BuildSummary:
    """Build (or resume) a corpus from a plan; a sound finished output is left untouched.

    Holds the output's lease throughout (:class:`BuildBusyError` if another build runs
    on it). Committed blocks that fail their check (``verify_committed``: the full
    checksums) are redone, and damaged index/rejects of a finished build merged again;
    the summary says which and why.
    """
    if engine not in ENGINES:
        raise BuildInputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if workers < 1:
        raise BuildInputError("--workers must be >= 1")
    t0 = time.perf_counter()
    config = config if config is not None else default_config()
    if not manifest_path(out).exists():
        _check_fresh_out(Path(out))  # before the lease creates anything in a foreign dir
    with acquire_build_lease(out) as lease, lease.keep_alive():
        manifest = prepare(plan, out, config, shard_samples, lease)
        keys = all_blocks(manifest)
        redone = check_committed(out, manifest, full=verify_committed)
        for key, why in redone:
            log.warning("redoing committed block %s: %s", key, why)
            marker_path(out, key).unlink(missing_ok=True)
        pending = pending_blocks(out, manifest)
        job = BuildJob(str(out), scope_config(config, plan), shard_samples, block_fn)
        counters: dict[str, int] = {}
        if pending:
            final_path(out).unlink(missing_ok=True)
            with MarkerProgress(out, len(keys), len(keys) - len(pending), enabled=progress):
                _, counters = run_engine(
                    engine,
                    job,
                    pending,
                    workers=workers,
                    runner=runner,
                    pipeline_args=pipeline_args,
                    scheduler=scheduler,
                )
        was_final = final_path(out).exists()
        problem = None if pending else finalized_problem(out, manifest, full=verify_committed)
        if pending or problem:
            if problem and was_final:
                log.warning("%s: %s; merging index/rejects again", out, problem)
            try:
                lease.renew()  # never finalize over a build that took the output over
            except LeaseLost as exc:
                raise BuildBusyError(str(exc)) from exc
            final = finalize(out, manifest)
        else:
            with open(final_path(out)) as f:
                final = json.load(f)
        still = pending_blocks(out, manifest)
    run = len(pending) - len(still)
    return BuildSummary(
        out=str(out),
        engine=engine,
        workers=workers,
        planned={s: v["planned"] for s, v in final["splits"].items()},
        accepted={s: v["accepted"] for s, v in final["splits"].items()},
        rejected={s: v["rejected"] for s, v in final["splits"].items()},
        missing={s: v.get("missing", {}) for s, v in final["splits"].items()},
        blocks_total=len(keys),
        blocks_run=run,
        blocks_skipped=len(keys) - len(pending),
        seconds=time.perf_counter() - t0,
        counters=counters,
        blocks_redone=[(str(k), why) for k, why in redone],
        tables_rewritten=(problem or "") if was_final else "",
    )


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` or anything in its cause/context chain is ENOSPC (engines wrap a
    worker's exception, Beam sometimes only in the message)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        text = str(e)
        if "No space left on device" in text or f"[Errno {errno.ENOSPC}]" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def committed_count(out: str | os.PathLike[str]) -> str:
    try:
        manifest = read_manifest(out)
    except BuildInputError:
        return "0"
    keys = all_blocks(manifest)
    return f"{sum(1 for k in keys if is_committed(out, k))} of {len(keys)}"
