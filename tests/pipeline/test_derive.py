from __future__ import annotations

import numpy as np
import pytest

from terraloom.pipeline.derive import (
    CLOUD_MASK_CLEAR,
    CLOUD_MASK_CLOUD,
    CLOUD_MASK_NODATA,
    CLOUD_MASK_SHADOW,
    DERIVERS,
    DeriveInputs,
    cloud_fraction,
    cloud_mask_from_scl,
    derive,
    geo_vector,
    ndvi,
    reflectance,
    s2_reflectance_params,
    s2rgb,
    sample_cloud,
    underivable,
    unsourced,
)
from terraloom.pipeline.quality import Issue
from terraloom.schemas.modalities import REGISTRY, Layout
from terraloom.schemas.tables import RejectReason


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


# --- the registry-driven derivation of one sample ---------------------------------------------


def _inputs(bands: tuple[str, ...] = ("B02", "B03", "B04", "B08"), **kw: object) -> DeriveInputs:
    rng = np.random.default_rng(5)
    s2 = rng.uniform(1500, 4000, (len(bands), 32, 32)).astype(np.float32)
    return DeriveInputs(45.5, 15.5, {"S2L2A": s2}, {"S2L2A": bands}, **kw)  # type: ignore[arg-type]


def test_derive_covers_every_derived_registry_modality_but_text() -> None:
    d = derive(_inputs())
    want = {m.name for m in REGISTRY if m.is_derived and m.layout is not Layout.TEXT}
    assert set(d.arrays) == want and set(DERIVERS) == want
    assert d.arrays["NDVI"] is not None and d.arrays["NDVI"].shape == (1, 32, 32)
    assert d.arrays["S2RGB"] is not None and d.arrays["S2RGB"].dtype == np.uint8
    np.testing.assert_array_equal(d.arrays["GEO"], [45.5, 15.5])
    assert -1.0 <= d.quality["ndvi_mean"] <= 1.0 and "s2_offset_ignored" not in d.quality


def test_derive_without_the_bands_it_needs_is_none_and_a_required_one_is_a_reject() -> None:
    d = derive(_inputs(("B02", "B03", "B04")))  # no B08: no NDVI, RGB still there
    assert d.arrays["NDVI"] is None and d.arrays["S2RGB"] is not None
    issue = underivable(("S2L2A", "S2RGB", "NDVI"), d)
    assert issue is not None and issue.modality == "NDVI"
    assert issue.message == "NDVI: cannot be derived (S2L2A bands missing)"
    assert underivable(("S2RGB", "GEO"), d) is None


def test_ndvi_reads_the_corpus_convention_whatever_the_scene_declares() -> None:
    """S2 images arrive harmonised (DN = 10000 * reflectance + 1000), so NDVI removes the
    +1000 DN and ignores the scene's published scale/offset (already applied)."""
    b04, b08 = np.full((8, 8), 1500, np.float32), np.full((8, 8), 4000, np.float32)
    es = {"assets": [{"band": b, "scale": 1e-4, "offset": 0.0} for b in ("B04", "B08")]}
    for scene in ({}, es):
        d = derive(
            DeriveInputs(
                0.0, 0.0, {"S2L2A": np.stack([b04, b08])}, {"S2L2A": ("B04", "B08")}, scene
            )
        )  # type: ignore[arg-type]
        assert d.arrays["NDVI"] is not None
        np.testing.assert_allclose(d.arrays["NDVI"], (0.3 - 0.05) / (0.3 + 0.05), rtol=1e-6)
        assert "s2_offset_ignored" not in d.quality


def test_unsourced_names_the_missing_source_of_a_built_derived_image() -> None:
    d = derive(DeriveInputs(0.0, 0.0, {}, {}))
    gone = [Issue(RejectReason.CLOUDY, "S2L2A", "cloudy")]
    out = unsourced(("S2L2A", "S2RGB", "NDVI", "GEO"), gone, d)
    assert [(i.modality, i.reason) for i in out] == [
        ("S2RGB", RejectReason.CLOUDY),
        ("NDVI", RejectReason.CLOUDY),
    ]
    assert out[0].message == "S2RGB: not derived, S2L2A is missing"
    assert unsourced(("NDVI",), [], d) == []


def test_sample_cloud_from_scl_or_from_the_scene_cover() -> None:
    scl = np.full((4, 4), 4.0, np.float32)
    scl[0] = 9.0  # a row of cloud
    mask, frac = sample_cloud(scl, 80.0, (4, 4))
    assert frac == pytest.approx(0.25) and (mask[0] == CLOUD_MASK_CLOUD).all()
    mask, frac = sample_cloud(None, 12.0, (4, 4))
    assert frac == pytest.approx(0.12) and (mask == CLOUD_MASK_NODATA).all()
    assert sample_cloud(None, None, (4, 4))[1] is None


def test_s2rgb_of_a_fully_valid_sample_is_the_stretch_of_its_pooled_values() -> None:
    """Without nodata the quantiles are taken over the whole stack (no gather): the same
    bytes as the stretch over the gathered valid values of each band."""
    rng = np.random.default_rng(7)
    red, green, blue = (rng.gamma(2.0, 600.0, (64, 64)).astype(np.float32) for _ in range(3))
    got = s2rgb(red, green, blue)
    stack = np.stack([red, green, blue])
    lo, hi = np.percentile(np.concatenate([b.ravel() for b in stack]), [2.0, 98.0])
    ref = np.rint(np.clip((stack - lo) / (hi - lo) * 255.0, 0.0, 255.0)).astype(np.uint8)
    assert got.tobytes() == ref.tobytes()
    red_gap = red.copy()
    red_gap[:3] = np.nan  # one band's gap: that pixel is left out of all three bands' pool
    gap = s2rgb(red_gap, green, blue)
    assert (gap[:, :3] == 0).all() and not np.array_equal(gap[:, 3:], got[:, 3:])
