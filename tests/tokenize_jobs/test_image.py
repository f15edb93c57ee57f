from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from terraloom.schemas.modalities import LULC_CLASSES, lulc_to_index
from terraloom.tokenize_jobs.protocol import ImageTokenizer
from terraloom.tokenize_jobs.tokenizers.fsq import FSQ
from terraloom.tokenize_jobs.tokenizers.image import (
    FSQVAE,
    IGNORE_INDEX,
    FSQImageTokenizer,
    FSQVAEConfig,
    class_index,
    from_model_space,
    group_levels,
    reconstruction_loss,
    to_model_space,
)
from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig

TINY = ConvNetConfig(width=8, channel_mult=(1, 1, 2, 2), blocks=(0, 0, 1, 1))


@pytest.mark.parametrize("unshuffle", [0, 2])
@pytest.mark.parametrize("size", [64, 224])
def test_one_code_per_16px_patch(size: int, unshuffle: int) -> None:
    net = ConvNetConfig(8, (1, 1, 2, 2), (0, 0, 1, 1), unshuffle)
    model = FSQVAE(FSQVAEConfig.for_modality("S1GRD", net, fsq_groups=()))
    x = torch.randn(2, 2, size, size)
    out, idx, z = model(x)
    assert z.shape == (2, 5, size // 16, size // 16)
    assert out.shape == x.shape
    assert idx.shape == (2, size // 16, size // 16) and idx.dtype == torch.int64
    assert torch.equal(model.decode_indices(idx), out)


def test_config_follows_the_registry_and_round_trips() -> None:
    cfg = FSQVAEConfig.for_modality("s2l2a", TINY)
    assert cfg.modality == "S2L2A" and cfg.levels == (8, 8, 8, 6, 5) and cfg.vocab_size == 15360
    assert cfg.in_channels == cfg.out_channels == 12
    lulc = FSQVAEConfig.for_modality("LULC")
    assert lulc.is_classes and lulc.vocab_size == 4375 and lulc.in_channels == 9
    dem = FSQVAEConfig.for_modality("DEM")
    again = FSQVAEConfig.from_dict(json.loads(json.dumps(dem.to_dict())))
    assert again.digest() == dem.digest() and again.nodata is not None and math.isnan(again.nodata)
    assert again.net == dem.net and again.levels == dem.levels
    assert dem.version != FSQVAEConfig.for_modality("DEM", TINY).version
    with pytest.raises(ValueError):
        FSQVAEConfig.for_modality("S2RGB")


def test_class_index_matches_the_registry_lut() -> None:
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    got = class_index(values, LULC_CLASSES).flatten().numpy()
    assert np.array_equal(got, lulc_to_index(np.arange(256)).astype(np.int64))
    assert class_index(torch.tensor([[[np.nan, 300.0]]]), LULC_CLASSES).tolist() == [[[255, 255]]]


def test_nodata_is_masked_and_zeroed() -> None:
    cfg = FSQVAEConfig.for_modality("S2L2A", TINY)
    x = torch.full((1, 12, 16, 16), 1500.0)
    x[:, :, :, :4] = 0  # S2 nodata is DN 0
    b = to_model_space(cfg, x)
    assert not b.mask[..., :4].any() and b.mask[..., 4:].all()
    assert (b.inputs[..., :4] == 0).all()
    back = from_model_space(cfg, b.target)
    assert torch.allclose(back[..., 4:], x[..., 4:], atol=0.05)
    s1 = FSQVAEConfig.for_modality("S1GRD", TINY)
    y = torch.full((1, 2, 16, 16), -12.0)
    y[0, 1, 3, 3] = float("nan")
    assert int((~to_model_space(s1, y).mask).sum()) == 1


def test_loss_ignores_nodata_values() -> None:
    torch.manual_seed(0)
    cfg = FSQVAEConfig.for_modality("S1GRD", TINY)
    x = torch.randn(2, 2, 32, 32) * 3 - 12
    x[:, :, :8] = float("nan")
    b = to_model_space(cfg, x)
    out = torch.randn_like(b.target)
    loss = reconstruction_loss(cfg, out, b)
    out2 = out.clone()
    out2[:, :, :8] = 1e6  # predictions over nodata do not matter
    assert torch.equal(loss, reconstruction_loss(cfg, out2, b))
    # per-band weights change the balance
    # zero weight on VH: the loss only sees VV, so VH predictions stop mattering
    w = reconstruction_loss(cfg, out, b, band_weights=(1.0, 0.0))
    out3 = out.clone()
    out3[:, 1] = 1e6
    assert torch.equal(w, reconstruction_loss(cfg, out3, b, band_weights=(1.0, 0.0)))
    with pytest.raises(ValueError):
        reconstruction_loss(cfg, out, b, band_weights=(1.0,))


def test_lulc_loss_ignores_nodata_and_decodes_legend_values() -> None:
    cfg = FSQVAEConfig.for_modality("LULC", TINY)
    x = (
        torch.tensor(LULC_CLASSES, dtype=torch.float32)
        .repeat_interleave(4)[:32]
        .view(1, 1, 1, 32)
        .expand(1, 1, 32, 32)
    )
    x = x.clone()
    x[..., :5, :] = 0
    b = to_model_space(cfg, x)
    assert (b.target[:, :5] == IGNORE_INDEX).all() and (b.inputs[:, :, :5] == 0).all()
    assert torch.equal(b.inputs.sum(1)[:, 5:], torch.ones(1, 27, 32))
    logits = torch.randn(1, 9, 32, 32)
    logits2 = logits.clone()
    logits2[:, :, :5] = 100
    assert torch.equal(reconstruction_loss(cfg, logits, b), reconstruction_loss(cfg, logits2, b))
    perfect = torch.nn.functional.one_hot(b.target.clamp_max(8), 9).permute(0, 3, 1, 2).float() * 50
    decoded = from_model_space(cfg, perfect)
    assert torch.equal(decoded[..., 5:, :], x[..., 5:, :])


def test_wrapper_is_deterministic_and_checks_shapes() -> None:
    torch.manual_seed(0)
    tok = FSQImageTokenizer(FSQVAE(FSQVAEConfig.for_modality("DEM", TINY)))
    assert isinstance(tok, ImageTokenizer)
    x = torch.rand(3, 1, 48, 64) * 1000
    codes = tok.encode(x)
    assert codes.shape == (3, 3, 4) and codes.dtype == torch.int64
    assert torch.equal(codes, tok.encode(x.numpy()))
    pixels = tok.decode(codes)
    assert pixels.shape == (3, 1, 48, 64) and pixels.dtype == torch.float32
    # one sample's codes do not depend on the others in the batch
    assert torch.equal(tok.encode(x[1:2]), codes[1:2])
    with pytest.raises(ValueError):
        tok.encode(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError):
        tok.encode(torch.zeros(1, 1, 40, 32))
    with pytest.raises(ValueError):
        tok.decode(torch.zeros(1, 4, dtype=torch.int64))


@pytest.mark.parametrize("unshuffle", [0, 2])
def test_latents_are_local_and_independent_of_the_crop(unshuffle: int) -> None:
    """A patch's latent depends on its neighbourhood only, not on crop size or position
    (no statistics over space), so tokenizers trained on small crops encode 224 px crops
    consistently."""
    torch.manual_seed(0)
    net = ConvNetConfig(8, (1, 1, 2, 2), (0, 0, 1, 1), unshuffle)
    model = FSQVAE(FSQVAEConfig.for_modality("DEM", net)).eval()
    x = torch.randn(1, 1, 240, 240) + 3.0  # an offset GroupNorm would remove
    with torch.no_grad():
        a = model.encoder(x[..., :224, :224])
        b = model.encoder(x[..., 16:240, 16:240])  # shifted by one patch
        c = model.encoder(x[..., 16:208, 32:224])  # a smaller crop
    assert torch.allclose(a[..., 5:9, 5:9], b[..., 4:8, 4:8], atol=1e-5)
    assert torch.allclose(a[..., 6:8, 6:8], c[..., 5:7, 4:6], atol=1e-5)
    with torch.no_grad():
        d = model.encoder(x[..., :224, :224] + 1.0)
    assert not torch.allclose(a[..., 5:9, 5:9], d[..., 5:9, 5:9], atol=1e-3)  # level is kept


def test_grouped_fsq_keeps_the_code_index() -> None:
    """A (3, 1, 1) grouping quantises a 512-level scalar, but an id still means the
    same digits of the registry levels (8, 8, 8, 6, 5)."""
    levels = (8, 8, 8, 6, 5)
    assert group_levels(levels, (3, 1, 1)) == (512, 6, 5)
    assert group_levels(levels, ()) == levels
    with pytest.raises(ValueError):
        group_levels(levels, (2, 2))
    flat, grouped = FSQ(levels), FSQ(group_levels(levels, (3, 1, 1)))
    idx = torch.arange(15360)

    def digits(fsq: FSQ) -> torch.Tensor:
        return (fsq.indices_to_codes(idx) * fsq._half_width + fsq._half_width).round().long()

    f, g = digits(flat), digits(grouped)
    assert torch.equal(g[:, 0], f[:, 0] + 8 * f[:, 1] + 64 * f[:, 2])
    assert torch.equal(g[:, 1:], f[:, 3:])
    assert torch.equal(grouped.codes_to_indices(grouped.indices_to_codes(idx)), idx)
    cfg = FSQVAEConfig.for_modality("DEM", TINY)
    assert cfg.fsq_groups == (5,) and cfg.quant_levels == (15360,) and cfg.vocab_size == 15360
    assert FSQVAEConfig.for_modality("DEM", TINY, fsq_groups=()).quant_levels == levels


@pytest.mark.parametrize("linear_paths", [False, True])
def test_decode_expected_of_one_hot_is_decode_and_averages_levels(linear_paths: bool) -> None:
    torch.manual_seed(0)
    net = ConvNetConfig(
        width=8, channel_mult=(1, 1, 2, 2), blocks=(0, 0, 1, 1), linear_paths=linear_paths
    )
    cfg = FSQVAEConfig.for_modality("DEM", net, compand_knots=8 if linear_paths else 0)
    tok = FSQImageTokenizer(FSQVAE(cfg))
    codes = tok.encode(torch.rand(2, 1, 32, 48) * 1000)
    one_hot = torch.nn.functional.one_hot(codes, tok.vocab_size).float()
    assert torch.allclose(tok.decode_expected(one_hot), tok.decode(codes), atol=1e-3)
    # an even split between two codes decodes the latent halfway between them, not either
    # code: with the convolutional path silenced the decoder is linear in that latent, so
    # the result is exactly the mean of the two codes' decodings
    last = tok.model.decoder.net[-1][0]  # type: ignore[index]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    lo, hi = torch.full_like(codes, 5000), torch.full_like(codes, 5200)
    eye = torch.eye(tok.vocab_size)
    mid = tok.decode_expected(0.5 * (eye[lo] + eye[hi]))
    a, b = tok.decode(lo), tok.decode(hi)
    assert float((a - b).abs().mean()) > 1.0  # the two codes decode differently
    assert torch.allclose(mid, 0.5 * (a + b), atol=1e-2)
    with pytest.raises(ValueError, match="probs must be"):
        tok.decode_expected(one_hot[..., :10])
