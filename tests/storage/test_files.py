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
