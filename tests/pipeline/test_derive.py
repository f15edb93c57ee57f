from __future__ import annotations

import numpy as np
import pytest

from terraloom.pipeline.derive import (
    CLOUD_MASK_CLEAR,
    CLOUD_MASK_CLOUD,
    CLOUD_MASK_NODATA,
    CLOUD_MASK_SHADOW,
    cloud_fraction,
    cloud_mask_from_scl,
    geo_vector,
    ndvi,
    reflectance,
    s2_reflectance_params,
    s2rgb,
)


def test_s2rgb_stretches_2_98_percent_jointly_and_zeroes_nodata() -> None:
    rng = np.random.default_rng(0)
    red = rng.uniform(1000, 3000, (64, 64)).astype(np.float32)
    green = red * 0.8
    blue = red * 0.6
    red[0, 0] = np.nan
    rgb = s2rgb(red, green, blue)
    assert rgb.shape == (3, 64, 64) and rgb.dtype == np.uint8
    assert (rgb[:, 0, 0] == 0).all()
    pooled = np.concatenate([b[np.isfinite(red)] for b in (red, green, blue)])
    lo, hi = np.percentile(pooled, [2, 98])
    expect = np.clip((green[5, 7] - lo) / (hi - lo) * 255, 0, 255)
    assert rgb[1, 5, 7] == pytest.approx(expect, abs=1)
    frac_sat = np.mean(rgb[:, np.isfinite(red)] == 255)
    assert 0.005 < frac_sat < 0.05  # about the top 2 % saturates
    # one joint stretch keeps the colour balance: red stays brighter than blue
    assert (rgb[0].astype(int) >= rgb[2].astype(int)).all()


def test_ndvi_uses_reflectance_with_the_baseline_offset() -> None:
    scale, offset = s2_reflectance_params(None, None, "05.09")
    assert (scale, offset) == (1e-4, -0.1)
    assert s2_reflectance_params(None, None, "03.01") == (1e-4, 0.0)
    assert s2_reflectance_params(2e-4, None, "05.09") == (
        2e-4,
        0.0,
    )  # the asset's raster:bands wins
    nir_dn = np.array([[5000.0, 1000.0, np.nan]], np.float32)
    red_dn = np.array([[1500.0, 1000.0, 1200.0]], np.float32)
    v = ndvi(reflectance(nir_dn, scale, offset), reflectance(red_dn, scale, offset))
    assert v[0, 0] == pytest.approx((0.4 - 0.05) / (0.4 + 0.05), abs=1e-5)
    assert np.isnan(v[0, 1])  # reflectance 0 / 0 is undefined, not 0
    assert np.isnan(v[0, 2])
    # without the offset the same DN would give a different (wrong) NDVI
    assert ndvi(nir_dn * 1e-4, red_dn * 1e-4)[0, 0] != pytest.approx(v[0, 0], abs=0.05)


def test_cloud_mask_from_scl_classes() -> None:
    scl = np.array([[4, 8, 9, 10], [3, 0, np.nan, 5]], np.float32)
    mask = cloud_mask_from_scl(scl)
    assert mask.tolist() == [
        [CLOUD_MASK_CLEAR, CLOUD_MASK_CLOUD, CLOUD_MASK_CLOUD, CLOUD_MASK_CLOUD],
        [CLOUD_MASK_SHADOW, CLOUD_MASK_NODATA, CLOUD_MASK_NODATA, CLOUD_MASK_CLEAR],
    ]
    assert cloud_fraction(mask) == pytest.approx(4 / 6)
    assert cloud_fraction(np.full((2, 2), CLOUD_MASK_NODATA, np.uint8)) == 1.0


def test_geo_vector_is_lat_lon() -> None:
    v = geo_vector(-33.5, 151.2)
    assert v.dtype == np.float64 and v.tolist() == [-33.5, 151.2]
