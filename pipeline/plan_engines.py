"""Planning as a distributed job: one block of grid cells per task, on Beam or Dask.

The driver does the cheap, O(cells) work: it lists the region's blocks
(:func:`pipeline.plan.region_blocks`), asks the source once which collections it serves,
and hands the blocks without a commit marker to an engine. A task opens the source in its
own process (and thread), plans its block with :func:`pipeline.plan.plan_block_rows`, the
very function the single-process planner calls, and writes it with its marker
(:mod:`pipeline.plan_store`). When every block is done the driver numbers the rows
(:func:`pipeline.plan.number_rows`, needs every sample id: ids only), writes the final parts
and commits. So the dataset holds the same rows as :func:`pipeline.plan.plan_samples`, and a
killed plan resumes where it stopped.

Engines: ``local`` (blocks one after the other in this process, still resumable), ``beam``
(``Create -> Reshuffle -> ParDo``, DirectRunner multi-processing by default, any runner by
pipeline options) and ``dask`` (a LocalCluster of ``workers`` processes, or ``scheduler``).

Request rate: ``rate_limit`` is the global rate of the source (requests/s). Each of the
``workers`` processes gets ``rate_limit / workers``
(:func:`~pipeline.sources.ratelimit.worker_share`), shared by the threads of that process, so
the job as a whole never asks faster than ``rate_limit``. A cluster whose real worker count
differs from ``workers`` must say so, or the global rate is ``share x real workers``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from terraloom.pipeline.build_config import plan_request_metadata
from terraloom.pipeline.grid import Region
from terraloom.pipeline.hrefs import scope_metadata, source_scope
from terraloom.pipeline.plan import (
    PlanBlock,
    PlanConfig,
    PlanReport,
    number_rows,
    plan_block_rows,
    region_blocks,
    unavailable_modalities,
)
from terraloom.pipeline.plan_store import (
    PlanStoreError,
    block_done,
    commit,
    is_committed,
    kept_ids,
    open_job,
    part_rows,
    read_block,
    read_commit,
    read_plan,
    write_block,
)
from terraloom.pipeline.sources import open_source
from terraloom.pipeline.sources.base import SkippedItem, Source, TimeRange
from terraloom.pipeline.sources.ratelimit import worker_share
from terraloom.storage.location import Location

log = logging.getLogger(__name__)

ENGINES = ("local", "beam", "dask")
NAMESPACE = "terraloom"


@dataclass(frozen=True)
class SourceSpec:
    """How a task opens the source in its own process: the CLI spec and its options
    (sources are never pickled: a live HTTP client does not travel)."""

    spec: str
    cache_dir: str | None = None
    use_cache: bool = True
    sign: bool | None = None
    ee_project: str | None = None
    timeout: float | None = None
    deadline: float | None = None
    max_retries: int | None = None
    #: requests/s of ONE process (the driver's share of the global rate is set per job)
    rate_limit: float | None = None
    page_size: int | None = None

    def open(self) -> Source:
        return open_source(
            self.spec,
            cache_dir=self.cache_dir,
            use_cache=self.use_cache,
            sign=self.sign,
            ee_project=self.ee_project,
            timeout=self.timeout,
            deadline=self.deadline,
            max_retries=self.max_retries,
            rate_limit=self.rate_limit,
            page_size=self.page_size,
        ).source


_SOURCES: dict[tuple[SourceSpec, int, int], Source] = {}
_SOURCES_LOCK = threading.Lock()


def worker_source(spec: SourceSpec) -> Source:
    """This process's and thread's source for ``spec``, opened once: a static catalog is
    indexed once per worker, a STAC client's connection reused; a source object is used
    by one thread at a time, while its rate limit is shared by the process."""
    key = (spec, os.getpid(), threading.get_ident())
    with _SOURCES_LOCK:
        src = _SOURCES.get(key)
    if src is None:
        src = spec.open()
        with _SOURCES_LOCK:
            _SOURCES[key] = src
    return src


@dataclass(frozen=True)
class PlanJob:
    """Everything a task needs to plan a block, picklable (``out`` travels to the workers
    with its storage options)."""

    out: Location
    source: SourceSpec
    region: Region
    period: TimeRange
    config: PlanConfig
    unavailable: tuple[tuple[str, str], ...] = ()

    def describe(self) -> dict[str, Any]:
        """What makes two runs the same job (``_job.json``): never the rate or workers."""
        region = (
            {"cells": list(self.region.cells)}
            if self.region.cells
            else {"wkt": self.region.geometry.wkt}  # type: ignore[union-attr]
        )
        return {
            "source": self.source.spec,
            "region": region,
            "period": [self.period[0].isoformat(), self.period[1].isoformat()],
            "config": repr(self.config),
        }


def plan_block_task(job: PlanJob, block: PlanBlock) -> dict[str, Any]:
    """Plan one block and commit it (a no-op for a block already committed): the function
    every engine calls. Returns the block's marker."""
    done = block_done(job.out, block.name)
    if done is not None:
        return {**done, "skipped_block": True}
    src = worker_source(job.source)
    seen = len(src.skipped_items())
    asked = int(getattr(src, "requests", 0))
    t0 = time.perf_counter()
    rows = plan_block_rows(src, job.region, block, job.period, job.config, dict(job.unavailable))
    info = {
        "cells": len(block.cells),
        "searches": int(getattr(src, "requests", 0)) - asked,
        "seconds": round(time.perf_counter() - t0, 4),
        "skipped": [s.to_dict() for s in src.skipped_items()[seen:]],
    }
    return write_block(job.out, block.name, rows, info)


# --- engines -----------------------------------------------------------------------------------


def run_local(job: PlanJob, blocks: Sequence[PlanBlock], progress: Callable[[], None]) -> None:
    for b in blocks:
        plan_block_task(job, b)
        progress()


def run_beam(
    job: PlanJob, blocks: Sequence[PlanBlock], workers: int, pipeline_args: Sequence[str] = ()
) -> dict[str, int]:
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    from terraloom.pipeline.beam import beam_options, query_counters

    class PlanBlockFn(beam.DoFn):  # type: ignore[misc]
        def __init__(self, job: PlanJob) -> None:
            super().__init__()
            self.job = job

        def process(self, block: PlanBlock) -> Iterator[str]:
            marker = plan_block_task(self.job, block)
            Metrics.counter(NAMESPACE, "plan_blocks").inc()
            Metrics.counter(NAMESPACE, "plan_samples").inc(int(marker.get("rows", 0)))
            Metrics.counter(NAMESPACE, "plan_searches").inc(int(marker.get("searches", 0)))
            yield block.name

    p = beam.Pipeline(options=beam_options(None, workers, pipeline_args))
    _ = (
        p
        | "CreatePlanBlocks" >> beam.Create(list(blocks))
        | "Reshuffle" >> beam.Reshuffle()
        | "PlanBlock" >> beam.ParDo(PlanBlockFn(job))
    )
    result = p.run()
    result.wait_until_finish()
    return query_counters(result)


def run_dask(
    job: PlanJob,
    blocks: Sequence[PlanBlock],
    workers: int,
    scheduler: str | None = None,
    threads: int = 1,
) -> None:
    from distributed import wait

    from terraloom.pipeline.dask_job import dask_client

    with dask_client(workers, scheduler, threads) as client:
        futures = client.map(
            plan_block_task, [job] * len(blocks), list(blocks), pure=False, retries=1
        )
        wait(futures)
        for f in futures:
            f.result()  # raise a task's error here


# --- the driver ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineConfig:
    """Where the blocks run. ``rate_limit`` is the source's global rate (requests/s)."""

    engine: str = "local"
    workers: int = 1
    scheduler: str | None = None
    #: dask threads per worker. Planning against a STAC API waits on it far more than it
    #: computes, and threads overlap the waits (bench/plan.py, 50 ms per answer, 2 workers:
    #: 81.5 cells/s with 1 thread, 148.7 with 4, plans equal). Not the default: with local
    #: SCL checks (a static catalog or the world) more than one thread per worker can match
    #: some samples to other scenes than the single-process plan (seen in
    #: tests/pipeline/test_plan_engines.py with 4 threads; cause not yet found)
    threads: int = 1
    rate_limit: float | None = None
    pipeline_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.workers < 1 or self.threads < 1:
            raise ValueError("workers and threads must be >= 1")
        if self.scheduler is not None and self.engine != "dask":
            raise ValueError("--scheduler is a Dask scheduler address: use it with --engine dask")

    @property
    def processes(self) -> int:
        """Processes that send requests at once (each gets an equal share of the rate)."""
        return 1 if self.engine == "local" else self.workers


@dataclass(frozen=True)
class DatasetResult:
    """What a distributed plan did: blocks planned now and before, the table, the report."""

    path: Location
    blocks: int
    planned: int
    resumed: int
    table: pa.Table
    report: PlanReport
    counters: dict[str, int] = field(default_factory=dict)


def plan_dataset(
    source: SourceSpec,
    region: Region,
    period: TimeRange,
    out: str | os.PathLike[str] | Location,
    config: PlanConfig | None = None,
    engine: EngineConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetResult:
    """Plan a region into a partitioned plan dataset at ``out`` on an engine; resume a
    killed run of the same job; a committed plan of the same job is read back as it is."""
    config = config if config is not None else PlanConfig()
    engine = engine if engine is not None else EngineConfig()
    if period[1] < period[0]:
        raise ValueError("time range ends before it starts")
    out = Location.parse(out)
    # the driver's own requests (collections list) use a whole worker's share
    share = worker_share(engine.rate_limit, engine.processes)
    spec = replace(source, rate_limit=share)
    driver_source = spec.open()
    unavailable = unavailable_modalities(driver_source, config)
    job = PlanJob(out, spec, region, period, config, tuple(sorted(unavailable.items())))
    open_job(out, job.describe())
    blocks = region_blocks(region, config)
    if is_committed(out):
        table = read_plan(out)
        doc = read_commit(out)
        skipped = tuple(SkippedItem(**s) for s in doc.get("skipped", []))
        return DatasetResult(
            out,
            len(blocks),
            0,
            len(blocks),
            table,
            PlanReport(driver_source.name, table.num_rows, skipped),
        )
    pending = [b for b in blocks if block_done(out, b.name) is None]
    resumed = len(blocks) - len(pending)
    counters: dict[str, int] = {}
    done = [resumed]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], len(blocks))

    if pending:
        if engine.engine == "local":
            run_local(job, pending, tick)
        elif engine.engine == "beam":
            counters = run_beam(job, pending, engine.workers, engine.pipeline_args)
        else:
            run_dask(job, pending, engine.workers, engine.scheduler, engine.threads)
    missing = [b.name for b in blocks if block_done(out, b.name) is None]
    if missing:
        raise PlanStoreError(
            f"{len(missing)} blocks were not planned, e.g. {missing[:3]}; re-run to resume"
        )
    return _finalize(out, blocks, job, driver_source, resumed, counters)


def _finalize(
    out: Location,
    blocks: Sequence[PlanBlock],
    job: PlanJob,
    driver_source: Source,
    resumed: int,
    counters: dict[str, int],
) -> DatasetResult:
    """Number the rows of every block, write the parts, commit (driver side, ids only in
    memory besides one block at a time)."""
    ids: list[tuple[str, str]] = []
    skipped: dict[tuple[Any, ...], dict[str, Any]] = {}
    searches = 0
    for b in blocks:
        marker = block_done(out, b.name) or {}
        searches += int(marker.get("searches", 0))
        for s in marker.get("skipped", []):
            skipped.setdefault((s["reason"], s["location"], s["collection"], s["item_id"]), s)
        ids.extend(
            kept_ids(
                read_block(out, b.name).select(["sample_id", "cell_id", "unmatched"]),
                job.config.keep_unmatched,
            )
        )
    numbers = number_rows(ids, job.config)
    metadata = scope_metadata(source_scope(driver_source))
    # what the build follows
    metadata.update(plan_request_metadata(job.config.modalities, job.config.band_subset))

    def parts() -> Iterator[tuple[str, pa.Table]]:
        for b in blocks:
            yield b.name, part_rows(read_block(out, b.name), numbers)

    commit(
        out,
        parts(),
        metadata,
        {"blocks": len(blocks), "searches": searches, "skipped": list(skipped.values())},
    )
    table = read_plan(out)
    report = PlanReport(
        driver_source.name, table.num_rows, tuple(SkippedItem(**s) for s in skipped.values())
    )
    return DatasetResult(out, len(blocks), len(blocks) - resumed, resumed, table, report, counters)


__all__ = [
    "ENGINES",
    "DatasetResult",
    "EngineConfig",
    "PlanJob",
    "SourceSpec",
    "plan_block_task",
    "plan_dataset",
    "worker_source",
]
