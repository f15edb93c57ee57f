"""stats: exact percentiles and moments in bounded memory equal numpy's on the same values."""

from __future__ import annotations

import numpy as np
import pytest

from terraloom.pipeline.publish.stats import band_stats, from_keys, sort_keys, valid_mask
from terraloom.schemas.modalities import get_modality


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16", "float32"])
def test_band_stats_equal_numpy(dtype: str) -> None:
    rng = np.random.default_rng(7)
    if dtype.startswith("float"):
        x = (rng.standard_normal(50_001) * 900 - 40).astype(dtype)
    else:
        x = rng.integers(0, 250 if dtype == "uint8" else 65_000, 50_001).astype(dtype)
    chunks = np.array_split(x, 9)
    s = band_stats("b", x.dtype, lambda: iter(chunks))
    f = x.astype(np.float64)
    assert s.count == x.size
    assert s.p1 == np.percentile(f, 1) and s.p99 == np.percentile(f, 99)
    assert (s.min, s.max) == (f.min(), f.max())
    assert s.mean == pytest.approx(f.mean(), rel=1e-12)
    assert s.std == pytest.approx(f.std(), rel=1e-9)


def test_sort_keys_preserve_order_and_invert() -> None:
    x = np.array([-np.inf, -3.5, -0.0, 0.0, 1e-8, 2.0, 65504.0], np.float32)
    k = sort_keys(x)
    assert (np.diff(k.astype(np.int64)) >= 0).all()
    np.testing.assert_array_equal(from_keys(k, x.dtype), x)


def test_valid_mask_drops_nodata_and_nan() -> None:
    s2 = np.array([0, 1, 2], np.uint16)
    assert valid_mask(get_modality("S2L2A"), s2).tolist() == [False, True, True]
    dem = np.array([np.nan, 0.0, 5.0], np.float32)
    assert valid_mask(get_modality("DEM"), dem).tolist() == [False, True, True]


def test_band_without_pixels_has_no_statistics() -> None:
    s = band_stats("b", np.dtype("uint16"), lambda: iter([np.zeros(0, np.uint16)]))
    assert s.count == 0 and np.isnan(s.mean)
