"""The flags every terraloom command line shares, spelt once.

``--version`` on every CLI; ``--config FILE.yaml`` plus repeatable ``--set key=value`` on
the commands whose job is a config dataclass; ``--no-progress`` as the one spelling of
"no progress bar" (``--quiet`` stays as a hidden alias). A command's own flags are
shortcuts for config fields: their defaults are ``None`` (so the dataclass' default
applies and is shown in ``--help``) and, when given, they win over the file and ``--set``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from terraloom.schemas.config import config_tree, field_default, from_dict, set_path

__all__ = [
    "SubParsers",
    "add_config_args",
    "add_progress_flag",
    "add_storage_option",
    "add_version",
    "command_parser",
    "config_from_args",
    "default_help",
    "run_command",
    "version_string",
]

T = TypeVar("T")

#: What a command's ``add_<command>_parser`` registers on (``argparse._SubParsersAction``,
#: private in argparse, hence not spelt here).
SubParsers = Any


def version_string(prog: str) -> str:
    """``<prog> <installed terraloom version>``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("terraloom")
    except PackageNotFoundError:  # run from a source tree that was never installed
        v = "unknown"
    return f"{prog} {v}"


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``<prog> <version>`` and exit 0."""
    parser.add_argument("--version", action="version", version=version_string(parser.prog))


def command_parser(
    prog: str, description: str, commands: Iterable[Callable[[SubParsers], object]]
) -> argparse.ArgumentParser:
    """A command line of subcommands: ``--version``, then each of ``commands`` registers its
    subcommand (in help order); the chosen one is ``args.command``, its handler ``args.func``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in commands:
        register(sub)
    return parser


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    bad_input: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv``, run the chosen subcommand's handler and return its exit code.

    An exception of a ``bad_input`` type is one line, ``<prog> <command>: error: ...``, on
    stderr and exit 2; any other keeps its traceback (a bug is not bad input).
    """
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except bad_input as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """``--config FILE`` and ``--set key=value`` for the config dataclass ``cls``."""
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help=f"YAML/JSON file of {cls.__name__} fields; the flags and --set apply on top",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"set a {cls.__name__} field (dotted for nested ones; the value is YAML), repeatable",
    )


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` (dest ``no_progress``); ``--quiet`` is a hidden alias."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", dest="no_progress", action="store_true", help=argparse.SUPPRESS)


def add_storage_option(parser: argparse.ArgumentParser) -> None:
    """``--storage-option key=value`` (repeatable): fsspec options of every location the
    command is given; ``terraloom.storage.parse_storage_options`` reads them (here only the
    flag is spelt: schemas hold no I/O)."""
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the storage backend for every location of this command, e.g. "
        "endpoint_url=http://minio:9000 or anon=true (repeatable; see docs/cloud.md)",
    )


def default_help(cls: type, name: str, text: str = "") -> str:
    """Help text ending in the dataclass default, e.g. ``"optimizer steps (default 2000)"``."""
    default = field_default(cls, name)
    if isinstance(default, tuple):
        default = ",".join(map(str, default)) or "none"
    shown = str(default).replace("%", "%%")
    return f"{text} (default {shown})" if text else f"default {shown}"


def config_from_args(
    cls: type[T],
    args: argparse.Namespace,
    flags: Mapping[str, Any] = (),  # type: ignore[assignment]
    base: Mapping[str, Any] | None = None,
) -> T:
    """``cls`` from ``base`` <- ``--config`` <- ``--set`` <- the flags given (not ``None``).

    ``flags`` maps dotted field names to flag values; ``None`` means "not given".
    """
    tree: dict[str, Any] = dict(base or {})
    tree.update(config_tree(getattr(args, "config", None), getattr(args, "overrides", ())))
    for key, value in dict(flags).items():
        if value is not None:
            set_path(tree, key, value)
    return from_dict(cls, tree)
