"""The terraloom-model CLI: train from a YAML config, config inspection, exit code 2."""

from __future__ import annotations

import json

from model.cli import main
from model.config import save_config


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
