"""schemas/cliargs.py: the flags every CLI shares, checked through each CLI's entry point."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

CLIS = {
    "terraloom-pipeline": "terraloom.pipeline.cli",
    "terraloom-tokenize": "terraloom.tokenize_jobs.cli",
    "terraloom-model": "terraloom.model.cli",
    "terraloom-schemas": "terraloom.schemas.cli",
    "terraloom-demo": "terraloom.orchestration.demo",
}


@pytest.mark.parametrize(("prog", "module"), sorted(CLIS.items()))
def test_version_on_every_cli(prog: str, module: str, capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {version('terraloom')}"


def test_version_of_an_installed_console_script() -> None:
    script = Path(sys.executable).with_name("terraloom-tokenize")
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("terraloom-tokenize ")


def _helps(parser: object) -> list[str]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    out = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _helps(sub)
    return out


@pytest.mark.parametrize("module", sorted(CLIS.values()))
def test_help_shows_no_rest_markup(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    mod = importlib.import_module(module)
    if hasattr(mod, "build_parser"):
        parsers = [mod.build_parser()]
    else:  # schemas and demo build their parser inside main: capture it
        seen: list[argparse.ArgumentParser] = []
        real = argparse.ArgumentParser.parse_args

        def grab(self: argparse.ArgumentParser, *a: object, **k: object) -> object:
            seen.append(self)
            raise SystemExit(0)

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
        with pytest.raises(SystemExit):
            mod.main([])
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real)
        parsers = seen
    for text in (t for p in parsers for t in _helps(p)):
        assert "``" not in text and ":class:" not in text, text[:200]


def test_one_spelling_for_no_progress_with_quiet_hidden() -> None:
    from terraloom.model.cli import build_parser as model_parser
    from terraloom.pipeline.cli import build_parser as pipeline_parser
    from terraloom.tokenize_jobs.cli import build_parser as tokenize_parser

    cases = [
        (model_parser(), ["train"]),
        (pipeline_parser(), ["build", "--plan", "p", "--out", "o"]),
        (pipeline_parser(), ["plan", "--source", "s", "--out", "o"]),
        (tokenize_parser(), ["train", "--corpus", "c"]),
        (tokenize_parser(), ["encode", "--corpus", "c", "--tokenizers", "t", "--out", "o"]),
    ]
    for parser, argv in cases:
        for flag in ("--no-progress", "--quiet"):
            assert parser.parse_args([*argv, flag]).no_progress is True
        assert parser.parse_args(argv).no_progress is False
    sub = model_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    assert "--no-progress" in sub.format_help() and "--quiet" not in sub.format_help()


def test_a_key_error_is_not_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyError inside a command is a bug: it propagates instead of exiting 2."""
    from terraloom.model import cli

    def broken(args: object) -> int:
        raise KeyError("internal")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["config"].set_defaults(func=broken)  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        cli.main(["config"])


def test_command_parser_and_run_command(capsys: pytest.CaptureFixture[str]) -> None:
    """One pattern for every CLI of subcommands: ``--version``, the commands in order, the
    handler's exit code; a ``bad_input`` exception is one line and exit 2, any other (a bug)
    keeps its traceback."""
    import argparse

    from terraloom.schemas.cliargs import command_parser, run_command

    def handler(args: argparse.Namespace) -> int | None:
        if args.fail == "value":
            raise ValueError("no such thing\u2014really")
        if args.fail == "key":
            raise KeyError("internal")
        return None if args.fail == "none" else 3

    def add_go(sub: object) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser("go", help="go on")  # type: ignore[attr-defined]
        p.add_argument("--fail", default="")
        p.set_defaults(func=handler)
        return p

    def add_stay(sub: object) -> None:
        sub.add_parser("stay", help="stay put")  # type: ignore[attr-defined]

    parser = command_parser("terraloom-x", "a test CLI", [add_go, add_stay])
    help_text = parser.format_help()
    assert "--version" in help_text and help_text.index("go on") < help_text.index("stay put")
    assert run_command(parser, ["go"], (ValueError,)) == 3
    assert run_command(parser, ["go", "--fail", "none"], (ValueError,)) == 0
    assert run_command(parser, ["go", "--fail", "value"], (ValueError,)) == 2
    err = capsys.readouterr().err
    assert err == "terraloom-x go: error: no such thing\u2014really\n"
    with pytest.raises(KeyError):
        run_command(parser, ["go", "--fail", "key"], (ValueError,))
    with pytest.raises(ValueError):  # nothing is bad input unless named
        run_command(parser, ["go", "--fail", "value"])
