"""storage/files.py: safetensors files follow the user's umask, not safetensors' 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from terraloom.storage.files import current_umask, save_safetensors


@pytest.fixture
def umask_002() -> Iterator[None]:
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_safetensors_uses_the_umask(tmp_path: Path, umask_002: None) -> None:
    assert current_umask() == 0o002
    path = save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors", {"k": "v"})
    assert _mode(path) == 0o664


def test_model_and_tokenizer_weights_are_group_readable(tmp_path: Path, umask_002: None) -> None:
    from terraloom.model.config import ModelConfig
    from terraloom.model.transformer import TerraloomModel
    from terraloom.tokenize_jobs.tokenizers.image import FSQVAE, FSQVAEConfig
    from terraloom.tokenize_jobs.tokenizers.io import save_image_tokenizer
    from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig

    cfg = ModelConfig(dim=16, enc_depth=1, dec_depth=1, heads=2, image_px=32)
    TerraloomModel(cfg).save_pretrained(tmp_path / "model")
    assert _mode(tmp_path / "model" / "model.safetensors") == 0o664
    tok = FSQVAE(FSQVAEConfig.for_modality("DEM", ConvNetConfig(8)))
    save_image_tokenizer(tok, tmp_path / "dem")
    assert all(_mode(p) == 0o664 for p in (tmp_path / "dem").iterdir() if p.is_file())


def test_save_safetensors_bytes_depend_only_on_the_content(tmp_path: Path) -> None:
    """The file's bytes (hence a tokenizer's sha256 identity) are a function of the tensors
    and the metadata: safetensors serialises ``__metadata__`` from a Rust ``HashMap``, whose
    order differs from one call to the next, so with two keys or more the raw file was a
    coin toss (issue 19: the S3 chain's DEM tokenizer identity "differed from local")."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(3)}
    meta = {"modality": "DEM", "version": "1.abc", "step": "4", "format": "terraloom-model"}
    shas = set()
    for i in range(16):  # 16 saves of 4 keys: an unordered header repeats with p ~ 1e-21
        order = list(meta.items())
        order = order[i % 4 :] + order[: i % 4]  # the caller's key order does not count either
        path = save_safetensors(dict(tensors), tmp_path / f"w{i}.safetensors", dict(order))
        shas.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(shas) == 1
    got = load_file(tmp_path / "w0.safetensors")
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    with safe_open(tmp_path / "w0.safetensors", framework="pt") as f:
        assert f.metadata() == meta
