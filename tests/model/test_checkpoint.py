"""Checkpoints: train states are plain data, ``latest`` stays inside the run, paths are absolute."""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from terraloom.model.checkpoint import (
    STATE_FILE,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from terraloom.model.cli import main
from terraloom.model.config import TrainConfig, save_config
from terraloom.model.train import make_optimizer
from terraloom.model.transformer import TerraloomModel


class _Payload:
    """Pickles as a call of ``os.system``: what a crafted ``train_state.pt`` would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _save(out: Path, cfg: TrainConfig, step: int = 1) -> Path:
    torch.manual_seed(0)
    model = TerraloomModel(cfg.model)
    opt = make_optimizer(model, cfg, torch.device("cpu"), fsdp=False)
    return save_checkpoint(out, step, model, opt, cfg, {"epoch": 0, "batch": step})


def _plant_payload(ckpt: Path, marker: Path) -> None:
    torch.save(
        {"step": 1, "optimizer": _Payload(marker), "loader": None, "rng": None}, ckpt / STATE_FILE
    )


def test_train_state_is_plain_data_and_restores_every_rng(train_config, tmp_path) -> None:
    ckpt = _save(tmp_path / "run", train_config(tmp_path / "run"))
    state = torch.load(ckpt / STATE_FILE, weights_only=True)  # no code, no numpy objects
    assert state["step"] == 1 and state["loader"] == {"epoch": 0, "batch": 1}
    assert state["optimizer"]["param_groups"][0]["lr"] > 0

    torch.manual_seed(3)
    np.random.seed(3)  # noqa: NPY002 - the legacy global state is what the checkpoint restores
    random.seed(3)
    np.random.standard_normal()  # noqa: NPY002 - leaves a cached gaussian in the state
    saved = rng_state()
    want = (torch.rand(3), np.random.standard_normal(3), random.random())  # noqa: NPY002
    torch.manual_seed(9)
    np.random.seed(9)  # noqa: NPY002
    random.seed(9)
    set_rng_state(saved)
    got = (torch.rand(3), np.random.standard_normal(3), random.random())  # noqa: NPY002
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_a_pickle_that_runs_code_is_refused_and_never_runs(train_config, tmp_path) -> None:
    cfg = train_config(tmp_path / "run")
    ckpt = _save(tmp_path / "run", cfg)
    marker = tmp_path / "pwned"
    _plant_payload(ckpt, marker)
    model = TerraloomModel(cfg.model)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(ckpt, model)
    assert not marker.exists()


def test_cli_resume_from_a_crafted_train_state_exits_2(train_config, tmp_path, capsys) -> None:
    cfg = train_config(tmp_path / "run", steps=3)
    ckpt = _save(tmp_path / "run", cfg)
    marker = tmp_path / "pwned"
    _plant_payload(ckpt, marker)
    save_config(cfg, tmp_path / "run.yaml")
    assert main(["train", "-c", str(tmp_path / "run.yaml"), "--max-steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "refusing to load" in err and len(err.splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "run" / "step_00000002").exists()  # training did not go on


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_latest_escaping_the_run_directory_is_refused(train_config, tmp_path, kind) -> None:
    elsewhere = _save(tmp_path / "other", train_config(tmp_path / "other"), step=5)
    run = tmp_path / "run"
    _save(run, train_config(run))
    if kind == "absolute":
        (run / "latest").write_text(str(elsewhere))
    elif kind == "dotdot":
        (run / "latest").write_text(f"../other/{elsewhere.name}")
    else:
        (run / "step_00000005").symlink_to(elsewhere, target_is_directory=True)
        (run / "latest").write_text("step_00000005")
    with pytest.raises(CheckpointError, match="refusing to follow"):
        latest_checkpoint(run)


def test_latest_inside_the_run_directory_is_followed(train_config, tmp_path) -> None:
    run = tmp_path / "run"
    first = _save(run, train_config(run), step=1)
    _save(run, train_config(run), step=2)
    assert latest_checkpoint(run) == run / "step_00000002"
    (run / "latest").write_text(first.name + "\n")
    assert latest_checkpoint(run) == first


def test_checkpoint_config_records_absolute_data_paths(train_config, tmp_path, monkeypatch) -> None:
    cfg = train_config(tmp_path / "run")
    tokens, corpus = Path(cfg.data.tokens), Path(cfg.data.corpus)
    monkeypatch.chdir(tokens.parent)
    rel = replace(cfg, data=replace(cfg.data, tokens=tokens.name, corpus=corpus.name))
    ckpt = _save(tmp_path / "run", rel)
    data = json.loads((ckpt / "config.json").read_text())["data"]
    assert data["tokens"] == str(tokens.resolve()) and data["corpus"] == str(corpus.resolve())
