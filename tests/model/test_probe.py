"""The linear probe: patch labels, modality pooling, the fit and its references."""

from __future__ import annotations

import numpy as np
import pytest

from terraloom.model.probe import (
    ProbeConfig,
    fit_probe,
    majority_class,
    patch_majority,
    pixel_patch_means,
    pool_modalities,
    probe_study,
)
from terraloom.model.tim import IGNORE

K = 4


def test_patch_majority_is_the_most_frequent_labelled_class_row_major() -> None:
    lab = np.full((1, 4, 4), IGNORE, np.uint8)
    lab[0, :2, :2] = [[1, 1], [2, IGNORE]]  # patch (0, 0): 1 wins over 2, nodata ignored
    lab[0, :2, 2:] = [[3, 3], [3, 0]]  # patch (0, 1): 3
    lab[0, 2:, 2:] = [[0, 2], [2, 0]]  # patch (1, 1): tie 0/2 -> the lower index
    out = patch_majority(lab, 2, K)  # patch (1, 0) has no label at all
    assert out.tolist() == [[1, 3, IGNORE, 0]]
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patch_majority(lab[:, :3], 2, K)


def test_pool_modalities_averages_the_same_position_across_modalities() -> None:
    s2 = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    s1 = -s2 + 1
    pooled = pool_modalities(np.concatenate([s2, s1], 1), 2)
    assert pooled.shape == (2, 3, 2) and np.allclose(pooled, 0.5)
    with pytest.raises(ValueError, match="equal length"):
        pool_modalities(np.zeros((1, 5, 2)), 2)


def _data(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels with an uneven prior, features = signal * class centroid + unit noise."""
    y = rng.choice(K, size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(np.uint8)
    centroids = np.random.default_rng(99).normal(size=(K, 16)).astype(np.float32)
    x = signal * centroids[y] + rng.normal(size=(n, 16)).astype(np.float32)
    return x, y


def test_probe_on_label_carrying_embeddings_beats_noise_and_the_majority_class() -> None:
    rng = np.random.default_rng(0)
    train_x, train_y = _data(rng, 600, 1.5)
    val_x, val_y = _data(rng, 300, 1.5)
    train_y[:20] = IGNORE  # unlabelled patches are left out of the fit
    noise = (rng.normal(size=train_x.shape), rng.normal(size=val_x.shape))
    study = probe_study(
        {"pretrained": (train_x, val_x), "random_init": noise},
        train_y,
        val_y,
        K,
        ProbeConfig(steps=200),
    )
    good, bad, major = (
        study["probes"]["pretrained"],
        study["probes"]["random_init"],
        study["majority"],
    )
    assert good["accuracy"] > 0.85 and good["miou"] > 0.7
    assert major["class"] == 0 and major["accuracy"] == pytest.approx(np.mean(val_y == 0))
    # noise features carry no label: the probe falls back to about the prior
    assert bad["accuracy"] < major["accuracy"] + 0.08
    assert good["accuracy"] > bad["accuracy"] + 0.3 and good["miou"] > bad["miou"] + 0.4
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["miou"] <= 1 for r in (good, bad, major))
    assert study["patches"] == {"train": 580, "val": 300}


def test_fit_is_deterministic_and_refuses_unlabelled_data() -> None:
    x, y = _data(np.random.default_rng(1), 200, 1.0)
    a, b = fit_probe(x, y, K, ProbeConfig(steps=50)), fit_probe(x, y, K, ProbeConfig(steps=50))
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    with pytest.raises(ValueError, match="no labelled patch"):
        fit_probe(x, np.full_like(y, IGNORE), K, ProbeConfig())
    with pytest.raises(ValueError, match="no labelled patch"):
        majority_class(np.full(3, IGNORE, np.uint8))
    with pytest.raises(ValueError, match="steps"):
        ProbeConfig(steps=0)


def test_pixel_patch_means_are_each_bands_mean_in_the_model_patch_layout() -> None:
    from terraloom.model.interop.embed import center_patches
    from terraloom.schemas.modalities import get_modality

    raw = np.zeros((1, 2, 8, 8), np.float32)  # two S1GRD bands, 2 x 2 patches of 4 px
    raw[0, 0, :4, 4:] = 3.0  # VV, patch (0, 1)
    raw[0, 1, 4:, :4] = 5.0  # VH, patch (1, 0)
    patches = center_patches(raw, "S1GRD", 8, 4)
    means = pixel_patch_means(patches, 2)
    std = get_modality("S1GRD").std
    assert means.shape == (1, 4, 2)
    # the raised patch stands out by its raise (normalised) in its own band only
    assert means[0, 1, 0] - means[0, 0, 0] == pytest.approx(3.0 / std[0], rel=1e-5)
    assert means[0, 2, 1] - means[0, 0, 1] == pytest.approx(5.0 / std[1], rel=1e-5)
    assert means[0, 1, 1] == means[0, 0, 1] and means[0, 3, 0] == means[0, 0, 0]
