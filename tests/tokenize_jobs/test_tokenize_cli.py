"""Tests of the ``train`` subcommand of tokenize_jobs/cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from terraloom.tokenize_jobs.cli import build_parser, main
from terraloom.tokenize_jobs.tokenizers.io import load_tokenizer


def test_train_geo_and_an_image_tokenizer(
    toy_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "train",
                "--modality",
                "geo",
                "--corpus",
                str(toy_corpus),
                "--out",
                str(tmp_path / "geo"),
            ]
        )
        == 0
    )
    assert load_tokenizer(tmp_path / "geo").vocab_size == 2160
    argv = [
        "train",
        "--modality",
        "NDVI",
        "--corpus",
        str(toy_corpus),
        "--out",
        str(tmp_path / "ndvi"),
        "--steps",
        "3",
        "--batch",
        "2",
        "--crop",
        "32",
        "--width",
        "8",
        "--warmup",
        "1",
        "--eval-samples",
        "1",
        "--device",
        "cpu",
        "--compand-alpha",
        "0.5",
        "--no-progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "NDVI tokenizer written to" in out and "| **mean** |" in out  # the eval table is printed
    cfg = json.loads((tmp_path / "ndvi" / "config.json").read_text())
    assert cfg["training"]["steps"] == 3 and cfg["model"]["net"]["width"] == 8
    assert cfg["training"]["compand_alpha"] == 0.5 and cfg["model"]["compand_knots"] > 0
    # --no-compand: evenly spaced levels, and a config without the compander
    assert main([*argv[:6], str(tmp_path / "ndvi_plain"), *argv[7:], "--no-compand"]) == 0
    plain = json.loads((tmp_path / "ndvi_plain" / "config.json").read_text())
    assert "compand_knots" not in plain["model"] and plain["training"]["compand_knots"] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modality", "S2RGB"], "has no tokenizer"),
        (["--modality", "S9"], "unknown modality"),
        (["--modality", "DEM", "--crop", "40"], "multiple of 16"),
        (["--modality", "DEM", "--steps", "0"], "steps"),
        (["--modality", "DEM", "--compand-alpha", "2"], "compand_alpha"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    toy_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    code = main(["train", "--corpus", str(toy_corpus), "--out", str(tmp_path / "x"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_corpus_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--modality", "DEM", "--corpus", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_parser_lists_the_train_subcommand() -> None:
    help_text = build_parser().format_help()
    assert "train" in help_text
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train"])  # --modality and --corpus are required
    assert exc.value.code == 2
