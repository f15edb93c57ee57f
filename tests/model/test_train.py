"""Training: the loss falls, resume is exact, DDP equals one process on the same batch."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from terraloom.model.checkpoint import latest_checkpoint
from terraloom.model.config import AlphaMixture, DataConfig, MaskingConfig, OptimConfig
from terraloom.model.testing import ToyWorld, make_toy_world, run_data_parallel
from terraloom.model.train import lr_at, plan_validation, train
from terraloom.tokenize_jobs.distributed import DistInfo


def test_lr_schedule_warms_up_then_decays(train_config, tmp_path) -> None:
    cfg = train_config(tmp_path, steps=100)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] < lrs[1] == cfg.optim.lr  # warmup_steps=2
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert abs(lrs[-1] - cfg.optim.lr * cfg.optim.min_lr_ratio) < 0.01 * cfg.optim.lr


def test_loss_decreases_on_the_toy_world(train_config, tmp_path) -> None:
    cfg = train_config(
        tmp_path,
        steps=16,
        log_every=4,
        eval_every=16,
        eval_batches=2,
        optim=OptimConfig(lr=5e-3, warmup_steps=2),
    )
    result = train(cfg, progress=False, echo=False)
    losses = np.array(result.losses)
    assert len(losses) == 16 and np.isfinite(losses).all()
    assert losses[-4:].mean() < losses[:2].mean() - 1.5
    val = [h for h in result.history if h["split"] == "val"]
    assert len(val) == 1 and val[0]["loss"] < losses[:2].mean() - 1.0
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith(
        "step,split,loss,lr,grad_norm,samples_per_s,tokens_per_s,mfu,loss/S1GRD"
    )
    assert len(rows) == 1 + 4 + 1  # header, four train windows, one val row


def test_resume_reproduces_the_uninterrupted_run_exactly(train_config, tmp_path) -> None:
    # 5 steps over a 4-batch epoch: the resumed half crosses an epoch boundary
    full = train(train_config(tmp_path / "full", steps=5, ckpt_every=2), progress=False, echo=False)
    cfg = train_config(tmp_path / "split", steps=5, ckpt_every=2)
    first = train(cfg, max_steps=2, progress=False, echo=False)
    assert latest_checkpoint(cfg.out_dir).name == "step_00000002"
    second = train(cfg, progress=False, echo=False)  # resumes from step 2
    assert len(full.losses) == 5 and len(first.losses) == 2 and len(second.losses) == 3
    assert first.losses + second.losses == full.losses  # bit-exact on CPU
    a = load_file(str(latest_checkpoint(tmp_path / "full") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(cfg.out_dir) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_ddp_and_fsdp_match_single_process(train_config, tmp_path) -> None:
    single = train(
        train_config(tmp_path / "one", steps=3, ckpt_every=3), progress=False, echo=False
    )
    cfgs = [
        train_config(tmp_path / mode, steps=3, ckpt_every=3, parallel=mode)
        for mode in ("ddp", "fsdp")
    ]
    runs = run_data_parallel(cfgs, world=2)  # gloo, global batch 8 = 2 x 4 per rank
    a = load_file(str(latest_checkpoint(tmp_path / "one") / "model.safetensors"))
    for cfg, losses in zip(cfgs, runs):
        np.testing.assert_allclose(losses, single.losses, rtol=1e-5)
        b = load_file(str(latest_checkpoint(cfg.out_dir) / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def _metrics(out_dir) -> list[dict[str, str]]:
    with (out_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_resume_truncates_metrics_to_the_resumed_step(train_config, tmp_path) -> None:
    cfg = train_config(tmp_path, steps=4, ckpt_every=2)
    train(cfg, max_steps=3, progress=False, echo=False)  # logs steps 1..3
    assert [r["step"] for r in _metrics(tmp_path)] == ["1", "2", "3"]
    # killed after logging step 3, before its checkpoint: the newest one is step 2
    shutil.rmtree(tmp_path / "step_00000003")
    (tmp_path / "latest").write_text("step_00000002")
    train(cfg, progress=False, echo=False)  # resumes at 2: step 3 is trained (and logged) again
    assert [r["step"] for r in _metrics(tmp_path)] == ["1", "2", "3", "4"]
    train(cfg, resume=False, max_steps=1, progress=False, echo=False)  # a fresh start
    assert [r["step"] for r in _metrics(tmp_path)] == ["1"]


def test_a_modality_without_targets_is_logged_as_absent(train_config, tmp_path, capsys) -> None:
    only_s1 = MaskingConfig(
        input_budget=48,
        target_budget=48,
        mixtures=(AlphaMixture("s1_only", 1.0, 0.5, 0.5, target_only=("S1GRD",)),),
    )
    cfg = train_config(tmp_path, steps=2, masking=only_s1, eval_every=2, eval_batches=1)
    result = train(cfg, progress=False, echo=True)
    out = capsys.readouterr().out
    assert "S1GRD=" in out and "LULC" not in out and "nan" not in out
    for row in result.history:
        assert row["loss/S1GRD"] > 0 and row["loss/LULC"] is None
    rows = _metrics(tmp_path)
    assert [r["split"] for r in rows] == ["train", "train", "val"]
    assert all(r["loss/LULC"] == "" and float(r["loss/S1GRD"]) > 0 for r in rows)


def test_zero_or_negative_step_counts_are_refused(train_config, tmp_path) -> None:
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train(train_config(tmp_path / "a", steps=0), progress=False, echo=False)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        train(train_config(tmp_path / "b"), max_steps=-3, progress=False, echo=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def one_val_row_world(tmp_path_factory: pytest.TempPathFactory) -> ToyWorld:
    """A toy world whose val split holds a single valid row (the tiny world under DDP)."""
    world = make_toy_world(tmp_path_factory.mktemp("onerow"), n_samples=8, n_crops=1, seed=1)
    valid = zarr.open_group(str(world.tokens / "val.zarr"), mode="r+")["valid"]
    valid[:] = np.arange(8) == 3
    return world


def _on(world: ToyWorld, cfg):  # noqa: ANN001, ANN202 - a TrainConfig reading ``world``
    return replace(cfg, data=DataConfig(str(world.tokens), str(world.corpus), num_workers=0))


def test_validation_plan_degrades_on_small_splits(
    one_val_row_world, train_config, tmp_path
) -> None:
    cfg = _on(one_val_row_world, train_config(tmp_path, batch_size=4, eval_every=1))
    one = plan_validation(cfg, DistInfo())
    assert one.dataset is not None and not one.replicated and one.dataset.order.global_batch == 1
    two = plan_validation(cfg, DistInfo(rank=1, world=2))
    assert two.replicated and "fewer than the 2 ranks" in two.note
    assert two.dataset is not None and two.dataset.order.world == 1
    valid = zarr.open_group(str(one_val_row_world.tokens / "val.zarr"), mode="r+")["valid"]
    valid[:] = False
    try:
        off = plan_validation(cfg, DistInfo())
    finally:
        valid[:] = np.arange(8) == 3
    assert off.dataset is None and "validation off" in off.note


def test_two_process_ddp_finishes_with_a_one_row_val_split(
    one_val_row_world, train_config, tmp_path
) -> None:
    cfg = _on(
        one_val_row_world,
        train_config(tmp_path / "ddp", steps=2, batch_size=4, eval_every=2, ckpt_every=2),
    )
    single = train(replace(cfg, out_dir=str(tmp_path / "one")), progress=False, echo=False)
    (losses,) = run_data_parallel([cfg], world=2)  # used to die at the final validation
    np.testing.assert_allclose(losses, single.losses, rtol=1e-5)
    assert latest_checkpoint(cfg.out_dir).name == "step_00000002"
    val = [r for r in _metrics(tmp_path / "ddp") if r["split"] == "val"]
    ref = [r for r in single.history if r["split"] == "val"]
    assert len(val) == 1 == len(ref)
    assert float(val[0]["loss"]) == pytest.approx(ref[0]["loss"], rel=1e-4)
