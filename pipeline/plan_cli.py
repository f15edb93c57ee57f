"""The ``plan`` sub-command: ``terraloom-pipeline plan --source ... --out plan.parquet``.

Bad input (unknown source, unreadable region, bad period, no credentials, a source that cannot
be read or does not answer within its timeout / deadline) is reported as one line on stderr
with exit code 2, never as a traceback. Malformed items are skipped, counted in the summary and
listed in ``<plan>_report.json`` beside the plan. ``--out`` is a storage location (a path or
an ``s3://``, ``gs://``, ``az://``, ``memory://`` URL, with ``--storage-option``), parsed before
the source is opened: a malformed one is refused with nothing written.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from terraloom.pipeline.build_config import parse_band_flags
from terraloom.pipeline.grid import GridError, Region
from terraloom.pipeline.matching import MatchConfig
from terraloom.pipeline.plan import (
    PlanConfig,
    PlanReport,
    plan_report,
    plan_samples,
    summarize_plan,
    write_plan,
    write_plan_report,
)
from terraloom.pipeline.plan_engines import ENGINES, EngineConfig, SourceSpec, plan_dataset
from terraloom.pipeline.plan_store import is_dataset
from terraloom.pipeline.sources import SourceError, StacApiSource, open_source, parse_time_range
from terraloom.schemas.cliargs import (
    add_config_args,
    add_progress_flag,
    add_storage_option,
    config_from_args,
    default_help,
)
from terraloom.schemas.config import ConfigError
from terraloom.schemas.modalities import UnknownModalityError
from terraloom.storage.location import Location, LocationError, parse_storage_options


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plan",
        help="choose the scenes of every sample of a region and period -> plan.parquet",
        description=(
            "Enumerate the Major TOM cells of a region, search each modality's collection, match "
            "scenes per sample (clearest S2, its L1C twin, S1 within the window, DEM/LULC tiles) "
            "and write plan.parquet. With --source world:DIR, region and time default to the world's. "
            "Every PlanConfig field is reachable with --config FILE.yaml / --set key=value; the "
            "flags below are shortcuts and win over both."
        ),
    )
    p.add_argument(
        "--source",
        required=True,
        help="world:DIR | catalog:PATH | stac:URL (stac:pc, stac:es) | ee[:PROJECT]",
    )
    p.add_argument(
        "--region", help="W,S,E,N | a GeoJSON file | a .txt file of cell ids | ID,ID,... (cell ids)"
    )
    p.add_argument(
        "--time", help="START/END, e.g. 2023-06-01/2023-08-31 (dates include the whole END day)"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output plan.parquet, or a directory for a partitioned plan: a path or URL",
    )
    add_config_args(p, PlanConfig)

    def d(cls: type, name: str, text: str = "") -> str:
        return default_help(cls, name, text)

    p.add_argument(
        "--modalities", help=d(PlanConfig, "modalities", "comma-separated modalities to plan")
    )
    p.add_argument(
        "--bands",
        action="append",
        default=[],
        metavar="MODALITY=BAND,BAND",
        help="plan only these bands of a modality, e.g. S2L2A=B02,B03,B04,B08 (repeatable): "
        "items need assets for those only, and the build of the plan builds those "
        "(default: all bands)",
    )
    p.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="MODALITY=COLLECTION",
        help="use another collection for a modality (repeatable)",
    )
    p.add_argument(
        "--samples-per-cell",
        type=int,
        choices=(1, 4, 9),
        help=d(PlanConfig, "samples_per_cell", "samples of each 10 km grid cell (1x1, 2x2, 3x3)"),
    )
    p.add_argument(
        "--max-cloud",
        type=float,
        help=d(MatchConfig, "max_cloud", "max %% cloud+shadow over the footprint"),
    )
    p.add_argument(
        "--s1-window-days", type=float, help=d(MatchConfig, "s1_window_days", "max |S1 - S2| days")
    )
    p.add_argument(
        "--s1-orbit",
        choices=("s2", "ascending", "descending", "any"),
        help=d(MatchConfig, "s1_orbit", "preferred S1 orbit direction"),
    )
    p.add_argument(
        "--scl",
        choices=("local", "any", "never"),
        help=d(MatchConfig, "scl_hrefs", "which SCL hrefs may be read for cloud cover"),
    )
    p.add_argument("--val-fraction", type=float, help=d(PlanConfig, "val_fraction"))
    p.add_argument("--test-fraction", type=float, help=d(PlanConfig, "test_fraction"))
    p.add_argument(
        "--split-block-cells",
        type=int,
        help=d(PlanConfig, "split_block_cells", "cells per side of a block that shares a split"),
    )
    p.add_argument("--seed", type=int, help=d(PlanConfig, "seed"))
    p.add_argument(
        "--drop-unmatched",
        action="store_true",
        help="leave samples with an unmatched modality out of the plan",
    )
    p.add_argument(
        "--cache-dir", help="STAC response cache (default: $XDG_CACHE_HOME/terraloom/stac)"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="do not read or write the STAC response cache"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=StacApiSource.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="STAC API: seconds one HTTP request may wait for the server (default: %(default)s)",
    )
    p.add_argument(
        "--search-deadline",
        type=float,
        default=StacApiSource.DEFAULT_DEADLINE,
        metavar="SECONDS",
        help="STAC API: seconds one search may take in all, pages and retries included "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=StacApiSource.DEFAULT_RETRIES,
        help="STAC API: retries of a request that timed out, failed to connect or got "
        "429/5xx (default: %(default)s)",
    )
    p.add_argument(
        "--sign",
        default="auto",
        choices=("auto", "yes", "no"),
        help="sign Planetary Computer hrefs (auto: when the planetary-computer package is installed)",
    )
    p.add_argument("--ee-project", help="Google Cloud project for Earth Engine")
    add_engine_args(p)
    add_storage_option(p)
    add_progress_flag(p)
    p.set_defaults(func=run_plan)
    return p


def _fail(message: str) -> int:
    print(f"terraloom-pipeline plan: error: {message}", file=sys.stderr)
    return 2


def plan_config_from_args(args: argparse.Namespace) -> PlanConfig:
    """The ``PlanConfig``: ``--config`` <- ``--set`` <- the flags given."""
    collections = {}
    for spec in args.collection:
        mod, sep, coll = spec.partition("=")
        if not sep or not coll:
            raise ConfigError(f"bad --collection {spec!r}: expected MODALITY=COLLECTION")
        collections[mod] = coll
    bands = parse_band_flags(args.bands)
    return config_from_args(
        PlanConfig,
        args,
        {
            "modalities": args.modalities,
            "samples_per_cell": args.samples_per_cell,
            "match.max_cloud": args.max_cloud,
            "match.s1_window_days": args.s1_window_days,
            "match.s1_orbit": args.s1_orbit,
            "match.scl_hrefs": args.scl,
            "val_fraction": args.val_fraction,
            "test_fraction": args.test_fraction,
            "split_block_cells": args.split_block_cells,
            "seed": args.seed,
            "keep_unmatched": False if args.drop_unmatched else None,
            "band_subset": bands or None,
            **{f"collections.{k}": v for k, v in collections.items()},
        },
    )


def _source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The source flags as ``open_source`` / ``SourceSpec`` keywords (one spelling for both:
    a single-process plan and a distributed plan's workers open the source alike)."""
    return {
        "cache_dir": args.cache_dir,
        "use_cache": not args.no_cache,
        "sign": {"auto": None, "yes": True, "no": False}[args.sign],
        "ee_project": args.ee_project,
        "timeout": args.timeout,
        "deadline": args.search_deadline,
        "max_retries": args.retries,
        "page_size": args.page_size,
    }


def run_plan(args: argparse.Namespace) -> int:
    try:
        out = Location.parse(args.out, parse_storage_options(args.storage_option))
    except LocationError as err:
        return _fail(" ".join(str(err).split()))
    if out.read_only:
        return _fail(f"--out {out} is read-only ({out.scheme}://)")
    try:
        config = plan_config_from_args(args)
        opened = open_source(args.source, rate_limit=args.rate_limit, **_source_options(args))
        region = Region.parse(args.region) if args.region else opened.region
        period = parse_time_range(args.time) if args.time else opened.time_range
        if region is None:
            return _fail("--region is required for this source")
        if period is None:
            return _fail("--time is required for this source")
        t0 = time.perf_counter()
        if is_dataset(out):
            table, report, path = _plan_dataset(args, out, config, region, period)
        elif args.engine != "local":
            return _fail(
                f"--engine {args.engine} writes a partitioned plan: give --out a directory"
            )
        else:
            table = plan_samples(
                opened.source, region, period, config, progress=not args.no_progress
            )
            write_plan(table, out)
            path = out
            report = plan_report(opened.source, table)
        report_file = write_plan_report(report, path)
    except (SourceError, GridError, UnknownModalityError, ValueError, OSError) as err:
        return _fail(str(err))
    elapsed = time.perf_counter() - t0
    summary = summarize_plan(table, config.modalities)
    print(summary.format())
    print(f"{report.format()}; listed in {report_file}")
    rate = summary.samples / elapsed if elapsed > 0 else float("inf")
    print(f"wrote {path} ({summary.samples} samples in {elapsed:.1f} s, {rate:.0f} samples/s)")
    return 0


# --- distributed planning (pipeline.plan_engines) ----------------------------------------------


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Where the blocks are planned, and how fast the source may be asked."""
    g = p.add_argument_group(
        "distributed planning",
        "--out DIR (no .parquet suffix) writes a partitioned plan: one GeoParquet file per "
        "block of cells + a commit marker; re-running the same command resumes a killed plan",
    )
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: blocks one after the other in this process; beam: Apache Beam "
        "(DirectRunner multi-processing); dask: a LocalCluster or --scheduler (default: local)",
    )
    g.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    g.add_argument("--scheduler", help="dask: address of a running distributed scheduler")
    g.add_argument(
        "--threads",
        type=int,
        default=EngineConfig.threads,
        help="dask: threads per worker process; against a STAC API threads overlap its "
        "latency (4: 1.8x on bench/plan.py), but with local SCL checks more than 1 can "
        f"change some matches (a known defect; default: {EngineConfig.threads})",
    )
    g.add_argument(
        "--rate-limit",
        type=float,
        metavar="REQ_PER_S",
        help="STAC API: requests/s of the whole job, retries included; each of the --workers "
        "processes gets rate/workers, shared by its threads (default: no limit)",
    )
    g.add_argument("--page-size", type=int, help="STAC API: items per search page (default: 100)")


def _plan_dataset(
    args: argparse.Namespace, out: Location, config: PlanConfig, region: Region, period: Any
) -> tuple[Any, PlanReport, Location]:
    """Plan into a partitioned dataset on the chosen engine (resumes a killed run)."""
    spec = SourceSpec(args.source, **_source_options(args))
    engine = EngineConfig(
        engine=args.engine,
        workers=args.workers,
        scheduler=args.scheduler,
        threads=args.threads,
        rate_limit=args.rate_limit,
    )
    show = not args.no_progress

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\rplan: {done}/{total} blocks", end="", file=sys.stderr, flush=True)

    result = plan_dataset(spec, region, period, out, config, engine, progress=progress)
    if show:
        print(file=sys.stderr)
    print(
        f"blocks: {result.blocks} ({result.planned} planned now, {result.resumed} already "
        f"committed) on {args.engine}"
    )
    return result.table, result.report, result.path
