"""``terraloom-pipeline`` command line: one ``add_<cmd>_parser(subparsers)`` per sub-command.

Each sub-command registers itself here; its handler (``args.func``) returns the exit code
(0 ok, 1 findings/failure, 2 bad input). The parsers and handlers of ``build``, ``verify``
and ``quicklook`` live in this module so that the library modules hold no argparse; ``plan``
and ``world`` have their own CLI modules (``plan_cli``, ``world.cli``).

Every path argument is a storage location (a local path or ``s3://``, ``gs://``, ``az://``,
``memory://``, ``file://`` URL) with ``--storage-option key=value`` for the backend; all of a
command's locations are parsed (:func:`parse_locations`) before anything runs, so a typo
(``s3:/x``, ``ftp://x``) is one line, exit 2, and nothing is written anywhere.
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
from terraloom.pipeline.plan_cli import add_plan_parser
from terraloom.pipeline.world import add_world_parser
from terraloom.schemas.cliargs import (
    add_config_args,
    add_progress_flag,
    add_storage_option,
    command_parser,
    config_from_args,
    default_help,
    run_command,
)
from terraloom.schemas.layouts import DEFAULT_SHARD_SAMPLES
from terraloom.storage.location import Location, LocationError, parse_storage_options


def parse_locations(args: argparse.Namespace, *values: str) -> list[Location]:
    """Every location argument of a command, parsed at once with the command's
    ``--storage-option`` values (:class:`LocationError`, one line, for any bad one)."""
    opts = parse_storage_options(getattr(args, "storage_option", None))
    return [Location.parse(v, opts) for v in values]


def _pairs(items: Sequence[str], flag: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` flag values as pairs (``--bands S2L2A=B02,B03``, ``--gdal-option K=V``)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BuildInputError(f"bad {flag} {item!r}: expected KEY=VALUE")
        out.append((key.strip(), value.strip()))
    return out


def _config_from_args(args: argparse.Namespace) -> Any:
    """The ``BuildConfig``: ``--config`` <- ``--set`` <- the flags given.

    Every field is reachable from a config file or ``--set``; the flags are shortcuts.
    """
    from terraloom.pipeline.build_config import BuildConfig, parse_band_flags
    from terraloom.schemas.modalities import UnknownModalityError

    try:
        bands = parse_band_flags(args.bands)
    except ValueError as exc:
        raise BuildInputError(str(exc)) from exc
    flags: dict[str, Any] = {
        "modalities": args.modalities,
        "required": args.required,
        "max_cloud_fraction": args.max_cloud_fraction,
        "max_nodata_fraction": args.max_nodata_fraction,
        "band_subset": bands or None,
        "io_threads": args.io_threads,
        "http_timeout_s": args.http_timeout,
        "http_max_retry": args.http_max_retry,
        "gdal_options": _pairs(args.gdal_option, "--gdal-option") or None,
        "href_policy.roots": args.allow_href_root or None,
        "href_policy.hosts": args.allow_host or None,
        "href_policy.allow_private_hosts": True if args.allow_private_hosts else None,
        "href_policy.extra_schemes": args.allow_scheme or None,
    }
    try:
        return config_from_args(BuildConfig, args, flags)
    except (ValueError, TypeError, UnknownModalityError) as exc:
        raise BuildInputError(str(exc)) from exc


def add_build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``build`` on the ``terraloom-pipeline`` sub-command parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "build",
        help="build (or resume) the corpus from a plan on Beam or Dask",
        description="Build the corpus Zarr stores + index/rejects from plan.parquet. Re-running resumes a killed build; "
        "a finished build is left untouched. Options after `--` are passed to Beam (e.g. Dataflow/Flink options). "
        "Every BuildConfig field is reachable with --config FILE.yaml / --set key=value; the flags below are "
        "shortcuts and win over both.",
    )
    p.add_argument(
        "--plan",
        required=True,
        help="plan.parquet (or partitioned plan) from `terraloom-pipeline plan`: a path or URL",
    )
    p.add_argument(
        "--out", required=True, help="corpus output: a directory or URL (s3://, gs://, az://)"
    )
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
    from terraloom.pipeline.build_config import BuildConfig

    def d(name: str, text: str = "") -> str:
        return default_help(BuildConfig, name, text)

    add_config_args(p, BuildConfig)
    p.add_argument("--modalities", help=d("modalities", "comma-separated modalities to build"))
    p.add_argument(
        "--required",
        help=d("required", "comma-separated modalities whose absence rejects a sample"),
    )
    p.add_argument(
        "--bands",
        action="append",
        default=[],
        metavar="MODALITY=BAND,BAND",
        help="build only these bands of a modality, e.g. S2L2A=B02,B03,B04,B08 (repeatable); "
        "the others stay at the fill value and are not read (default: all bands)",
    )
    p.add_argument(
        "--max-cloud-fraction",
        type=float,
        help=d("max_cloud_fraction", "cloud + shadow fraction over which a sample is rejected"),
    )
    p.add_argument(
        "--max-nodata-fraction",
        type=float,
        help=d("max_nodata_fraction", "nodata fraction over which a sample is rejected"),
    )
    p.add_argument(
        "--io-threads",
        type=int,
        help=d("io_threads", "threads reading different assets of a block (helps remote hrefs)"),
    )
    p.add_argument(
        "--http-timeout",
        type=int,
        metavar="SECONDS",
        help=d("http_timeout_s", "GDAL HTTP timeout per request"),
    )
    p.add_argument(
        "--http-max-retry", type=int, help=d("http_max_retry", "GDAL HTTP retries per request")
    )
    p.add_argument(
        "--gdal-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra GDAL configuration option, e.g. GDAL_HTTP_PROXY=host:port (repeatable)",
    )
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
    add_storage_option(p)
    add_progress_flag(p)
    p.add_argument(
        "--verbose",
        action="store_true",
        help="keep the engine's own log lines (Beam's runner and worker warnings), quiet by default",
    )
    p.add_argument("pipeline_args", nargs="*", help="Beam pipeline options, after `--`")
    p.set_defaults(func=build_command)
    return p


def build_command(args: argparse.Namespace) -> int:
    try:
        plan, out = parse_locations(args, args.plan, args.out)
    except LocationError as exc:
        print(f"terraloom-pipeline build: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        config = _config_from_args(args)
        if args.pipeline_args and args.engine != "beam":
            raise BuildInputError("pipeline options after `--` apply to --engine beam only")
        summary = run_build(
            plan,
            out,
            engine=args.engine,
            config=config,
            shard_samples=args.shard_samples,
            workers=args.workers,
            runner=args.runner,
            pipeline_args=tuple(args.pipeline_args),
            scheduler=args.scheduler,
            progress=not args.no_progress,
            verify_committed=args.verify_committed,
            verbose=args.verbose,
        )
    except BuildInputError as exc:
        print(f"terraloom-pipeline build: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        print(
            f"terraloom-pipeline build: error: no space left on the device of {out} "
            f"({committed_count(out)} blocks committed); the output is resumable: "
            "free space and re-run the same command",
            file=sys.stderr,
        )
        return 1
    print(summary.table())
    return 1 if summary.nothing_accepted else 0  # every sample rejected: a failed build


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --------------------------------------------------------------------------- verify


def add_verify_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``verify`` on the ``terraloom-pipeline`` sub-command parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "verify",
        help="check a corpus: layout, commit markers, tables and checksums",
        description="Exit 0 when the corpus is sound, 1 with the findings listed otherwise, "
        "2 on bad input.",
    )
    p.add_argument("corpus", help="corpus output of `build`: a directory or URL")
    p.add_argument(
        "--no-checksums",
        action="store_true",
        help="skip reading the arrays (layout and tables only)",
    )
    add_storage_option(p)
    add_progress_flag(p)
    p.set_defaults(func=verify_command)
    return p


def _not_a_corpus(corpus: Location) -> str | None:
    """Why ``corpus`` is not a corpus (it is another kind of store), or None."""
    from terraloom.storage.kind import CORPUS, WrongStoreError, expect_store_kind

    if not corpus.is_local:
        return None  # the manifest check below says it for remote stores
    try:
        expect_store_kind(corpus.local_path, CORPUS)
    except WrongStoreError as exc:
        return str(exc)
    return None


def verify_command(args: argparse.Namespace) -> int:
    from terraloom.pipeline.build import manifest_path
    from terraloom.pipeline.verify import verify_corpus

    try:
        (corpus,) = parse_locations(args, args.corpus)
    except LocationError as exc:
        print(f"terraloom-pipeline verify: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    problem = _not_a_corpus(corpus)
    if problem is None and not manifest_path(corpus).exists():
        problem = f"{args.corpus} is not a corpus built by `terraloom-pipeline build`"
    if problem:
        print(f"terraloom-pipeline verify: error: {problem}", file=sys.stderr)
        return 2
    report = verify_corpus(corpus, checksums=not args.no_checksums, progress=not args.no_progress)
    for finding in report.findings:
        print(f"FAIL {finding}")
    status = "OK" if report.ok else f"{len(report.findings)} findings"
    print(
        f"verify {args.corpus}: {status} ({report.blocks_checked} blocks, "
        f"{report.samples_checked} samples checked)"
    )
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- quicklook


def add_quicklook_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``quicklook`` on the ``terraloom-pipeline`` sub-command parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "quicklook", help="render one PNG per sample with all modalities side by side"
    )
    p.add_argument("corpus", help="corpus output of `build`: a directory or URL")
    p.add_argument(
        "--out",
        required=True,
        help="directory or URL for the PNGs (<out>/<split>/<sample_id>.png)",
    )
    p.add_argument("--split", action="append", default=None, help="only these splits (repeatable)")
    p.add_argument(
        "--sample-id", action="append", default=None, help="only these samples (repeatable)"
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many samples (>= 0)")
    p.add_argument("--dpi", type=int, default=60, help="resolution of the PNGs (default 60)")
    add_storage_option(p)
    add_progress_flag(p)
    p.set_defaults(func=quicklook_command)
    return p


def quicklook_command(args: argparse.Namespace) -> int:
    from terraloom.pipeline.quicklook import render_corpus

    try:
        corpus, out = parse_locations(args, args.corpus, args.out)
    except LocationError as exc:
        print(f"terraloom-pipeline quicklook: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    problem = _not_a_corpus(corpus)
    if problem is None and out.read_only:
        problem = f"--out {out} is read-only ({out.scheme}://)"
    if problem is None and not (corpus / "index.parquet").exists():
        problem = f"{corpus} has no index.parquet (not a finished corpus)"
    if problem is None and args.limit is not None and args.limit < 0:
        problem = f"--limit must be >= 0, got {args.limit}"
    if problem is None and args.dpi < 1:
        problem = f"--dpi must be >= 1, got {args.dpi}"
    if problem:
        print(f"terraloom-pipeline quicklook: error: {problem}", file=sys.stderr)
        return 2
    try:
        paths = render_corpus(
            corpus,
            out,
            splits=args.split,
            limit=args.limit,
            sample_ids=args.sample_id,
            dpi=args.dpi,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"terraloom-pipeline quicklook: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} quicklooks to {args.out}")
    return 0


# --------------------------------------------------------------------------- publish


def add_publish_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``publish`` on the ``terraloom-pipeline`` sub-command parser."""
    from terraloom.pipeline.publish import PublishConfig

    p: argparse.ArgumentParser = subparsers.add_parser(
        "publish",
        help="publish a corpus: STAC, Croissant, dataset card, stats, SHA256SUMS, TerraMesh shards",
        description="Write OUT/<version>/ from a finished corpus (OUT and CORPUS: a directory or "
        "URL). Re-publishing the same corpus is a no-op. Exit 0 ok, 2 on bad input.",
    )
    p.add_argument("corpus", help="corpus output of `build`: a directory or URL")
    p.add_argument(
        "--out",
        required=True,
        help="destination directory or URL; the version is written to <out>/<version>",
    )
    p.add_argument(
        "--tokens",
        default=None,
        help="token store of this corpus (`terraloom-tokenize encode` output) to publish beside "
        "it, as <out>/<version>/tokens",
    )
    p.add_argument(
        "--formats",
        default="zarr,webdataset",
        help="comma-separated data formats: zarr, webdataset (default both)",
    )
    p.add_argument("--name", default=PublishConfig.name, help="dataset name (STAC/Croissant id)")
    p.add_argument(
        "--version", default=PublishConfig.version, help="dataset version (default 1.0.0)"
    )
    p.add_argument("--title", default=None)
    p.add_argument("--license", default=PublishConfig.license, help="SPDX id of the published data")
    p.add_argument(
        "--quicklooks", type=int, default=None, help="samples with a quicklook (default all)"
    )
    p.add_argument(
        "--gallery",
        type=int,
        default=PublishConfig.gallery_samples,
        help="samples in the card's gallery",
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="the corpus was built from generated data (terraloom's synthetic world): the card "
        "and the STAC collection say so and credit no third-party source",
    )
    p.add_argument(
        "--hub-repo",
        default=None,
        metavar="OWNER/NAME",
        help="Hugging Face dataset repository the version will be uploaded to: the card links "
        "its pictures by absolute Hub URLs (default: relative links)",
    )
    add_storage_option(p)
    add_progress_flag(p)
    p.set_defaults(func=publish_command)
    return p


def publish_command(args: argparse.Namespace) -> int:
    from terraloom.pipeline.publish import PublishConfig, PublishInputError, publish_corpus
    from terraloom.storage.lease import LeaseHeld

    prog = "terraloom-pipeline publish"
    try:
        corpus, out, *tokens = parse_locations(
            args, args.corpus, args.out, *([args.tokens] if args.tokens else [])
        )
        if args.quicklooks is not None and args.quicklooks < 0:
            raise PublishInputError("--quicklooks must be >= 0")
        config = PublishConfig(
            name=args.name,
            version=args.version,
            formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
            title=args.title,
            license=args.license,
            quicklooks=args.quicklooks,
            gallery_samples=args.gallery,
            hub_repo=args.hub_repo,
            synthetic=args.synthetic,
        )
        summary = publish_corpus(
            corpus,
            out,
            config,
            tokens=tokens[0] if tokens else None,
            progress=not args.no_progress,
        )
    except (PublishInputError, LocationError, LeaseHeld) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(summary.table())
    return 0


def add_published_option(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--published`` to the ``verify`` parser: ``verify --published DEST``."""
    p.add_argument(
        "--published",
        action="store_true",
        help="the path is a published dataset (DEST or DEST/<version>, a directory or URL): "
        "check every digest in SHA256SUMS and the STAC/Croissant/index consistency",
    )
    plain = p.get_default("func")

    def run(args: argparse.Namespace) -> int:
        return published_command(args) if args.published else int(plain(args))

    p.set_defaults(func=run)
    return p


def published_command(args: argparse.Namespace) -> int:
    from terraloom.pipeline.publish.verify import published_versions, verify_published

    prog = "terraloom-pipeline verify"
    try:
        (dest,) = parse_locations(args, args.corpus)
        versions = published_versions(dest)
    except (LocationError, OSError) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if not versions:
        print(
            f"{prog}: error: {dest} holds no dataset written by `terraloom-pipeline publish`",
            file=sys.stderr,
        )
        return 2
    report = verify_published(dest)
    for finding in report.findings:
        print(f"FAIL {finding}")
    status = "OK" if report.ok else f"{len(report.findings)} findings"
    print(f"verify --published {dest}: {status} (versions: {', '.join(report.versions)})")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    return command_parser(
        "terraloom-pipeline",
        "terraloom corpus pipeline: plan, build, verify, quicklook, publish.",
        [
            add_world_parser,
            add_plan_parser,
            add_build_parser,
            lambda sub: add_published_option(add_verify_parser(sub)),
            add_quicklook_parser,
            add_publish_parser,
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
