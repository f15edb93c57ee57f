"""Deterministic crop drawing and cutting (tokenize_jobs/crops.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from terraloom.tokenize_jobs.crops import (
    FLIP_X,
    FLIP_Y,
    _gather_crops,
    apply_crop,
    apply_crops,
    centre_crop,
    draw_crops,
    row_key,
)

KEYS = [f"451U_946L-{i:03d}" for i in range(40)]


def test_crop_zero_is_centred_and_unflipped():
    crops = draw_crops(KEYS, 4)
    assert crops.shape == (40, 4, 5) and crops.dtype == np.int32
    assert (crops[:, 0] == [20, 20, 224, 224, 0]).all()
    assert centre_crop(64).tolist() == [100, 100, 64, 64, 0]


def test_random_crops_in_bounds_and_varied():
    crops = draw_crops(KEYS, 8, crop_px=96)
    rest = crops[:, 1:].reshape(-1, 5)
    assert (rest[:, :2] >= 0).all() and (rest[:, :2] <= 264 - 96).all()
    assert (rest[:, 2:4] == 96).all()
    assert set(rest[:, 4].tolist()) == {0, 1, 2, 3}
    assert len({(y, x) for y, x in rest[:, :2].tolist()}) > 0.9 * len(rest)


def test_crops_reproducible_and_independent_of_batch():
    a = draw_crops(KEYS, 5, seed=7)
    b = draw_crops(KEYS[::-1], 5, seed=7)[::-1]  # other order, other batch
    c = draw_crops(KEYS[10:11], 5, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[10:11], c)
    # the key and the seed matter
    assert not np.array_equal(a[:, 1:], draw_crops(KEYS, 5, seed=8)[:, 1:])
    assert not np.array_equal(a[0, 1:], a[1, 1:])
    assert row_key("train", 5) == "train/row-5"


def test_draw_crops_rejects_bad_sizes():
    with pytest.raises(ValueError):
        draw_crops(KEYS, 0)
    with pytest.raises(ValueError):
        draw_crops(KEYS, 2, crop_px=300)


def test_apply_crop_flip_semantics():
    img = np.arange(2 * 6 * 6).reshape(2, 6, 6)
    np.testing.assert_array_equal(apply_crop(img, (1, 2, 3, 2, 0)), img[:, 1:4, 2:4])
    np.testing.assert_array_equal(
        apply_crop(img, (1, 2, 3, 2, FLIP_X)), img[:, 1:4, 2:4][:, :, ::-1]
    )
    np.testing.assert_array_equal(
        apply_crop(img, (1, 2, 3, 2, FLIP_Y)), img[:, 1:4, 2:4][:, ::-1, :]
    )
    np.testing.assert_array_equal(apply_crop(img, (1, 2, 3, 2, 3)), img[:, 3:0:-1, 3:1:-1])
    t = torch.from_numpy(img)
    for flip in range(4):
        assert torch.equal(
            apply_crop(t, (1, 2, 3, 2, flip)),
            torch.from_numpy(np.ascontiguousarray(apply_crop(img, (1, 2, 3, 2, flip)))),
        )
    with pytest.raises(ValueError):
        apply_crop(img, (4, 0, 3, 3, 0))


def test_apply_crops_matches_single_crops_on_every_path():
    rng = np.random.default_rng(0)
    px = rng.standard_normal((5, 3, 40, 40)).astype(np.float32)
    crops = draw_crops(KEYS[:5], 3, crop_px=16, sample_px=40).reshape(-1, 5)
    src = np.repeat(np.arange(5), 3)
    want = np.stack([apply_crop(px[s], c) for s, c in zip(src, crops)])
    np.testing.assert_array_equal(apply_crops(px, crops, src), want)
    t = torch.from_numpy(px)
    assert torch.equal(apply_crops(t, crops, src), torch.from_numpy(want))
    # the accelerator path (one gather) run on CPU tensors
    assert torch.equal(
        _gather_crops(t, crops.astype(np.int64), src, 16, 16), torch.from_numpy(want)
    )
    assert apply_crops(px, crops[:0]).shape == (0, 3, 0, 0)


def test_apply_crops_rejects_bad_crops():
    px = np.zeros((2, 1, 40, 40), np.float32)
    with pytest.raises(ValueError, match="outside"):
        apply_crops(px, np.array([[30, 0, 16, 16, 0], [0, 0, 16, 16, 0]]))
    with pytest.raises(ValueError, match="one size"):
        apply_crops(px, np.array([[0, 0, 16, 16, 0], [0, 0, 8, 8, 0]]))
    with pytest.raises(ValueError, match="src"):
        apply_crops(px, np.array([[0, 0, 16, 16, 0]]), src=np.array([2]))
