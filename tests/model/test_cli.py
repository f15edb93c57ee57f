"""The terraloom-model CLI: train from a YAML config, config inspection, exit code 2."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from gen_support import Stack, one_thread, shared_root, tiny_model_config, toy_stack  # noqa: F401

from terraloom.model.cli import main
from terraloom.model.config import DataConfig, MaskingConfig, TrainConfig, save_config
from tests.cli_support import BAD_LOCATIONS, assert_refused_before_writing


def test_cli_train_writes_checkpoint_and_metrics(train_config, tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"
    save_config(train_config(tmp_path / "out", steps=2, ckpt_every=2), path)
    assert main(["train", "--config", str(path), "--quiet", "--set", "log_every=1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["loss"] > 0
    assert (tmp_path / "out" / "step_00000002" / "model.safetensors").exists()
    assert len((tmp_path / "out" / "metrics.csv").read_text().splitlines()) == 3


def test_cli_config_and_errors(tmp_path, capsys) -> None:
    assert main(["config", "--set", "model.size=base", "--params"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["encoder_blocks"] == 12 * 7_079_424 and counts["decoder_blocks"] == 12 * 9_440_256
    assert main(["config", "--set", "model.bogus=1"]) == 2
    assert "unknown keys" in capsys.readouterr().err
    bad = [
        "train",
        "--out-dir",
        str(tmp_path / "run"),
        "--set",
        f"data.tokens={tmp_path / 'missing'}",
    ]
    assert main([*bad, "--quiet"]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_cli_train_refuses_zero_and_negative_step_counts(train_config, tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"
    save_config(train_config(tmp_path / "out", steps=2), path)
    for flags in (["--steps", "0"], ["--max-steps", "-3"], ["--max-steps", "0"]):
        assert main(["train", "-c", str(path), "--quiet", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert flags[0] in err and "must be >= 1" in err and len(err.splitlines()) == 1
    assert main(["train", "-c", str(path), "--quiet", "--set", "steps=0"]) == 2
    assert "trains nothing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_train_says_when_there_is_nothing_to_train(train_config, tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"
    save_config(train_config(tmp_path / "out", steps=2, ckpt_every=2), path)
    assert main(["train", "-c", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "-c", str(path), "--quiet"]) == 0  # already at step 2 of 2
    out = capsys.readouterr().out
    assert "nothing to train" in out
    assert json.loads(out.strip().splitlines()[-1]) == {
        "steps": 2,
        "loss": None,
        "out_dir": str(tmp_path / "out"),
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return toy_stack(shared_root(tmp_path_factory))


def test_a_moved_run_generates_from_another_directory(stack, tmp_path, monkeypatch) -> None:
    mods = ("S2L2A", "S1GRD", "DEM", "LULC", "GEO")
    cfg = TrainConfig(
        model=tiny_model_config(token_inputs=mods, targets=mods),
        masking=MaskingConfig(input_budget=16, target_budget=16),
        data=DataConfig(tokens="tokens", corpus="corpus", num_workers=0),  # relative to the cwd
        out_dir=str(tmp_path / "run"),
        steps=1,
        batch_size=4,
        eval_every=0,
        ckpt_every=1,
        peak_tflops=1.0,
    )
    save_config(cfg, tmp_path / "run.yaml")
    monkeypatch.chdir(stack.tokens.parent)
    assert main(["train", "-c", str(tmp_path / "run.yaml"), "--quiet"]) == 0
    moved = tmp_path / "moved" / "run"
    shutil.copytree(tmp_path / "run", moved)
    shutil.rmtree(tmp_path / "run")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    gen = ["generate", "--checkpoint", str(moved), "--input", "S1GRD=val-000", "--target", "LULC"]
    gen += ["--steps", "1"]
    assert main([*gen, "--out", "a"]) == 0
    assert (tmp_path / "elsewhere" / "a" / "val-000" / "LULC.tif").exists()
    # the flags override what the checkpoint records
    assert main([*gen, "--out", "b", "--corpus", str(tmp_path / "no-corpus")]) == 2
    # a relative path in a checkpoint is taken relative to its run directory
    config = moved / "step_00000001" / "config.json"
    meta = json.loads(config.read_text())
    for key in ("tokens", "corpus"):
        meta["data"][key] = os.path.relpath(meta["data"][key], moved)
    config.write_text(json.dumps(meta))
    assert main([*gen, "--out", "c"]) == 0


@pytest.mark.parametrize("bad", BAD_LOCATIONS)
def test_every_location_argument_refuses_a_bad_url_before_writing(
    bad, tmp_path, monkeypatch, capsys
):
    """Issue 19: train/generate/evaluate given a malformed URL or an unknown scheme in any
    location: one line, exit 2, nothing written anywhere (no local folder named ``s3:``)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    good = str(tmp_path / "in")
    gen = ["--input", "DEM=x", "--target", "GEO"]
    commands = [
        ["train", "--out-dir", bad, "--set", f"data.tokens={good}"],
        ["train", "--out-dir", "run", "--set", f"data.tokens={bad}"],
        [
            "train",
            "--out-dir",
            "run",
            "--set",
            f"data.tokens={good}",
            "--set",
            f"data.corpus={bad}",
        ],
        ["generate", "--checkpoint", bad, "--out", "gen", *gen],
        ["generate", "--checkpoint", good, "--out", bad, *gen],
        ["generate", "--checkpoint", good, "--out", "gen", "--tokens", bad, *gen],
        ["evaluate", "--checkpoint", bad, "--out", "ev"],
        ["evaluate", "--checkpoint", good, "--out", bad],
        ["evaluate", "--checkpoint", good, "--out", "ev", "--corpus", bad],
    ]
    assert_refused_before_writing(main, commands, bad, tmp_path, capsys)


def test_cli_train_prints_its_summary_on_rank_0_only(
    train_config, tmp_path, capsys, monkeypatch
) -> None:
    """Under torchrun every rank runs ``_run_train``; only rank 0 prints the JSON line (issue 17).

    The rank comes from torchrun's ``RANK`` once the process group is gone; with
    ``WORLD_SIZE`` unset the training itself runs as one process, so no launch is needed.
    """
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    printed = {}
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        path = tmp_path / f"run{rank}.yaml"
        save_config(train_config(tmp_path / f"out{rank}", steps=1), path)
        assert main(["train", "-c", str(path), "--no-progress"]) == 0
        printed[rank] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert printed["1"] == []
    assert len(printed["0"]) == 1 and json.loads(printed["0"][0])["steps"] == 1
