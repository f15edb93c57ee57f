"""The engine-neutral work of a corpus build: one block of plan rows -> committed shard.

Both engines (``pipeline.beam``, ``pipeline.dask_job``) import this module and run only
:func:`process_block`, so every engine writes identical bytes; the build driver
(``pipeline.build``) imports the engines, never the other way round. The sample builder
(``pipeline.sample``: rasterio, the co-registration code) is imported on the worker, when
a block runs, not by the driver.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from terraloom.pipeline.block_assembly import assemble_block
from terraloom.pipeline.build_config import BuildConfig
from terraloom.pipeline.build_layout import frozen_plan_path, read_manifest
from terraloom.pipeline.corpus_writer import (
    BlockKey,
    BlockOutcome,
    MarkerError,
    Where,
    is_committed,
    outcome_from_marker,
    split_store_path,
    store_layout,
    write_block,
)
from terraloom.schemas.layouts import DEFAULT_SHARD_SAMPLES
from terraloom.schemas.tables import PLAN_SCHEMA
from terraloom.storage.location import Location

__all__ = ["BuildJob", "EngineResult", "process_block", "read_plan_block", "sum_counters"]


@dataclass(frozen=True)
class BuildJob:
    """Everything a worker needs to process any block; small and picklable.

    ``out`` is the output's :class:`Location`; workers receive it pickled with its storage
    options (credentials given on the command line reach them without being written)."""

    out: Location
    config: BuildConfig
    shard_samples: int = DEFAULT_SHARD_SAMPLES

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Location.parse(self.out))


@dataclass
class EngineResult:
    """What an engine hands back for the blocks it ran: the outcomes it could bring back
    to the driver (a remote Beam runner brings none: the driver reads commit markers) and
    the summed counters."""

    outcomes: list[BlockOutcome] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    #: The parallelism the engine ran with (pass-through runner options included).
    workers: int = 1


def _plan_file(loc: Location, manifest: dict[str, Any]) -> pq.ParquetFile:
    """The frozen plan, opened once per process and build (the footer is read once, not per
    block). ``prepare`` freezes the plan once per manifest (plan fingerprint, shard size,
    config), so the manifest's digest versions it without a request: an output prepared
    anew for another plan opens afresh. On an object store a block's row group is read by
    range requests."""
    from terraloom.pipeline.split_handle import manifest_version

    options = json.dumps(loc.options(), sort_keys=True, default=repr)
    return _open_plan_file(loc, options, manifest_version(manifest))


@functools.lru_cache(maxsize=4)
def _open_plan_file(loc: Location, options: str, version: str) -> pq.ParquetFile:
    if loc.is_local:
        return pq.ParquetFile(loc.path)
    fs, key = loc.arrow_filesystem()
    return pq.ParquetFile(fs.open_input_file(key))


def read_plan_block(
    out: Where, key: BlockKey, manifest: dict[str, Any] | None = None
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
        _plan_file(frozen_plan_path(out), manifest)
        .read_row_group(group)
        .slice(first, int(manifest["shard_samples"]))
    )
    rows: list[dict[str, Any]] = table.cast(PLAN_SCHEMA).to_pylist()
    return rows


def process_block(job: BuildJob, key: BlockKey) -> BlockOutcome:
    """Build, write and commit one block; a no-op for a committed block.

    This is the only function the engines run, so every engine writes identical bytes.
    """
    if is_committed(job.out, key):
        try:
            return outcome_from_marker(job.out, key)
        except MarkerError:
            pass  # a damaged marker commits nothing: write the block again
    manifest = read_manifest(job.out)
    rows = read_plan_block(job.out, key, manifest)
    t0 = time.perf_counter()
    from terraloom.pipeline import sample

    results = sample.build_block(rows, job.config)
    t1 = time.perf_counter()
    from terraloom.pipeline.split_handle import manifest_version, open_split_handle

    # the split store's metadata, read once per worker process and build (split_handle)
    handle = open_split_handle(split_store_path(job.out, key.split), manifest_version(manifest))
    block = assemble_block(store_layout(handle), key, rows, results)
    block.stats.setdefault("msec_build_block", (t1 - t0) * 1e3)
    block.stats["msec_assemble"] = (time.perf_counter() - t1) * 1e3
    return write_block(handle, block, job.out)


def sum_counters(outcomes: Sequence[BlockOutcome]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for o in outcomes:
        total.update(o.counters())
    return dict(sorted(total.items()))
