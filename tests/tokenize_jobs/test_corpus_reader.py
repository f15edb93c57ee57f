from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from terraloom.tokenize_jobs.corpus_reader import (
    CropSampler,
    open_split,
    random_crops,
    read_rows,
    read_texts,
    valid_rows,
)
from terraloom.tokenize_jobs.crops import apply_crop


def test_batches_are_a_function_of_seed_step_and_rank(toy_corpus: Path) -> None:
    a = CropSampler(toy_corpus, "train", "S2L2A", crop_px=64, batch_size=4, seed=3)
    b = CropSampler(toy_corpus, "train", "S2L2A", crop_px=64, batch_size=4, seed=3, cache_bytes=0)
    x0, c0 = a.batch(0)
    assert x0.shape == (4, 12, 64, 64) and x0.dtype == np.uint16
    y0, d0 = b.batch(0)  # uncached reads give the same batch
    assert np.array_equal(x0, y0) and np.array_equal(c0, d0)
    assert np.array_equal(a.batch(0)[0], x0)
    assert not np.array_equal(a.batch(1)[0], x0)
    assert (c0[:, 2:4] == 64).all() and set(c0[:, 4]) <= {0, 1, 2, 3}


def test_crops_cut_the_sample_they_describe(toy_corpus: Path) -> None:
    s = CropSampler(toy_corpus, "train", "DEM", crop_px=32, batch_size=6, seed=1)
    x, crops = s.batch(5)
    group = open_split(toy_corpus, "train")
    full = read_rows(group, "DEM", s.rows)
    for img, crop in zip(x, crops):
        # every crop equals the same crop of some valid sample
        assert any(np.array_equal(img, apply_crop(f, crop)) for f in full)


def test_invalid_rows_are_never_sampled_and_ranks_are_disjoint(toy_corpus: Path) -> None:
    group = open_split(toy_corpus, "train")
    rows = valid_rows(group)
    assert rows.tolist() == list(range(7))  # the 8th row is invalid
    r0 = CropSampler(toy_corpus, "train", "LULC", crop_px=32, rank=0, world_size=2)
    r1 = CropSampler(toy_corpus, "train", "LULC", crop_px=32, rank=1, world_size=2)
    assert set(r0.rows) | set(r1.rows) == set(rows) and not set(r0.rows) & set(r1.rows)
    x, _ = r0.batch(0)
    assert (x > 0).all()  # LULC nodata 0 never appears in valid toy rows


def test_read_rows_keeps_order_and_duplicates(toy_corpus: Path) -> None:
    group = open_split(toy_corpus, "train")
    geo = read_rows(group, "GEO", np.array([3, 0, 3, 5]))
    full = np.asarray(group["GEO"][:])
    assert np.array_equal(geo, full[[3, 0, 3, 5]])


def test_random_crops_stay_inside_the_sample() -> None:
    crops = random_crops(np.random.default_rng(0), 500, 224, 264)
    assert crops[:, :2].min() >= 0 and crops[:, :2].max() <= 40
    assert set(np.unique(crops[:, 4])) == {0, 1, 2, 3}
    assert (random_crops(np.random.default_rng(0), 10, 64, 264, flips=False)[:, 4] == 0).all()
    with pytest.raises(ValueError):
        random_crops(np.random.default_rng(0), 1, 300, 264)


def test_texts_and_missing_split(toy_corpus: Path) -> None:
    texts = read_texts(toy_corpus, "val")
    assert len(texts) == 2 and all(t.startswith("Mostly ") for t in texts)  # 3 rows, 1 invalid
    with pytest.raises(FileNotFoundError, match="test"):
        open_split(toy_corpus, "test")
    with pytest.raises(KeyError):
        CropSampler(toy_corpus, "train", "S1RTC")  # not in this toy corpus


def test_fixed_batches_are_the_same_on_every_rank_and_unlike_steps(toy_corpus: Path) -> None:
    kw = dict(crop_px=32, batch_size=3, seed=5)
    r0 = CropSampler(toy_corpus, "train", "DEM", rank=0, world_size=2, **kw)  # type: ignore[arg-type]
    r1 = CropSampler(toy_corpus, "train", "DEM", rank=1, world_size=2, **kw)  # type: ignore[arg-type]
    a, b = r0.fixed_batches(2), r1.fixed_batches(2)
    assert a.shape == (6, 1, 32, 32) and np.array_equal(a, b)
    assert not np.array_equal(a[:3], r0.batch(0)[0]) and not np.array_equal(a[:3], r0.batch(1)[0])
