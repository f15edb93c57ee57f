"""``terraloom-pipeline world``: write the embedded synthetic world (also ``python -m terraloom.pipeline.world``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from terraloom.pipeline.world.regions import PRESETS
from terraloom.schemas.cliargs import add_progress_flag, add_version


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def add_world_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``world`` on the ``terraloom-pipeline`` sub-command parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "world",
        help="generate the embedded synthetic world (a static STAC catalog of COGs)",
        description="Generate the deterministic synthetic world: a local static STAC catalog of COGs shaped like "
        "sentinel-2-l2a/l1c, sentinel-1-grd/rtc, cop-dem-glo-30 and io-lulc-9-class, plus world.json.",
    )
    p.add_argument(
        "--out", required=True, help="output directory (created; must be empty unless --overwrite)"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="size of the world (default: tiny)",
    )
    p.add_argument("--seed", type=_nonneg_int, default=0, help="world seed (default: 0)")
    p.add_argument(
        "--workers", type=_nonneg_int, default=None, help="processes (default: all cores, max 8)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing world in --out")
    add_progress_flag(p)
    p.set_defaults(func=run_world)
    return p


def _fail(message: str) -> int:
    print(f"terraloom-pipeline world: error: {message}", file=sys.stderr)
    return 2


def run_world(args: argparse.Namespace) -> int:
    from terraloom.pipeline.world.generate import generate_world
    from terraloom.storage.location import Location, LocationError

    try:  # a world is a local catalog of COGs (GDAL opens its files by path)
        where = Location.parse(args.out)
    except LocationError as err:
        return _fail(" ".join(str(err).split()))
    if not where.is_local:
        return _fail(f"--out {where}: the world is written to a local directory, not a URL")
    out = where.local_path
    if not args.overwrite and out.is_dir() and any(out.iterdir()):
        return _fail(f"{out} is not empty (add --overwrite to replace a world there)")
    try:
        info = generate_world(
            args.out,
            preset=args.preset,
            seed=args.seed,
            progress=not args.no_progress,
            workers=args.workers or None,
            overwrite=args.overwrite,
        )
    except (FileExistsError, NotADirectoryError, ValueError) as err:
        return _fail(str(err))
    items = ", ".join(f"{k} {v}" for k, v in info.item_counts.items())
    print(f"wrote {info.root} ({info.nbytes / 1e6:.1f} MB, {info.seconds:.1f} s): {items}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="terraloom-pipeline", description="terraloom synthetic world"
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_world_parser(sub)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] != ["world"] and args_list[:1] not in (["--version"], ["-h"], ["--help"]):
        args_list = ["world", *args_list]
    args = parser.parse_args(args_list)
    return int(args.func(args))
