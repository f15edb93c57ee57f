"""Tests of the ``train`` subcommand of tokenize_jobs/cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from terraloom.tokenize_jobs.cli import build_parser, main
from terraloom.tokenize_jobs.tokenizers.io import load_tokenizer
from tests.cli_support import BAD_LOCATIONS, assert_refused_before_writing


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


# --------------------------------------------------------------------------- config, stores


def _token_store(root: Path) -> Path:
    """A token store root (one empty ``train.zarr`` with the token layout's attributes)."""
    from terraloom.schemas.layouts import create_token_store

    create_token_store(root / "train.zarr", n_samples=2, n_crops=1, crop_px=32, shard_samples=2)
    return root


def test_train_flags_default_to_the_train_config(toy_corpus: Path) -> None:
    """No flag repeats a TrainConfig default: unset flags leave the dataclass' defaults."""
    from terraloom.tokenize_jobs.cli import train_config_from_args
    from terraloom.tokenize_jobs.train import TrainConfig

    args = build_parser().parse_args(["train", "--modality", "DEM", "--corpus", str(toy_corpus)])
    assert train_config_from_args(args) == TrainConfig(modality="DEM")
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()  # type: ignore[union-attr]
    assert f"(default {TrainConfig.steps})" in help_text


def test_train_config_file_set_and_flags_in_that_order(toy_corpus: Path, tmp_path: Path) -> None:
    from terraloom.tokenize_jobs.cli import train_config_from_args

    path = tmp_path / "tok.yaml"
    path.write_text("modality: NDVI\nsteps: 7\nbatch: 3\nchannel_mult: [1, 2]\ninit_crops: 5\n")
    argv = ["train", "--corpus", str(toy_corpus), "--config", str(path)]
    cfg = train_config_from_args(build_parser().parse_args([*argv, "--set", "steps=9"]))
    assert (cfg.modality, cfg.steps, cfg.batch, cfg.channel_mult, cfg.init_crops) == (
        "NDVI",
        9,
        3,
        (1, 2),
        5,
    )
    cfg = train_config_from_args(
        build_parser().parse_args([*argv, "--set", "steps=9", "--steps", "4", "--no-amp"])
    )
    assert cfg.steps == 4 and cfg.amp is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "stepz=3"], "unknown keys ['stepz']"),
        (["--set", "steps=many"], "steps: expected int"),
        (["--config", "MISSING"], "does not exist"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(
    toy_corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    extra = [str(tmp_path / e) if e == "MISSING" else e for e in extra]
    out = tmp_path / "out"
    argv = ["train", "--modality", "DEM", "--corpus", str(toy_corpus), "--out", str(out)]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_train_and_encode_refuse_a_token_store_as_corpus(
    toy_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = _token_store(tmp_path / "tokens")
    out = tmp_path / "out"
    assert main(["train", "--modality", "DEM", "--corpus", str(tokens), "--out", str(out)]) == 2
    assert f"{tokens} is a token store, not a corpus" in capsys.readouterr().err
    enc = ["encode", "--corpus", str(tokens), "--tokenizers", str(tmp_path), "--out", str(out)]
    assert main([*enc, "--device", "cpu"]) == 2
    assert f"{tokens} is a token store, not a corpus" in capsys.readouterr().err
    assert not out.exists()
    # and the other way round: a token store written into a corpus
    enc = ["encode", "--corpus", str(toy_corpus), "--tokenizers", str(tmp_path)]
    assert main([*enc, "--out", str(toy_corpus), "--device", "cpu"]) == 2
    assert f"{toy_corpus} is a corpus, not a token store" in capsys.readouterr().err


def test_verify_refuses_a_corpus(toy_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(toy_corpus)]) == 2
    err = capsys.readouterr().err
    assert f"{toy_corpus} is a corpus, not a token store" in err and "KeyError" not in err


def test_encode_config_file_reaches_every_field(toy_corpus: Path, tmp_path: Path) -> None:
    from terraloom.tokenize_jobs.cli import encode_config_from_args

    path = tmp_path / "enc.yaml"
    path.write_text("n_crops: 3\nmax_shards: 1\ncrop_on_device: false\nmodalities: [DEM, GEO]\n")
    argv = ["encode", "--corpus", str(toy_corpus), "--tokenizers", "t", "--out", "o"]
    cfg = encode_config_from_args(
        build_parser().parse_args([*argv, "-c", str(path), "--set", "seed=5", "--crops", "2"])
    )
    assert (cfg.n_crops, cfg.max_shards, cfg.crop_on_device, cfg.modalities, cfg.seed) == (
        2,
        1,
        False,
        ("DEM", "GEO"),
        5,
    )
    assert cfg.device in ("cpu", "cuda")  # resolved from the machine when not given


def test_geo_eval_md_carries_the_figures_of_eval_json(toy_corpus: Path, tmp_path: Path) -> None:
    assert (
        main(["train", "--modality", "GEO", "--corpus", str(toy_corpus), "--out", str(tmp_path)])
        == 0
    )
    report = json.loads((tmp_path / "eval.json").read_text())
    md = (tmp_path / "eval.md").read_text()
    assert "max_error_lat_deg" in report and "| max_error_lat_deg |" in md
    assert f"| n_samples | {report['n_samples']} |" in md


@pytest.mark.parametrize("bad", BAD_LOCATIONS)
def test_every_location_argument_refuses_a_bad_url_before_writing(
    bad, tmp_path, monkeypatch, capsys
):
    """Issue 19: a malformed URL or unknown scheme in any location argument is one line,
    exit 2, and nothing is written anywhere (no local folder named ``s3:``)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    good = str(tmp_path / "in")
    commands = [
        ["train", "--modality", "GEO", "--corpus", bad, "--out", "tok"],
        ["train", "--modality", "GEO", "--corpus", good, "--out", bad],
        ["encode", "--corpus", bad, "--tokenizers", good, "--out", "tokens"],
        ["encode", "--corpus", good, "--tokenizers", bad, "--out", "tokens"],
        ["encode", "--corpus", good, "--tokenizers", good, "--out", bad],
        ["verify", bad],
        ["verify", good, "--corpus", bad],
        ["fetch", bad, "--out", "copy"],
        ["fetch", good, "--out", bad],
    ]
    assert_refused_before_writing(main, commands, bad, tmp_path, capsys)
