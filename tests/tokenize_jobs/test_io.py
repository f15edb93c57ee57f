from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from terraloom.tokenize_jobs.protocol import ImageTokenizer, SequenceTokenizer
from terraloom.tokenize_jobs.tokenizers.caption import train_wordpiece
from terraloom.tokenize_jobs.tokenizers.geo import GeoTokenizer
from terraloom.tokenize_jobs.tokenizers.image import FSQVAE, FSQImageTokenizer, FSQVAEConfig
from terraloom.tokenize_jobs.tokenizers.io import (
    load_tokenizer,
    save_caption_tokenizer,
    save_geo_tokenizer,
    save_image_tokenizer,
    sha256_file,
    tokenizer_dir,
)
from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig

TINY = ConvNetConfig(width=8, channel_mult=(1, 1, 2, 2), blocks=(0, 0, 1, 1))


@pytest.fixture()
def saved_lulc(tmp_path: Path) -> tuple[FSQVAE, Path]:
    torch.manual_seed(1)
    model = FSQVAE(FSQVAEConfig.for_modality("LULC", TINY))
    out = tokenizer_dir(tmp_path, "lulc")
    save_image_tokenizer(model, out, training={"steps": 1})
    return model, out


def test_save_load_encode_gives_identical_codes(saved_lulc: tuple[FSQVAE, Path]) -> None:
    model, out = saved_lulc
    assert out.name == "lulc"
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.choice([0, 1, 2, 5, 7, 11], size=(2, 1, 64, 64)).astype(np.uint8))
    tok = load_tokenizer(out)
    assert isinstance(tok, FSQImageTokenizer) and isinstance(tok, ImageTokenizer)
    assert torch.equal(tok.encode(x), FSQImageTokenizer(model).encode(x))
    assert torch.equal(load_tokenizer(out / "config.json").encode(x), tok.encode(x))
    decoded = tok.decode(tok.encode(x))
    assert set(decoded.unique().tolist()) <= {1.0, 2.0, 4.0, 5.0, 7.0, 8.0, 9.0, 10.0, 11.0}
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["modality"] == "LULC" and cfg["levels"] == [7, 5, 5, 5, 5] and cfg["vocab_size"] == 4375
    )
    assert cfg["format_version"] == 1 and cfg["training"] == {"steps": 1}
    ident = tok.identity
    assert ident["id"] == "LULC-fsqvae" and ident["sha256"] == sha256_file(
        out / "model.safetensors"
    )
    assert ident["version"].startswith("1.")


def test_tampered_weights_or_config_are_refused(saved_lulc: tuple[FSQVAE, Path]) -> None:
    _, out = saved_lulc
    cfg = json.loads((out / "config.json").read_text())
    cfg["model"]["net"]["width"] = 16
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="identity version"):
        load_tokenizer(out)
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="does not match"):
        load_tokenizer(out)
    cfg["format_version"] = 99
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="version 99"):
        load_tokenizer(out)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(out.parent / "nowhere")


def test_every_kind_loads_through_one_function(tmp_path: Path) -> None:
    save_geo_tokenizer(GeoTokenizer(), tmp_path / "geo")
    cap = train_wordpiece(
        ["Mostly trees with crops.", "Mostly water."] * 4, vocab_size=300, n_sentinels=4
    )
    save_caption_tokenizer(cap, tmp_path / "caption")
    geo = load_tokenizer(tmp_path / "geo")
    text = load_tokenizer(tmp_path / "caption")
    assert isinstance(geo, SequenceTokenizer) and isinstance(text, SequenceTokenizer)
    ids, lengths = text.encode_batch(["Mostly water."], 16)
    assert text.decode_batch(ids, lengths) == ["Mostly water."]
    assert torch.equal(ids, cap.encode_batch(["Mostly water."], 16)[0])
    assert text.identity == cap.identity and text.identity["id"] == "CAPTION-wordpiece"
    assert geo.identity == GeoTokenizer().identity


def test_a_fitted_compander_travels_with_the_weights(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = ConvNetConfig(width=8, channel_mult=(1, 1, 2, 2), blocks=(0, 0, 1, 1), linear_paths=True)
    model = FSQVAE(FSQVAEConfig.for_modality("DEM", net, compand_knots=17))
    assert model.compander is not None
    model.compander.set_channel(0, torch.linspace(-3, 3, 17), torch.linspace(-1, 1, 17) ** 3 * 2)
    out = tokenizer_dir(tmp_path, "dem")
    save_image_tokenizer(model, out, training={"steps": 1})
    tok = load_tokenizer(out)
    assert isinstance(tok, FSQImageTokenizer) and tok.model.compander is not None
    assert torch.equal(tok.model.compander.y_knots, model.compander.y_knots)
    x = torch.rand(2, 1, 64, 64) * 3000
    codes = tok.encode(x)
    assert torch.equal(codes, FSQImageTokenizer(model).encode(x))
    # a fresh (identity) compander would give other codes: the knots matter
    fresh = FSQVAE(model.config)
    fresh.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("compander.")},
        strict=False,
    )
    assert not torch.equal(FSQImageTokenizer(fresh).encode(x), codes)
