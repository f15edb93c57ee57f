"""``terraloom-pipeline`` command line: one ``add_<cmd>_parser(subparsers)`` per sub-command.

Each sub-command lives next to the code it drives and registers itself here; its handler
(``args.func``) returns the exit code (0 ok, 1 findings/failure, 2 bad input).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from terraloom.pipeline.build import add_build_parser
from terraloom.pipeline.plan_cli import add_plan_parser
from terraloom.pipeline.publish import add_publish_parser
from terraloom.pipeline.publish.verify import add_published_option
from terraloom.pipeline.quicklook import add_quicklook_parser
from terraloom.pipeline.verify import add_verify_parser
from terraloom.pipeline.world import add_world_parser


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
