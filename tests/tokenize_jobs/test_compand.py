"""The compander in front of FSQ (tokenize_jobs/tokenizers/compand.py)."""

from __future__ import annotations

import pytest
import torch

from terraloom.tokenize_jobs.tokenizers.compand import Compander, fit_knots, target_cdf
from terraloom.tokenize_jobs.tokenizers.fsq import FSQ
from terraloom.tokenize_jobs.tokenizers.image import FSQVAE, FSQVAEConfig, to_model_space
from terraloom.tokenize_jobs.tokenizers.linear_init import linear_init
from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig


def peaked(n: int, seed: int = 0) -> torch.Tensor:
    """A narrow bulk and a long bright tail, as S2 brightness is."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g).mul(0.3).exp() * 0.05 + (
        torch.rand(n, generator=g) < 0.02
    ) * torch.rand(n, generator=g)


def fitted(levels: int, alpha: float, uniform: float, n: int = 20000) -> tuple[Compander, FSQ]:
    fsq = FSQ((levels,))
    comp = Compander(1)
    x, y, gain = fit_knots(peaked(n), levels, float(fsq.shift[0]), alpha=alpha, uniform=uniform)
    comp.set_channel(0, x / gain, y)  # in the values' own units
    return comp, fsq


def level_counts(comp: Compander, fsq: FSQ, values: torch.Tensor) -> torch.Tensor:
    idx = fsq(comp(values[:, None]))[1]
    return torch.bincount(idx, minlength=fsq.codebook_size)


def test_a_fresh_compander_is_the_identity_everywhere() -> None:
    comp = Compander(3, knots=9)
    z = torch.randn(4, 5, 3) * 10  # far beyond the knots too
    assert torch.allclose(comp(z), z, atol=1e-5)
    assert torch.allclose(comp.inverse(z), z, atol=1e-5)


@pytest.mark.parametrize("levels", [8, 30, 64, 3072])
def test_fitted_map_is_monotone_and_inverts_inside_and_beyond_the_data(levels: int) -> None:
    comp, _ = fitted(levels, alpha=0.5, uniform=0.1)
    z = torch.linspace(-1.0, 3.0, 5001)[:, None]  # data lie in ~[0.02, 1.1]
    y = comp(z)
    assert bool((y.diff(dim=0) > 0).all())
    assert torch.isfinite(y).all()
    assert torch.allclose(comp.inverse(y), z, atol=1e-4)


def test_equalising_uses_every_level_about_equally_where_even_spacing_uses_few() -> None:
    values = peaked(40000, seed=1)  # not the fit sample
    comp, fsq = fitted(64, alpha=1.0, uniform=0.0)
    counts = level_counts(comp, fsq, values)
    assert int((counts > 0).sum()) == 64
    # FSQ's end levels span half a step, and the fit keeps its ends a quarter level in
    inner = counts[2:-2].float()
    assert float(inner.max() / inner.min()) < 1.4
    # the same scalar without a compander, scaled to its range, crowds into few levels
    plain = torch.bincount(fsq((values[:, None] - values.mean()) / values.abs().max())[1])
    assert float(plain.topk(3).values.sum()) > 0.8 * len(values)
    assert float(counts.topk(3).values.sum()) < 0.1 * len(values)


def test_alpha_trades_codes_for_precision() -> None:
    """alpha 1/3 minimises the rounding error of the bulk; alpha 1 uses more levels."""
    values = peaked(40000, seed=2)
    results = {}
    for alpha in (1 / 3, 1.0):
        comp, fsq = fitted(16, alpha=alpha, uniform=0.0)
        codes = fsq.quantize(comp(values[:, None]))
        decoded = comp.inverse(fsq.unbound(codes))[:, 0]
        entropy = torch.special.entr(level_counts(comp, fsq, values) / len(values)).sum()
        results[alpha] = (float((decoded - values).square().mean()), float(entropy))
    assert results[1 / 3][0] < results[1.0][0]
    assert results[1.0][1] > results[1 / 3][1]


def test_uniform_floor_keeps_levels_on_the_tail() -> None:
    x, cdf = target_cdf(peaked(20000), 129, alpha=1.0, uniform=0.0)
    _, cdf_floor = target_cdf(peaked(20000), 129, alpha=1.0, uniform=0.3)
    tail = x > 0.2  # beyond the bulk: 2 % of the values
    share = float(1 - cdf[tail][0])
    share_floor = float(1 - cdf_floor[tail][0])
    assert share < 0.03 < share_floor


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha and uniform"):
        target_cdf(peaked(100), 9, alpha=1.5, uniform=0.0)
    comp = Compander(1, knots=5)
    with pytest.raises(ValueError, match="strictly increasing"):
        comp.set_channel(0, torch.tensor([0.0, 1, 1, 2, 3]), torch.arange(5.0))
    with pytest.raises(ValueError, match="shape"):
        comp.set_channel(0, torch.arange(4.0), torch.arange(4.0))
    with pytest.raises(ValueError, match=">= 2"):
        Compander(1, knots=1)


NET = ConvNetConfig(width=8, channel_mult=(1, 1, 2, 2), blocks=(0, 0, 1, 1), linear_paths=True)


def bright_s2(n: int, px: int = 64, seed: int = 0) -> torch.Tensor:
    """(n, 12, px, px) S2L2A-like reflectance: dark bulk, a few bright patches."""
    g = torch.Generator().manual_seed(seed)
    level = peaked(n * (px // 16) ** 2, seed).view(n, 1, px // 16, px // 16) * 20000
    spectrum = 0.5 + torch.rand(1, 12, 1, 1, generator=g)
    base = torch.nn.functional.interpolate(level, scale_factor=16, mode="nearest") * spectrum
    return (base + 30 * torch.randn(n, 12, px, px, generator=g)).clamp(1, 20000)


def test_linear_start_with_a_compander_is_finer_on_the_bulk_and_uses_more_codes() -> None:
    fit, test = bright_s2(24, seed=3), bright_s2(12, seed=4)
    errors, used = {}, {}
    for knots in (0, 129):
        torch.manual_seed(0)
        cfg = FSQVAEConfig.for_modality("S2L2A", NET, compand_knots=knots)
        model = FSQVAE(cfg).eval()
        b = to_model_space(cfg, fit)
        linear_init(model, b.inputs, b.mask, compand_alpha=0.5, compand_uniform=0.1)
        if model.compander is not None:
            # unit median slope: a step of the encoder moves the codes as much as without
            # a compander (a 50x expansion of the bulk made the first updates diverge)
            comp = model.compander
            slopes = (comp.y_knots.diff(dim=1) / comp.x_knots.diff(dim=1)).median(dim=1).values
            assert torch.allclose(slopes, torch.ones(3), rtol=1e-3)
        t = to_model_space(cfg, test)
        with torch.no_grad():
            out, idx, _ = model(t.inputs)
        means = torch.nn.functional.avg_pool2d(t.inputs, 16)
        err = (torch.nn.functional.avg_pool2d(out, 16) - means).square().mean(dim=1)
        bulk = means.mean(dim=1) < means.mean(dim=1).quantile(0.9)  # not the bright tail
        errors[knots] = float(err[bulk].mean())
        used[knots] = len(torch.unique(idx))
    assert errors[129] < errors[0]
    assert used[129] > 2 * used[0]


def test_config_without_compander_keeps_its_digest_and_with_one_round_trips() -> None:
    plain = FSQVAEConfig.for_modality("S2L2A", NET)
    assert "compand_knots" not in plain.to_dict()
    with_comp = FSQVAEConfig.for_modality("S2L2A", NET, compand_knots=33)
    assert FSQVAEConfig.from_dict(with_comp.to_dict()) == with_comp
    assert with_comp.digest() != plain.digest()
    with pytest.raises(ValueError, match="class maps"):
        FSQVAEConfig.for_modality("LULC", ConvNetConfig(width=8), compand_knots=33)
