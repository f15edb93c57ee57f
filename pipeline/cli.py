"""``terraloom-pipeline`` command line: one ``add_<cmd>_parser(subparsers)`` per sub-command.

Each sub-command registers itself here; its handler (``args.func``) returns the exit code
(0 ok, 1 findings/failure, 2 bad input). ``build``'s parser and handler live in this module
so that the library module ``pipeline.build`` holds no argparse.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from terraloom.pipeline.build import (
    ENGINES,
    BuildInputError,
    committed_count,
    is_disk_full,
    run_build,
)
from terraloom.pipeline.corpus_writer import canonical_modalities
from terraloom.pipeline.plan_cli import add_plan_parser
from terraloom.pipeline.publish import add_publish_parser
from terraloom.pipeline.publish.verify import add_published_option
from terraloom.pipeline.quicklook import add_quicklook_parser
from terraloom.pipeline.verify import add_verify_parser
from terraloom.pipeline.world import add_world_parser
from terraloom.schemas.layouts import DEFAULT_SHARD_SAMPLES


def _config_from_args(args: argparse.Namespace) -> Any:
    from terraloom.pipeline.sample import BuildConfig

    kwargs: dict[str, Any] = {}
    try:
        return BuildConfig(**_config_kwargs(args, kwargs))
    except (ValueError, TypeError) as exc:
        raise BuildInputError(str(exc)) from exc


def _config_kwargs(args: argparse.Namespace, kwargs: dict[str, Any]) -> dict[str, Any]:
    if args.modalities:
        kwargs["modalities"] = canonical_modalities(args.modalities.split(","))
    if args.required:
        kwargs["required"] = canonical_modalities(args.required.split(","))
    if args.max_cloud_fraction is not None:
        kwargs["max_cloud_fraction"] = args.max_cloud_fraction
    if args.max_nodata_fraction is not None:
        kwargs["max_nodata_fraction"] = args.max_nodata_fraction
    if args.allow_href_root or args.allow_host or args.allow_private_hosts or args.allow_scheme:
        from terraloom.pipeline.hrefs import HrefPolicy

        kwargs["href_policy"] = HrefPolicy(
            roots=tuple(args.allow_href_root),
            hosts=tuple(args.allow_host),
            allow_private_hosts=args.allow_private_hosts,
            extra_schemes=tuple(args.allow_scheme),
        )
    return kwargs


def add_build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``build`` on the ``terraloom-pipeline`` sub-command parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "build",
        help="build (or resume) the corpus from a plan on Beam or Dask",
        description="Build the corpus Zarr stores + index/rejects from plan.parquet. Re-running resumes a killed build; "
        "a finished build is left untouched. Options after `--` are passed to Beam (e.g. Dataflow/Flink options).",
    )
    p.add_argument("--plan", required=True, help="plan.parquet from `terraloom-pipeline plan`")
    p.add_argument("--out", required=True, help="corpus output directory")
    p.add_argument("--engine", choices=ENGINES, default="beam")
    p.add_argument(
        "--runner",
        default=None,
        help="Beam runner (default DirectRunner; FlinkRunner, SparkRunner, DataflowRunner, ...)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="parallel workers (DirectRunner processes / Dask LocalCluster workers)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask.distributed scheduler address (default: a LocalCluster)",
    )
    p.add_argument(
        "--shard-samples",
        type=int,
        default=DEFAULT_SHARD_SAMPLES,
        help="samples per shard = per block of work",
    )
    p.add_argument(
        "--modalities", default=None, help="comma-separated modalities to build (default: all)"
    )
    p.add_argument(
        "--required", default=None, help="comma-separated modalities whose absence rejects a sample"
    )
    p.add_argument("--max-cloud-fraction", type=float, default=None)
    p.add_argument("--max-nodata-fraction", type=float, default=None)
    # the href policy (docs/security.md): what catalog hrefs may point at, widened here
    p.add_argument(
        "--allow-href-root",
        action="append",
        default=[],
        metavar="PATH",
        help="also read local asset files under PATH (repeatable; default: only the catalog's root)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="admit this loopback/private host name or address in hrefs (repeatable)",
    )
    p.add_argument(
        "--allow-private-hosts",
        action="store_true",
        help="admit every loopback, link-local and private-range host in hrefs",
    )
    p.add_argument(
        "--allow-scheme",
        action="append",
        default=[],
        metavar="SCHEME",
        help="admit an href scheme the plan's source does not declare, e.g. memory (repeatable)",
    )
    p.add_argument(
        "--verify-committed",
        action="store_true",
        help="on resume, check committed blocks against their checksums (reads them back) "
        "instead of only their file sizes; blocks that fail are redone",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("pipeline_args", nargs="*", help="Beam pipeline options, after `--`")
    p.set_defaults(func=build_command)
    return p


def build_command(args: argparse.Namespace) -> int:
    try:
        config = _config_from_args(args)
        if args.pipeline_args and args.engine != "beam":
            raise BuildInputError("pipeline options after `--` apply to --engine beam only")
        summary = run_build(
            args.plan,
            args.out,
            engine=args.engine,
            config=config,
            shard_samples=args.shard_samples,
            workers=args.workers,
            runner=args.runner,
            pipeline_args=tuple(args.pipeline_args),
            scheduler=args.scheduler,
            progress=not args.no_progress,
            verify_committed=args.verify_committed,
        )
    except BuildInputError as exc:
        print(f"terraloom-pipeline build: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        print(
            f"terraloom-pipeline build: error: no space left on the device of {args.out} "
            f"({committed_count(args.out)} blocks committed); the output is resumable: "
            "free space and re-run the same command",
            file=sys.stderr,
        )
        return 1
    print(summary.table())
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="terraloom-pipeline",
        description="terraloom corpus pipeline: plan, build, verify, quicklook, publish.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_world_parser(subparsers)
    add_plan_parser(subparsers)
    add_build_parser(subparsers)
    add_published_option(add_verify_parser(subparsers))
    add_quicklook_parser(subparsers)
    add_publish_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
