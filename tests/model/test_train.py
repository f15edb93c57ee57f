"""Training: the loss falls, resume is exact, DDP equals one process on the same batch."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from model.checkpoint import latest_checkpoint
from model.config import OptimConfig
from model.testing import run_data_parallel
from model.train import lr_at, train


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
