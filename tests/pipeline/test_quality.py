from __future__ import annotations

import numpy as np

from terraloom.pipeline.quality import (
    check_cloud,
    check_image,
    check_s1_s2_delta,
    fill_small_gaps,
    is_constant,
    judge_image,
    nodata_fraction,
)
from terraloom.schemas.tables import RejectReason


def _img(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(100, 200, (3, 50, 50)).astype(np.float32)


def test_nodata_fraction_counts_a_pixel_missing_in_any_band() -> None:
    a = _img()
    a[0, :5, :] = np.nan
    a[2, :, :5] = np.nan
    assert nodata_fraction(a) == (5 * 50 + 45 * 5) / 2500


def test_small_gaps_are_filled_from_the_nearest_valid_pixel_and_counted() -> None:
    a = _img()
    a[:, 10, 10] = np.nan
    a[1, 30:32, 40] = np.nan
    filled, n = fill_small_gaps(a)
    assert n == 3 and not np.isnan(filled).any()
    nearest = [tuple(a[:, 10, 9]), tuple(a[:, 10, 11]), tuple(a[:, 9, 10]), tuple(a[:, 11, 10])]
    assert tuple(filled[:, 10, 10]) in nearest  # a real neighbour spectrum, all bands together
    np.testing.assert_array_equal(filled[:, 0, 0], a[:, 0, 0])  # valid pixels untouched


def test_rules_give_the_right_reason() -> None:
    ok = _img()
    assert check_image("S2L2A", ok, max_nodata_fraction=0.01) is None
    holes = ok.copy()
    holes[:, :2, :] = np.nan  # 4 %
    issue = check_image("S2L2A", holes, max_nodata_fraction=0.01)
    assert issue is not None and issue.reason is RejectReason.NODATA and issue.modality == "S2L2A"
    empty = np.full_like(ok, np.nan)
    issue = check_image("DEM", empty, max_nodata_fraction=0.01)
    assert (
        issue is not None and issue.reason is RejectReason.NODATA and "all nodata" in issue.message
    )
    inf = ok.copy()
    inf[0, 3, 3] = np.inf
    issue = check_image("DEM", inf, max_nodata_fraction=0.01)
    assert issue is not None and issue.reason is RejectReason.NAN_INF
    issue = check_image("DEM", ok, max_nodata_fraction=0.01, bad_px=2)
    assert issue is not None and issue.reason is RejectReason.NAN_INF
    const = ok.copy()
    const[1] = 7.0
    assert is_constant(const)
    issue = check_image("S2L2A", const, max_nodata_fraction=0.01)
    assert issue is not None and issue.reason is RejectReason.CONSTANT
    assert check_image("LULC", const, max_nodata_fraction=0.01, check_constant=False) is None
    # a band allowed to be uniform (S2 B10 cirrus under a clear sky) is not a broken image,
    # another constant band still is, and so is an image whose every band is constant
    assert not is_constant(const, uniform_ok=[1])
    assert check_image("S2L1C", const, max_nodata_fraction=0.01, uniform_ok=[1]) is None
    assert is_constant(const, uniform_ok=[0])
    flat = np.full_like(ok, 3.0)
    assert is_constant(flat, uniform_ok=list(range(flat.shape[0])))


def test_cloud_and_delta_rules() -> None:
    assert check_cloud(0.1, 0.2) is None
    issue = check_cloud(1.0, 0.2)
    assert issue is not None and issue.reason is RejectReason.CLOUDY
    assert check_s1_s2_delta(3.0, 7.0) is None and check_s1_s2_delta(None, 7.0) is None
    issue = check_s1_s2_delta(-9.5, 7.0)
    assert (
        issue is not None and issue.reason is RejectReason.S1_S2_DELTA and "9.50" in issue.message
    )


def test_judge_image_knows_which_modalities_and_bands_may_be_uniform() -> None:
    rng = np.random.default_rng(0)
    lulc = np.full((1, 8, 8), 10.0, np.float32)  # a sample all in one class
    assert judge_image("LULC", lulc, ("class",), max_nodata_fraction=0.0) is None
    dem = judge_image("DEM", lulc, ("elevation",), max_nodata_fraction=0.0)
    assert dem is not None and dem.reason is RejectReason.CONSTANT
    l1c = rng.uniform(100, 200, (3, 8, 8)).astype(np.float32)
    l1c[1] = 7.0  # B10 over a clear sky: flat
    assert judge_image("S2L1C", l1c, ("B09", "B10", "B11"), max_nodata_fraction=0.0) is None
    issue = judge_image("S2L1C", l1c, ("B09", "B8A", "B11"), max_nodata_fraction=0.0)
    assert issue is not None and issue.reason is RejectReason.CONSTANT
    issue = judge_image("DEM", l1c[:1], ("elevation",), max_nodata_fraction=0.0, bad_px=3)
    assert issue is not None and issue.reason is RejectReason.NAN_INF
