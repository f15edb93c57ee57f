from __future__ import annotations

import math

import pytest
import torch

from terraloom.schemas.modalities import FSQ_IMAGE_LEVELS, FSQ_LULC_LEVELS
from terraloom.tokenize_jobs.tokenizers.fsq import FSQ


@pytest.mark.parametrize("levels", [FSQ_IMAGE_LEVELS, FSQ_LULC_LEVELS])
def test_index_code_round_trip_is_exact_for_every_code(levels: tuple[int, ...]) -> None:
    fsq = FSQ(levels)
    assert fsq.codebook_size == math.prod(levels) in (15360, 4375)
    idx = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(idx)
    assert codes.shape == (fsq.codebook_size, len(levels))
    assert codes.abs().max() <= 1.0
    assert torch.equal(fsq.codes_to_indices(codes), idx)
    # all codes are distinct points of the grid
    assert torch.unique(codes, dim=0).shape[0] == fsq.codebook_size


@pytest.mark.parametrize("levels", [FSQ_IMAGE_LEVELS, FSQ_LULC_LEVELS])
def test_quantize_reaches_every_code_exactly(levels: tuple[int, ...]) -> None:
    """Pre-activations placed at each grid point quantise to it (no lost levels)."""
    fsq = FSQ(levels)
    idx = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(idx)
    # invert the bound: bounded = code * half_width; z = atanh((bounded + offset) / half_l) - shift
    bounded = codes.double() * fsq._half_width.double()
    z = torch.atanh((bounded + fsq._offset.double()) / fsq._half_l.double()) - fsq._shift.double()
    z_q, got = fsq(z.float())
    assert torch.equal(z_q, codes)
    assert torch.equal(got, idx)


@pytest.mark.parametrize("levels", [FSQ_IMAGE_LEVELS, (3072, 5), (15360,), (64, 8, 30)])
def test_quantize_of_extreme_inputs_stays_in_range(levels: tuple[int, ...]) -> None:
    """Grouped scalars with thousands of levels included: the bound's 1 + eps stretch
    once rounded saturated latents one level past the end (an invalid index, and NaN
    from ``unbound``)."""
    fsq = FSQ(levels)
    d = len(levels)
    z = torch.randn(4096, d) * 50
    z_q, idx = fsq(z)
    assert idx.min() >= 0 and idx.max() < fsq.codebook_size
    assert torch.equal(fsq.indices_to_codes(idx), z_q)
    assert torch.isfinite(fsq.unbound(z_q)).all()
    # both ends of every level range are reached
    big = torch.full((1, d), 100.0)
    assert torch.equal(fsq(big)[1], torch.tensor([fsq.codebook_size - 1]))
    assert torch.equal(fsq(-big)[1], torch.tensor([0]))


def test_straight_through_gradient_is_the_bound_derivative() -> None:
    fsq = FSQ(FSQ_IMAGE_LEVELS)
    z = torch.randn(64, 5, requires_grad=True)
    fsq.quantize(z).sum().backward()
    assert z.grad is not None
    assert (z.grad.abs() > 0).all()
    z2 = z.detach().clone().requires_grad_(True)
    (fsq.bound(z2) / fsq._half_width).sum().backward()
    assert torch.allclose(z.grad, z2.grad)


def test_bad_levels_and_indices_are_rejected() -> None:
    with pytest.raises(ValueError):
        FSQ((8, 1))
    fsq = FSQ(FSQ_LULC_LEVELS)
    with pytest.raises(ValueError):
        fsq.indices_to_codes(torch.tensor([4375]))
    with pytest.raises(ValueError):
        fsq.quantize(torch.zeros(2, 3))


def test_entropy_loss_rewards_spread_and_confident_codes() -> None:
    fsq = FSQ(FSQ_IMAGE_LEVELS)
    g = torch.Generator().manual_seed(0)
    collapsed = torch.zeros(512, 5) + 0.01 * torch.randn(512, 5, generator=g)
    # pre-activations on the level grid: confident and spread over many codes
    codes = fsq.indices_to_codes(torch.randint(0, fsq.codebook_size, (512,), generator=g))
    bounded = codes.double() * fsq._half_width.double()
    spread = (
        torch.atanh((bounded + fsq._offset.double()) / fsq._half_l.double()) - fsq._shift.double()
    ).float()
    assert fsq.entropy_loss(spread) < fsq.entropy_loss(collapsed) - 3.0
    z = collapsed.clone().requires_grad_(True)
    fsq.entropy_loss(z, max_tokens=128).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
