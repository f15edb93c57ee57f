"""The linear start of continuous tokenizers (tokenize_jobs/tokenizers/linear_init.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from terraloom.tokenize_jobs.tokenizers.fsq import FSQ
from terraloom.tokenize_jobs.tokenizers.image import FSQVAE, FSQVAEConfig, to_model_space
from terraloom.tokenize_jobs.tokenizers.linear_init import band_balance_weights, linear_init
from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig

NET = ConvNetConfig(width=8, channel_mult=(1, 1, 2, 2), blocks=(0, 0, 1, 1), linear_paths=True)


def smooth_dem(n: int, px: int = 96, seed: int = 0) -> torch.Tensor:
    """(n, 1, px, px) metres: tilted planes plus a broad bump, 100-2,500 m."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(px) / px, torch.arange(px) / px, indexing="ij")
    base = 100 + 2400 * torch.rand(n, 1, 1, 1, generator=g)
    tilt = 200 * (torch.rand(n, 2, 1, 1, generator=g) - 0.5)
    bump = 150 * torch.exp(-((xx - 0.5) ** 2 + (yy - 0.4) ** 2) / 0.05)
    return base + tilt[:, :1] * xx + tilt[:, 1:] * yy + bump


def patch_mean_mae(x: torch.Tensor) -> float:
    base = F.interpolate(F.avg_pool2d(x, 16), scale_factor=16, mode="nearest")
    return float((base - x).abs().mean())


@pytest.mark.parametrize("levels", [(8, 5), (3072, 5), (15360,), (64, 8, 30)])
def test_unbound_inverts_the_bound_at_every_level(levels: tuple[int, ...]) -> None:
    fsq = FSQ(levels)
    codes = fsq.indices_to_codes(torch.arange(math.prod(levels)))
    z = fsq.unbound(codes)
    assert torch.isfinite(z).all()
    assert torch.equal(fsq.quantize(z), codes)  # bound(unbound(code)) rounds to the code


def test_linear_start_is_the_linear_tokenizer_and_beats_the_patch_mean() -> None:
    torch.manual_seed(0)
    # (4, 1): a level scalar and a 5-level shape channel, as NDVI and S1 use them
    cfg = FSQVAEConfig.for_modality("DEM", NET, fsq_groups=(4, 1))
    assert cfg.quant_levels == (3072, 5)
    fit, test = smooth_dem(16, seed=1), smooth_dem(8, seed=2)
    model = FSQVAE(cfg).eval()
    with torch.no_grad():
        random_out = model(to_model_space(cfg, test).inputs)[0]
    b = to_model_space(cfg, fit)
    summary = linear_init(model, b.inputs, b.mask)
    assert summary["variance_kept"] > 0.99
    t = to_model_space(cfg, test)
    with torch.no_grad():
        out, idx, _ = model(t.inputs)
        # the conv paths add nothing yet: output = bicubic upsampling of the linear read-out
        z_q = model.fsq.indices_to_codes(idx).permute(0, 3, 1, 2)
        low = model.decoder.skip(model.fsq.unbound(z_q.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        assert torch.allclose(
            out, F.interpolate(low, scale_factor=16, mode="bicubic", align_corners=False), atol=1e-5
        )
    std = cfg.std[0]
    mae = float((out - t.target).abs().mean()) * std
    # exact patch levels (3,072 levels over ~2.4 km) + smooth interpolation of a smooth field
    assert mae < 0.5 * patch_mean_mae(test)
    assert mae < 0.05 * float((random_out - t.target).abs().mean()) * std
    # the level channel spreads over many levels, the shape channel (a slope) over its 5
    assert idx.unique().numel() > 0.5 * idx.numel()
    shape_levels = (model.fsq.indices_to_codes(idx)[..., 1] * 2).round()
    assert shape_levels.unique().numel() >= 4


def test_band_balance_weights_follow_inverse_within_patch_variance() -> None:
    g = torch.Generator().manual_seed(0)
    levels = torch.randn(4, 2, 6, 6, generator=g).repeat_interleave(16, 2).repeat_interleave(16, 3)
    texture = torch.randn(4, 2, 96, 96, generator=g) * torch.tensor([1.0, 0.5]).view(1, 2, 1, 1)
    x = levels * 10 + texture  # levels are removed: only the texture counts
    mask = torch.ones_like(x, dtype=torch.bool)
    w = band_balance_weights(x, mask, 16)
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w[1] / w[0]) == pytest.approx(4.0, rel=0.05)
    mask[:, 1] = False  # a band without data keeps a neutral weight
    assert torch.isfinite(band_balance_weights(x, mask, 16)).all()


def test_linear_init_refuses_what_it_cannot_start() -> None:
    lulc = FSQVAE(FSQVAEConfig.for_modality("LULC", NET))
    x = torch.zeros(1, lulc.config.in_channels, 32, 32)
    with pytest.raises(ValueError, match="continuous"):
        linear_init(lulc, x, x.bool())
    plain = FSQVAE(FSQVAEConfig.for_modality("DEM", ConvNetConfig(width=8)))
    x = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match="linear_paths"):
        linear_init(plain, x, x.bool())
