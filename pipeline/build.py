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

``plan`` and ``out`` are storage locations (a local path, ``s3://``, ``gs://``, ``az://``,
``memory://``; ``storage.location``): parsed before anything runs, so a typo is a
:class:`BuildInputError` and nothing is written. The lease, the markers and every table go
through the storage layer; workers get the output's ``Location`` pickled, storage options
included, and need no shared disk.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence

from terraloom.pipeline.block import (
    BuildJob,
    EngineResult,
    process_block,
    read_plan_block,
)
from terraloom.pipeline.build_config import BuildConfig
from terraloom.pipeline.build_finalize import (
    finalize,
    finalized_problem,
)
from terraloom.pipeline.build_layout import (
    BuildBusyError,
    BuildInputError,
    all_blocks,
    committed_count,
    final_path,
    frozen_plan_path,
    manifest_path,
    pending_blocks,
    read_manifest,
)
from terraloom.pipeline.build_prepare import (
    acquire_build_lease,
    build_locations,
    check_committed,
    check_fresh_out,
    config_for_plan,
    prepare,
    scope_config,
)
from terraloom.pipeline.build_summary import BuildSummary, MarkerProgress
from terraloom.pipeline.corpus_writer import BlockKey, marker_path
from terraloom.schemas.layouts import DEFAULT_SHARD_SAMPLES
from terraloom.storage.files import is_disk_full
from terraloom.storage.lease import LeaseLost
from terraloom.storage.location import Location

log = logging.getLogger(__name__)

#: The modules above are the build's parts; these names stay importable from here.
__all__ = [
    "ENGINES",
    "BuildBusyError",
    "BuildInputError",
    "BuildJob",
    "BuildSummary",
    "EngineResult",
    "MarkerProgress",
    "acquire_build_lease",
    "all_blocks",
    "check_committed",
    "committed_count",
    "config_for_plan",
    "final_path",
    "finalize",
    "finalized_problem",
    "frozen_plan_path",
    "is_disk_full",
    "manifest_path",
    "pending_blocks",
    "prepare",
    "process_block",
    "read_manifest",
    "read_plan_block",
    "run_build",
    "run_engine",
    "scope_config",
]

ENGINES = ("beam", "dask")


def run_engine(
    engine: str,
    job: BuildJob,
    keys: Sequence[BlockKey],
    *,
    workers: int = 1,
    runner: str | None = None,
    pipeline_args: Sequence[str] = (),
    scheduler: str | None = None,
    verbose: bool = False,
) -> EngineResult:
    """Run ``process_block`` over ``keys`` on an engine (``verbose``: keep the engine's
    own start-up logging)."""
    if engine == "beam":
        from terraloom.pipeline.beam import run_beam

        return run_beam(
            job, keys, runner=runner, workers=workers, pipeline_args=pipeline_args, verbose=verbose
        )
    if engine == "dask":
        if runner is not None or pipeline_args:
            raise BuildInputError("--runner and pipeline options apply to --engine beam only")
        from terraloom.pipeline.dask_job import run_dask

        return run_dask(job, keys, workers=workers, scheduler=scheduler)
    raise BuildInputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def run_build(
    plan: str | os.PathLike[str] | Location,
    out: str | os.PathLike[str] | Location,
    *,
    engine: str = "beam",
    config: BuildConfig | None = None,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    workers: int = 1,
    runner: str | None = None,
    pipeline_args: Sequence[str] = (),
    scheduler: str | None = None,
    progress: bool = True,
    verbose: bool = False,
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
    plan, out = build_locations(plan, out)
    t0 = time.perf_counter()
    config = config if config is not None else BuildConfig()
    if engine != "beam" and (runner is not None or pipeline_args):
        raise BuildInputError("--runner and pipeline options apply to --engine beam only")
    if engine == "dask":  # before anything is written: a wrong address, an unguarded script
        from terraloom.pipeline.dask_job import check_local_cluster_safe, check_scheduler

        if scheduler is not None:
            check_scheduler(scheduler)
        else:
            check_local_cluster_safe(sys._getframe(1))
    config = config_for_plan(config, plan)
    if not manifest_path(out).exists():
        check_fresh_out(out)  # before the lease creates anything in a foreign dir
    with acquire_build_lease(out) as lease, lease.keep_alive():
        manifest = prepare(plan, out, config, shard_samples, lease)
        keys = all_blocks(manifest)
        redone = check_committed(out, manifest, full=verify_committed)
        for key, why in redone:
            log.warning("redoing committed block %s: %s", key, why)
            marker_path(out, key).delete()
        pending = pending_blocks(out, manifest)
        job = BuildJob(out, scope_config(config, plan), shard_samples)
        counters: dict[str, int] = {}
        ran_with = workers
        if pending:
            final_path(out).delete()
            with MarkerProgress(out, len(keys), len(keys) - len(pending), enabled=progress):
                result = run_engine(
                    engine,
                    job,
                    pending,
                    workers=workers,
                    runner=runner,
                    pipeline_args=pipeline_args,
                    scheduler=scheduler,
                    verbose=verbose,
                )
            counters, ran_with = result.counters, result.workers
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
            final = final_path(out).read_json()
        still = pending_blocks(out, manifest)
    run = len(pending) - len(still)
    return BuildSummary(
        out=str(out),
        engine=engine,
        workers=ran_with,
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
