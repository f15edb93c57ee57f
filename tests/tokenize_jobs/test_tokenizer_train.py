"""Tests of tokenize_jobs/train.py (named apart from other packages' test_train.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from terraloom.tokenize_jobs.corpus_reader import CropSampler, open_split, read_rows, valid_rows
from terraloom.tokenize_jobs.tokenizers.image import (
    FSQVAE,
    FSQImageTokenizer,
    reconstruction_loss,
    to_model_space,
)
from terraloom.tokenize_jobs.tokenizers.io import load_tokenizer
from terraloom.tokenize_jobs.train import TrainConfig, _prepare_start, lr_factor, train_tokenizer

REPO = Path(__file__).resolve().parents[2]


def tiny(modality: str, **kw: object) -> TrainConfig:
    base = dict(
        modality=modality,
        steps=30,
        batch=4,
        lr=3e-3,
        warmup_steps=3,
        crop_px=32,
        width=8,
        channel_mult=(1, 1, 2, 2),
        blocks=(0, 0, 1, 1),
        ckpt_every=100,
        eval_samples=2,
        eval_crops=1,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def fixed_batch_loss(model: FSQVAE, corpus: Path, crop_px: int = 32) -> float:
    """Loss of a model on one fixed batch of 16 crops (immune to batch-to-batch noise)."""
    x, _ = CropSampler(
        corpus, "train", model.config.modality, crop_px=crop_px, batch_size=16, seed=99
    ).batch(0)
    batch = to_model_space(model.config, torch.from_numpy(x))
    with torch.no_grad():
        out, _, _ = model.eval()(batch.inputs)
    return float(reconstruction_loss(model.config, out, batch))


def initial_model(cfg: TrainConfig) -> FSQVAE:
    torch.manual_seed(cfg.seed)  # the training run initialises the same way
    return FSQVAE(cfg.model_config())


def test_short_training_lowers_the_loss_and_exports_a_tokenizer(
    toy_corpus: Path, tmp_path: Path
) -> None:
    cfg = tiny("S1GRD")
    out = train_tokenizer(cfg, toy_corpus, tmp_path / "s1grd")
    log = json.loads((out / "train_log.json").read_text())
    loss = log["loss"]
    assert len(loss) == 30 and all(np.isfinite(loss))
    tok = load_tokenizer(out)
    assert isinstance(tok, FSQImageTokenizer)
    assert fixed_batch_loss(tok.model, toy_corpus) < 0.85 * fixed_batch_loss(
        initial_model(cfg), toy_corpus
    )
    for name in ("config.json", "model.safetensors", "ckpt.pt", "eval.json", "eval.md", "eval.png"):
        assert (out / name).is_file(), name
    group = open_split(toy_corpus, "val")
    x = torch.from_numpy(
        read_rows(group, "S1GRD", valid_rows(group)[:1])[..., 20:244, 20:244].astype(np.float32)
    )
    codes = tok.encode(x)
    assert codes.shape == (1, 14, 14) and int(codes.min()) >= 0 and int(codes.max()) < 15360
    assert tok.decode(codes).shape == (1, 2, 224, 224)
    report = json.loads((out / "eval.json").read_text())
    assert report["modality"] == "S1GRD" and len(report["tokenizer"]["psnr"]) == 2
    assert report["identity"] == tok.identity
    assert {"used_fraction", "perplexity"} <= set(report["codebook"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["steps"] == 30 and cfg["normalization"]["mean"] == [-12.6, -20.29]


def test_resumed_training_continues_the_same_schedule(toy_corpus: Path, tmp_path: Path) -> None:
    cfg = tiny("DEM", steps=8, ckpt_every=4, eval_samples=1)
    straight = train_tokenizer(cfg, toy_corpus, tmp_path / "straight")
    part = tmp_path / "resumed"
    train_tokenizer(cfg, toy_corpus, part, stop_at_step=6)  # "killed" after step 6, last ckpt at 4
    assert not (part / "model.safetensors").exists()
    assert torch.load(part / "ckpt.pt", weights_only=True)["step"] == 4
    train_tokenizer(cfg, toy_corpus, part)
    a = json.loads((straight / "train_log.json").read_text())["loss"]
    b = json.loads((part / "train_log.json").read_text())["loss"]
    assert len(b) == 8 and np.allclose(a, b, rtol=1e-6, atol=1e-7)
    wa, wb = load_file(straight / "model.safetensors"), load_file(part / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-7) for k in wa)
    with pytest.raises(ValueError, match="lr"):
        train_tokenizer(replace(cfg, lr=1e-2), toy_corpus, part)


def test_lulc_training_uses_cross_entropy_and_reports_accuracy(
    toy_corpus: Path, tmp_path: Path
) -> None:
    cfg = tiny("LULC", lr=1e-2)
    out = train_tokenizer(cfg, toy_corpus, tmp_path / "lulc")
    tok = load_tokenizer(out)
    assert isinstance(tok, FSQImageTokenizer) and tok.vocab_size == 4375
    before = fixed_batch_loss(initial_model(cfg), toy_corpus)
    assert before == pytest.approx(np.log(9), rel=0.1)  # cross-entropy of 9 classes at init
    assert fixed_batch_loss(tok.model, toy_corpus) < 0.85 * before
    report = json.loads((out / "eval.json").read_text())
    assert 0.0 <= report["tokenizer"]["pixel_accuracy"] <= 1.0 and "miou" in report["baseline"]


def test_caption_and_geo_write_loadable_tokenizers(toy_corpus: Path, tmp_path: Path) -> None:
    cap = train_tokenizer(
        TrainConfig("CAPTION", vocab_size=600, n_sentinels=8), toy_corpus, tmp_path / "caption"
    )
    geo = train_tokenizer(TrainConfig("GEO"), toy_corpus, tmp_path / "geo")
    rep = json.loads((cap / "eval.json").read_text())
    assert rep["round_trip_exact"] == 1.0 and rep["unk_fraction"] == 0.0
    assert load_tokenizer(cap).vocab_size == 600
    assert json.loads((geo / "eval.json").read_text())["max_error_lat_deg"] <= 0.125
    assert load_tokenizer(geo).vocab_size == 2160


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig("DEM", steps=100, warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))
    assert f[-1] == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError):
        TrainConfig("DEM", crop_px=40)


@pytest.mark.slow
def test_two_process_ddp_run(toy_corpus: Path, tmp_path: Path) -> None:
    """torchrun-style gloo DDP on CPU: ranks agree, rank 0 exports."""
    script = (
        "import sys; from tokenize_jobs.train import TrainConfig, train_tokenizer;"
        "cfg = TrainConfig('DEM', steps=4, batch=2, crop_px=32, width=8, channel_mult=(1,1,2,2),"
        " blocks=(0,0,1,1), warmup_steps=1, eval_samples=1, eval_crops=1, progress=False, device='cpu');"
        "train_tokenizer(cfg, sys.argv[1], sys.argv[2])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--no-python",
        sys.executable,
        "-c",
        script,
        str(toy_corpus),
        str(tmp_path / "ddp"),
    ]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, timeout=600)
    log = json.loads((tmp_path / "ddp" / "train_log.json").read_text())
    assert len(log["loss"]) == 4 and log["last_run"]["samples_per_s"] > 0
    assert load_tokenizer(tmp_path / "ddp").modality == "DEM"


def test_modality_defaults_and_bad_start_options() -> None:
    assert TrainConfig("S2L2A").resolved_entropy_weight() == 0.02
    assert TrainConfig("DEM").resolved_entropy_weight() == 0.1
    assert TrainConfig("S2L2A", entropy_weight=0.3).resolved_entropy_weight() == 0.3
    assert TrainConfig("DEM").net().linear_paths and not TrainConfig("LULC").net().linear_paths
    # the compander comes with the linear start of continuous modalities only
    assert TrainConfig("S2L2A").model_config().compand_knots > 0
    assert TrainConfig("S2L2A", linear_init=False).model_config().compand_knots == 0
    assert TrainConfig("LULC").model_config().compand_knots == 0
    for bad in (
        {"init_crops": 0},
        {"init_spread": 0.0},
        {"entropy_weight": -1.0},
        {"compand_knots": 1},
        {"compand_alpha": 1.5},
        {"compand_uniform": -0.1},
    ):
        with pytest.raises(ValueError):
            TrainConfig("DEM", **bad)  # type: ignore[arg-type]


def test_training_from_the_linear_start_keeps_its_quality(toy_corpus: Path, tmp_path: Path) -> None:
    """The linear start is already good; training must not wreck it (an unscaled
    whole-patch path once made Adam's first steps blow the loss up 50x)."""
    cfg = tiny("S2L2A", steps=30, lr=1e-3, init_crops=32)
    start = initial_model(cfg)
    sampler = CropSampler(toy_corpus, "train", "S2L2A", crop_px=32, batch_size=cfg.batch)
    weights, fit = _prepare_start(cfg, start.config, start, sampler, torch.device("cpu"))
    assert weights is not None and len(weights) == 12 and fit is not None
    random_loss = fixed_batch_loss(initial_model(cfg), toy_corpus)
    start_loss = fixed_batch_loss(start, toy_corpus)
    assert start_loss < 0.5 * random_loss
    out = train_tokenizer(cfg, toy_corpus, tmp_path / "s2")
    trained = load_tokenizer(out)
    assert isinstance(trained, FSQImageTokenizer)
    assert fixed_batch_loss(trained.model, toy_corpus) < 1.2 * start_loss
    # the fitted compander travels with the weights
    assert start.compander is not None and trained.model.compander is not None
    assert torch.equal(trained.model.compander.y_knots, start.compander.y_knots)
    assert not torch.equal(start.compander.x_knots, start.compander.y_knots)
    recorded = json.loads((out / "config.json").read_text())["training"]
    assert recorded["effective_band_weights"] == list(weights)


def test_identity_is_the_same_from_any_location_and_on_every_run(
    toy_corpus: Path, tmp_path: Path, memory_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19's intermittent chain: the DEM tokenizer trained into ``s3://`` sometimes had
    another identity than the local one. Neither the store nor the data was the cause (the
    weights were equal); the weights file's header was serialised in a random order. Trained
    from a local corpus and from a ``memory://`` copy, into local and ``memory://`` outputs,
    four times: one identity (before the fix, four runs agreed one time in eight)."""
    from terraloom.storage.location import Location
    from terraloom.storage.transfer import upload_tree

    monkeypatch.setenv("TERRALOOM_CACHE", str(tmp_path / "cache"))
    upload_tree(toy_corpus, Location.parse(f"{memory_root}/corpus"))
    cfg = tiny("DEM", steps=2, batch=2, blocks=(0, 0, 0, 0), warmup_steps=1, eval_samples=1)
    runs = [
        (toy_corpus, tmp_path / "a"),
        (f"{memory_root}/corpus", tmp_path / "b"),
        (toy_corpus, f"{memory_root}/c"),
        (f"{memory_root}/corpus", f"{memory_root}/d"),
    ]
    identities = set()
    for corpus, out in runs:
        train_tokenizer(cfg, corpus, out)
        identities.add(json.dumps((Location.parse(out) / "config.json").read_json()["identity"]))
    assert len(identities) == 1, identities
