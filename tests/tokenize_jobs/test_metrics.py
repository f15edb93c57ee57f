from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from terraloom.tokenize_jobs.tokenizers import metrics as M


def _reference_ssim(p: torch.Tensor, t: torch.Tensor, r: float) -> float:
    """Straight Wang et al. SSIM with a grouped conv, one band, no mask."""
    g = M._gaussian_window(11, 1.5, p.device).double()
    k = (g[:, None] * g[None, :]).view(1, 1, 11, 11)
    p, t = p.double()[None, None], t.double()[None, None]
    mu_p, mu_t = F.conv2d(p, k), F.conv2d(t, k)
    s_pp = F.conv2d(p * p, k) - mu_p**2
    s_tt = F.conv2d(t * t, k) - mu_t**2
    s_pt = F.conv2d(p * t, k) - mu_p * mu_t
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    m = ((2 * mu_p * mu_t + c1) * (2 * s_pt + c2)) / ((mu_p**2 + mu_t**2 + c1) * (s_pp + s_tt + c2))
    return float(m.mean())


def test_psnr_and_mae_by_hand() -> None:
    t = torch.zeros(2, 2, 8, 8)
    p = t.clone()
    p[:, 0] += 1.0  # band 0 off by 1 everywhere, band 1 exact
    p[:, 1, 0, 0] = 2.0
    mask = torch.ones_like(t, dtype=torch.bool)
    rng = torch.tensor([10.0, 10.0])
    psnr = M.psnr(p, t, mask, rng)
    assert psnr[0] == pytest.approx(20.0)  # 10 log10(100 / 1)
    assert psnr[1] == pytest.approx(10 * math.log10(100 / (4 / 64)))
    assert M.mae(p, t, mask).tolist() == pytest.approx([1.0, 2 / 64])


def test_masked_elements_never_count() -> None:
    t = torch.rand(1, 1, 16, 16)
    p = t.clone()
    t[..., :4] = float("nan")
    p[..., :4] = 1e9
    mask = torch.isfinite(t)
    assert M.mae(p, t, mask).item() == 0.0
    rng = M.data_range(t, mask)
    assert M.ssim(p, t, mask, rng).item() == pytest.approx(1.0, abs=1e-5)


def test_ssim_matches_a_reference_implementation() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.rand(3, 2, 40, 36, generator=g) * 100
    p = t + torch.randn(3, 2, 40, 36, generator=g) * 10
    mask = torch.ones_like(t, dtype=torch.bool)
    r = torch.tensor([100.0, 100.0])
    got = M.ssim(p, t, mask, r, chunk=2)
    ref = [sum(_reference_ssim(p[i, c], t[i, c], 100.0) for i in range(3)) / 3 for c in range(2)]
    assert got.tolist() == pytest.approx(ref, abs=1e-4)
    assert 0 < got.max() < 1


def test_patch_mean_baseline_uses_valid_pixels_only() -> None:
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, 0, 0, 0] = False
    x_nan = x.clone()
    x_nan[0, 0, 0, 0] = float("nan")
    base = M.patch_mean_baseline(x_nan, mask, 16)
    block = x[0, 0, :16, :16].flatten()[1:]
    assert base[0, 0, 0, 0] == pytest.approx(float(block.mean()))
    assert base[0, 0, 20, 20] == pytest.approx(float(x[0, 0, 16:, 16:].mean()))
    assert torch.isfinite(base).all()


def test_majority_baseline_and_class_metrics() -> None:
    idx = torch.zeros(1, 16, 32, dtype=torch.long)
    idx[0, :, 16:] = 2
    idx[0, :3, :16] = 1  # minority in the left patch
    idx[0, 3:, 16:] = 255  # mostly ignored right patch
    base = M.patch_majority_baseline(idx, 3, 255, 16)
    assert (base[0, :, :16] == 0).all() and (base[0, :, 16:] == 2).all()
    assert M.pixel_accuracy(base, idx) == pytest.approx((16 * 13 + 3 * 16) / (16 * 16 + 3 * 16))
    pred = torch.tensor([[0, 0, 1, 1]])
    tgt = torch.tensor([[0, 1, 1, 255]])
    # class 0: 1/2, class 1: 1/2 (valid pixels only)
    assert M.mean_iou(pred, tgt, 3) == pytest.approx(0.5)


def test_codebook_usage() -> None:
    u = M.codebook_usage(torch.arange(100).repeat(3), 100)
    assert u["used_fraction"] == 1.0 and u["perplexity"] == pytest.approx(100.0)
    v = M.codebook_usage(torch.zeros(50, dtype=torch.long), 200)
    assert v["used_fraction"] == 1 / 200 and v["perplexity"] == pytest.approx(1.0)
