"""The tokenize -> encode -> train -> generate chain with every store on S3 (moto's server on
127.0.0.1) equals the same chain on local disk: token ids, checkpoint tensors, generated
tokens. The S3 run is also interrupted and resumed (run directory pulled from the bucket)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from terraloom.model.cli import main as model_main
from terraloom.model.config import DataConfig, MaskingConfig, ModelConfig, OptimConfig, TrainConfig
from terraloom.model.train import train
from terraloom.storage.location import Location
from terraloom.storage.transfer import upload_tree
from terraloom.tokenize_jobs.encode import EncodeConfig, encode
from terraloom.tokenize_jobs.train import TrainConfig as TokTrainConfig
from terraloom.tokenize_jobs.train import train_tokenizer
from tests.tokenize_jobs.encode_support import make_corpus

MODALITIES = ("DEM", "GEO")
CROP = 32


def _tok_config(modality: str) -> TokTrainConfig:
    return TokTrainConfig(
        modality,
        steps=2,
        batch=2,
        crop_px=CROP,
        width=8,
        channel_mult=(1, 1, 2, 2),
        blocks=(0, 0, 0, 0),
        warmup_steps=1,
        eval_samples=1,
        eval_crops=1,
        progress=False,
        device="cpu",
    )


def _model_config(tokens: str, corpus: str, out: str) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(
            dim=32,
            enc_depth=1,
            dec_depth=1,
            heads=2,
            image_px=CROP,
            pixel_inputs=("DEM",),
            token_inputs=MODALITIES,
            targets=MODALITIES,
        ),
        masking=MaskingConfig(input_budget=8, target_budget=8),
        data=DataConfig(tokens=tokens, corpus=corpus, num_workers=0),
        optim=OptimConfig(lr=2e-3, warmup_steps=1),
        out_dir=out,
        steps=4,
        batch_size=4,
        log_every=1,
        eval_every=0,
        ckpt_every=2,
        keep_ckpts=1,
        peak_tflops=1.0,
        seed=0,
        deterministic=True,
    )


def _chain(root: str, corpus: str, *, interrupt: bool) -> None:
    """Tokenizers, tokens, a run and a generation under ``root`` (a path or a URL)."""
    for m in MODALITIES:
        train_tokenizer(_tok_config(m), corpus, f"{root}/tokenizers/{m.lower()}")
    encode(
        corpus,
        f"{root}/tokenizers",
        f"{root}/tokens",
        EncodeConfig(n_crops=2, crop_px=CROP, batch=8, modalities=MODALITIES, progress=False),
    )
    cfg = _model_config(f"{root}/tokens", corpus, f"{root}/run")
    if interrupt:  # stop after the first checkpoint; the resume pulls it from the store
        train(cfg, max_steps=2, progress=False, echo=False)
    train(cfg, progress=False, echo=False)
    code = model_main(
        [
            "generate",
            "--checkpoint",
            f"{root}/run",
            "--input",
            "DEM=451U_946L-000",
            "--target",
            "GEO",
            "--out",
            f"{root}/generated",
            "--steps",
            "2",
        ]
    )
    assert code == 0


@pytest.fixture(scope="module")
def local_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("chain_local")
    make_corpus(base / "corpus", modalities=MODALITIES)  # only the arrays the chain reads
    _chain(str(base), str(base / "corpus"), interrupt=False)
    return base


def _split_arrays(store: Location) -> dict[str, np.ndarray]:
    g = zarr.open_group(store.zarr_store(read_only=True), mode="r")
    return {n: np.asarray(g[n][...]) for n in sorted(g.array_keys())}


def test_the_chain_on_s3_equals_the_chain_on_local_disk(
    local_chain: Path, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERRALOOM_CACHE", str(tmp_path / "cache"))
    corpus = Location.parse(f"{s3_bucket}/corpus")
    upload_tree(local_chain / "corpus", corpus)
    _chain(s3_bucket, str(corpus), interrupt=True)
    remote = Location.parse(s3_bucket)

    # tokenizer weights, then token ids: identical
    for m in MODALITIES:
        cfg_remote = (remote / f"tokenizers/{m.lower()}/config.json").read_json()
        cfg_local = json.loads((local_chain / f"tokenizers/{m.lower()}/config.json").read_text())
        assert cfg_remote["identity"] == cfg_local["identity"], m
    a = _split_arrays(remote / "tokens/train.zarr")
    b = _split_arrays(Location.parse(str(local_chain / "tokens/train.zarr")))
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    # the run: latest names the same step, metrics rewritten whole, tensors identical
    run = remote / "run"
    assert (run / "latest").read_text().strip() == (local_chain / "run/latest").read_text()
    steps = [n for n in run.listdir() if n.startswith("step_")]
    assert steps == ["step_00000004"]  # keep_ckpts=1: the older checkpoint deleted remotely
    rows_remote = (run / "metrics.csv").read_text().splitlines()
    rows_local = (local_chain / "run/metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows_remote] == [r.split(",")[0] for r in rows_local]
    ckpt = tmp_path / "remote_ckpt.safetensors"
    ckpt.write_bytes((run / "step_00000004/model.safetensors").read_bytes())
    got, want = (
        load_file(str(ckpt)),
        load_file(str(local_chain / "run/step_00000004/model.safetensors")),
    )
    assert sorted(got) == sorted(want)
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)

    # generation read the checkpoint, tokens, corpus and tokenizers from S3 and wrote there
    names = (remote / "generated").walk_files()
    assert any(n.endswith("generated.json") for n in names)
    gen_remote = next(n for n in names if n.endswith("generated.json"))
    local_gen = json.loads((local_chain / "generated" / gen_remote).read_text())
    remote_gen = (remote / f"generated/{gen_remote}").read_json()
    assert remote_gen.get("tokens") == local_gen.get("tokens")
    assert not Path("s3:").exists()
