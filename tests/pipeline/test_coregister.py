from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import Resampling as R
from rasterio.windows import Window
from sample_kit import grid_transform, smooth_field

from terraloom.pipeline.coregister import (
    PointSampler,
    SeparableSampler,
    TargetGrid,
    cluster_windows,
    mosaic_first_valid,
    point_sampler,
    power_to_db,
    resample_points,
    source_coords,
    source_window,
    to_linear_power,
    warp_to_grid,
)
from terraloom.pipeline.readers import AssetInfo, RasterWindow

GRID = TargetGrid(32633, Affine(10, 0, 500_000, 0, -10, 5_000_000))
UTM33 = CRS.from_epsg(32633)


def _window(data: np.ndarray, crs: int, t: Affine) -> RasterWindow:
    return RasterWindow(data.astype(np.float32), CRS.from_epsg(crs), t)


def test_same_lattice_source_is_sliced_exactly() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((400, 400)).astype(np.float32)
    src = _window(
        data, 32633, Affine(10, 0, 499_000, 0, -10, 5_000_500)
    )  # grid origin at row 50, col 100
    out = warp_to_grid(src, GRID, R.bilinear)
    np.testing.assert_array_equal(out, data[50:314, 100:364])
    partial = warp_to_grid(
        _window(data, 32633, Affine(10, 0, 501_000, 0, -10, 5_000_000)), GRID, R.bilinear
    )
    assert np.isnan(partial[:, :100]).all() and np.isfinite(partial[:, 100:]).all()


@pytest.mark.parametrize("resampling", [R.bilinear, R.nearest])
def test_point_sampler_is_gdals_kernel_on_the_same_crs(resampling: R) -> None:
    """Same CRS (GDAL's transform is exact there): the fast path gives GDAL's values."""
    rng = np.random.default_rng(1)
    src = _window(
        rng.random((140, 140)), 32633, Affine(20, 0, 499_980, 0, -20, 5_000_020)
    )  # an S2 20 m band
    fast = warp_to_grid(src, GRID, resampling)
    ref = warp_to_grid(src, GRID, resampling, use_gdal=True)
    assert np.isfinite(fast).all() and np.isfinite(ref).all()
    np.testing.assert_allclose(fast, ref, atol=1e-6)


@pytest.mark.parametrize("crs", [32634, 4326])
def test_point_sampler_uses_exact_coordinates_across_crs(crs: int) -> None:
    """Other CRS: values equal bilinear sampling at the exact (per-pixel pyproj)
    coordinates; GDAL's approximate transformer may be off by up to its 0.125 px."""
    rng = np.random.default_rng(1)
    x, y = Transformer.from_crs(32633, crs, always_xy=True).transform(500_000, 5_000_000)
    res = 1 / 3600 if crs == 4326 else 10.0
    t = Affine(res, 0, x - 40 * res, 0, -res, y + 40 * res)
    src = _window(rng.random((400, 400)), crs, t)
    gx, gy = GRID.pixel_centres()
    ex, ey = Transformer.from_crs(32633, crs, always_xy=True).transform(gx, gy)
    ec, er = ~t @ (np.asarray(ex), np.asarray(ey))
    exact = resample_points(src.data[None], np.asarray(er), np.asarray(ec), R.bilinear)[0]
    fast = warp_to_grid(src, GRID, R.bilinear)
    assert np.isfinite(fast).mean() > 0.5
    np.testing.assert_array_equal(np.isfinite(fast), np.isfinite(exact))
    np.testing.assert_allclose(fast[np.isfinite(fast)], exact[np.isfinite(exact)], atol=1e-4)
    gdal = warp_to_grid(src, GRID, R.bilinear, use_gdal=True)
    both = np.isfinite(gdal) & np.isfinite(exact)
    assert np.abs(gdal[both] - exact[both]).mean() < 0.05


def test_bilinear_is_nodata_aware() -> None:
    data = np.full((140, 140), 5.0, np.float32)
    data[60:80, 60:80] = np.nan
    src = _window(data, 32633, Affine(20, 0, 499_980, 0, -20, 5_000_020))
    out = warp_to_grid(src, GRID, R.bilinear)
    valid = np.isfinite(out)
    np.testing.assert_allclose(out[valid], 5.0)  # nodata never leaks into values
    hole = ~valid
    assert 0 < hole.mean() < 0.1  # the hole survives, about its own size (40 x 40 px at 10 m)
    assert hole[130, 130] and not hole[10, 10]


def test_finer_source_goes_through_gdal_area_kernel() -> None:
    rng = np.random.default_rng(2)
    src = _window(rng.random((1100, 1100)), 32633, Affine(2.5, 0, 499_900, 0, -2.5, 5_000_100))
    assert point_sampler(src, GRID) is None  # 4 source px per target px: point sampling would alias
    out = warp_to_grid(src, GRID, R.bilinear)
    assert np.isfinite(out).all()
    assert out.std() < src.data.std() / 2  # averaged, not point-sampled


def test_analytic_field_is_reproduced_across_zones() -> None:
    """A field of (lon, lat) written in zone 34N and warped onto a 33N grid equals the
    field at the grid's pixel centres: geometry errors would show as value errors."""
    lon0, lat0 = 18.0, 45.0
    grid = TargetGrid(32633, grid_transform(32633, lon0 - 0.01, lat0))
    t34 = grid_transform(32634, lon0 - 0.01, lat0, px=400)
    cols, rows = np.meshgrid(np.arange(400) + 0.5, np.arange(400) + 0.5)
    x, y = t34 @ (cols, rows)
    lon, lat = Transformer.from_crs(32634, 4326, always_xy=True).transform(x, y)
    src = _window(smooth_field(lon, lat, lon0, lat0), 32634, t34)
    out = warp_to_grid(src, grid, R.bilinear)
    glon, glat = grid.pixel_centres_lonlat()
    truth = smooth_field(glon, glat, lon0, lat0)
    err = np.abs(out - truth)
    assert np.isfinite(out).all()
    grad = np.abs(np.gradient(truth, axis=1)).mean()
    assert np.median(err) < 0.05 * grad  # well below a twentieth of a pixel's worth of change


def test_gcp_coordinates_follow_the_thin_plate_spline() -> None:
    """GCPs on a non-linear geometry: the TPS coordinate field is exact at the GCPs,
    where a global polynomial is not."""
    gcps = []
    for r in np.linspace(0, 300, 7):
        for c in np.linspace(0, 300, 7):
            lon = 15.0 + c * 1.3e-4 + (c / 300) ** 3 * 4e-4
            lat = 45.02 - r * 0.9e-4 + c * 1e-5
            gcps.append(GroundControlPoint(row=float(r), col=float(c), x=lon, y=lat, z=0.0))
    src = RasterWindow(
        np.zeros((300, 300), np.float32), CRS.from_epsg(4326), None, gcps=tuple(gcps)
    )
    g0 = gcps[7 * 3 + 4]  # an interior GCP
    x, y = Transformer.from_crs(4326, 32633, always_xy=True).transform(g0.x, g0.y)
    grid = TargetGrid(
        32633, Affine(10, 0, x - 96.5 * 10, 0, -10, y + 96.5 * 10)
    )  # GCP at pixel (96, 96)
    rows, cols, scale = source_coords(src, grid, tps=True)
    assert rows[96, 96] == pytest.approx(g0.row, abs=1e-3)
    assert cols[96, 96] == pytest.approx(g0.col, abs=1e-3)
    assert 0.5 < scale < 1.5
    prow, pcol, _ = source_coords(src, grid, tps=False)
    assert max(abs(prow[96, 96] - g0.row), abs(pcol[96, 96] - g0.col)) > 0.05


def test_source_window_covers_the_grid_with_a_margin() -> None:
    info = AssetInfo(
        "x", UTM33, Affine(20, 0, 499_000, 0, -20, 5_001_000), 500, 500, 1, "uint16", 0
    )
    w = source_window(info, GRID, R.bilinear)
    assert w is not None
    assert w.col_off <= 50 and w.row_off <= 50
    assert w.col_off + w.width >= 50 + 132 and w.row_off + w.height >= 50 + 132
    assert w.width <= 132 + 6
    far = AssetInfo("x", UTM33, Affine(20, 0, 700_000, 0, -20, 5_001_000), 500, 500, 1, "uint16", 0)
    assert source_window(far, GRID, R.bilinear) is None


def test_cluster_windows_shares_reads_of_neighbours_only() -> None:
    near = [Window(0, 0, 100, 100), Window(50, 0, 100, 100), Window(0, 60, 100, 100)]
    far = [Window(10_000, 10_000, 100, 100)]
    clusters = cluster_windows(near + far, slack=2.0)
    members = sorted(sorted(m) for _, m in clusters)
    assert members == [[0, 1, 2], [3]]
    merged = next(w for w, m in clusters if len(m) == 3)
    assert (merged.col_off, merged.row_off, merged.width, merged.height) == (0, 0, 150, 160)


def test_mosaic_takes_the_first_valid_value_in_order() -> None:
    a = np.array([[1.0, np.nan], [np.nan, np.nan]], np.float32)
    b = np.array([[9.0, 2.0], [np.nan, 9.0]], np.float32)
    c = np.array([[9.0, 9.0], [3.0, 9.0]], np.float32)
    out = mosaic_first_valid([a, b, c])
    np.testing.assert_array_equal(out, [[1.0, 2.0], [3.0, 9.0]])


def test_sar_is_resampled_in_linear_power() -> None:
    db = np.array([-20.0, -10.0, 0.0, np.nan], np.float32)
    power = to_linear_power(db, "float32")
    np.testing.assert_allclose(power[:3], [0.01, 0.1, 1.0], rtol=1e-5)
    np.testing.assert_allclose(power_to_db(power)[:3], db[:3], atol=1e-4)
    assert np.isnan(power_to_db(np.array([0.0, -1.0]))).all()  # never -inf
    amp = to_linear_power(np.array([100.0, 1000.0], np.float32), "uint16", scale=1e-3)
    np.testing.assert_allclose(amp, [0.01, 1.0], rtol=1e-5)  # amplitude DN -> power
    # the mean of two pixels at -10 and -20 dB is -12.6 dB in power, -15 dB if averaged in dB
    mean_db = power_to_db(
        np.array([to_linear_power(np.array([-10.0, -20.0], np.float32), "float32").mean()])
    )
    assert mean_db[0] == pytest.approx(-12.596, abs=1e-3)


def test_finer_categorical_source_takes_the_majority_class() -> None:
    classes = np.zeros((1100, 1100), np.float32)
    classes[:, :] = 2.0
    classes[1::4, :] = 5.0  # one row in four: a minority class a nearest pick could land on
    src = _window(classes, 32633, Affine(2.5, 0, 499_900, 0, -2.5, 5_000_100))
    out = warp_to_grid(src, GRID, R.nearest)
    assert (out == 2.0).all()


@pytest.mark.parametrize("resampling", [R.bilinear, R.nearest])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("with_nan", [False, True])
def test_separable_sampler_matches_the_general_sampler(resampling, with_weight, with_nan) -> None:
    """The axis-aligned fast path gives the general sampler's values, footprint and weights,
    including points beyond the source edge (partial kernels) and NaN nodata."""
    rng = np.random.default_rng(3)
    data = rng.normal(1000, 200, (3, 40, 50)).astype(np.float32)
    if with_nan:
        data[:, 10:13, 20:24] = np.nan
    # 20 m source -> 10 m target, shifted so some targets fall beyond each edge
    rows = (np.arange(90) + 0.5) * 0.5 - 2.2
    cols = (np.arange(110) + 0.5) * 0.5 - 1.7
    fast = SeparableSampler(rows, cols, (40, 50))
    slow = PointSampler(
        np.broadcast_to(rows[:, None], (90, 110)),
        np.broadcast_to(cols[None, :], (90, 110)),
        (40, 50),
    )
    w_fast = np.zeros((3, 90, 110), np.float32) if with_weight else None
    w_slow = np.zeros((3, 90, 110), np.float32) if with_weight else None
    a = fast.sample(data, resampling, w_fast)
    b = slow.sample(data, resampling, w_slow)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.isnan(a).any() and np.isfinite(a).any()  # the footprint edge is exercised
    np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=1e-5)
    if with_weight:
        np.testing.assert_allclose(w_fast, w_slow, rtol=1e-5, atol=1e-6)


def test_point_sampler_picks_the_separable_path_for_axis_aligned_grids() -> None:
    t_src = Affine(20.0, 0, 600000.0, 0, -20.0, 5000000.0)
    src = RasterWindow(
        data=np.zeros((30, 30), np.float32), crs=CRS.from_epsg(32633), transform=t_src
    )
    grid = TargetGrid(32633, Affine(10.0, 0, 600105.0, 0, -10.0, 4999895.0), 40, 40)
    assert isinstance(point_sampler(src, grid), SeparableSampler)
    # the neighbouring zone's grid is rotated against this source: the general sampler
    rotated = TargetGrid(32634, Affine(10.0, 0, 180105.0, 0, -10.0, 4999895.0), 40, 40)
    x0, y0 = Transformer.from_crs(32634, 32633, always_xy=True).transform(180105.0, 4999895.0)
    src_other_zone = RasterWindow(
        data=np.zeros((40, 40), np.float32),
        crs=CRS.from_epsg(32633),
        transform=Affine(20.0, 0, round(x0) - 100.0, 0, -20.0, round(y0) + 100.0),
    )
    assert type(point_sampler(src_other_zone, rotated)) is PointSampler


@pytest.mark.parametrize("resampling", [R.bilinear, R.nearest])
def test_separable_sampler_reads_only_its_columns_of_a_wide_shared_window(resampling) -> None:
    """A read window shared by a row of samples is much wider than one footprint: the
    sampler's result is bit-identical to sampling the footprint's columns alone, whatever
    lies outside them (NaN included, when the caller says the window holds none there)."""
    rng = np.random.default_rng(5)
    wide = rng.normal(1000, 200, (2, 40, 400)).astype(np.float32)
    rows = (np.arange(60) + 0.5) * 0.5 + 3.1
    cols = (np.arange(60) + 0.5) * 0.5 + 201.3  # columns 201..232 of the wide window
    narrow = np.ascontiguousarray(wide[:, :, 190:250])
    a = SeparableSampler(rows, cols, (40, 400)).sample(wide, resampling)
    b = SeparableSampler(rows, cols - 190, (40, 60)).sample(narrow, resampling)
    np.testing.assert_array_equal(a, b)
    wide[:, :, :100] = np.nan  # far outside the footprint
    c = SeparableSampler(rows, cols, (40, 400)).sample(wide, resampling, has_nan=False)
    np.testing.assert_array_equal(a, c)


def _separable_reference(
    s: SeparableSampler, data: np.ndarray, resampling: R, weight: np.ndarray | None
) -> np.ndarray:
    """The axis-aligned kernel written out with fancy indexing, as the corpus's bytes were
    first computed: the sampler's in-place 1-D gathers must give these bits exactly."""
    b = data.shape[0]
    if resampling is R.nearest:
        out = data[:, s._iy[:, None], s._ix[None, :]].astype(np.float32).reshape(b, -1)
        out[:, ~s.inside] = np.nan
        if weight is not None:
            weight.reshape(b, -1)[:] = np.isfinite(out)
        return out.reshape(b, *s.shape)
    y0, y1, wy0, wy1, _ = s._y
    cols = slice(s._xlo, s._xhi)
    rows = data[:, y0, cols] * wy0[None, :, None] + data[:, y1, cols] * wy1[None, :, None]
    full = rows[:, :, s._x0] * s._x[2] + rows[:, :, s._x1] * s._x[3]
    region = s.bilinear_ok if weight is None else s.total > 1e-5
    out = np.where(region, full.reshape(b, -1), np.float32(np.nan)).astype(np.float32)
    if weight is not None:
        weight.reshape(b, -1)[:] = np.where(region, s.total, np.float32(0))
    return out.reshape(b, *s.shape)


@pytest.mark.parametrize("resampling", [R.bilinear, R.nearest])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("beyond_edge", [False, True])
def test_separable_sampler_is_bit_identical_to_the_written_out_kernel(
    resampling, with_weight, beyond_edge
) -> None:
    """Both the usual case (the sample wholly inside the read window: no footprint mask is
    applied) and a sample reaching past the window's edge give the reference's bits."""
    rng = np.random.default_rng(11)
    data = rng.normal(1000, 200, (4, 40, 80)).astype(np.float32)
    shift = -2.2 if beyond_edge else 3.3
    rows = (np.arange(60) + 0.5) * 0.5 + shift
    cols = (np.arange(90) + 0.5) * 0.5 + shift + 10
    s = SeparableSampler(rows, cols, (40, 80))
    w = np.zeros((4, 60, 90), np.float32) if with_weight else None
    w_ref = np.zeros((4, 60, 90), np.float32) if with_weight else None
    got = s.sample(data, resampling, w, has_nan=False)
    ref = _separable_reference(s, data, resampling, w_ref)
    assert got.tobytes() == ref.tobytes()
    assert np.isnan(got).any() == beyond_edge
    if with_weight:
        assert w is not None and w_ref is not None and w.tobytes() == w_ref.tobytes()


@pytest.mark.parametrize(
    "src_crs, t_src",
    [
        (32633, Affine(20.0, 0, 600000.0, 0, -20.0, 5000000.0)),  # axis-aligned: separable
        (32633, Affine(60.0, 0, 599820.0, 0, -60.0, 5000180.0)),
        (4326, Affine(0.0003, 0, 14.0, 0, -0.0003, 45.2)),  # geographic: the general sampler
    ],
)
def test_point_sampler_coordinates_are_the_full_fields(src_crs: int, t_src: Affine) -> None:
    """The sampler's coordinates are the interpolated coordinate field of
    :func:`source_coords` to the bit, whichever path is chosen from the lattice (the
    separable one builds only its first column and row)."""
    grid = TargetGrid(32633, Affine(10.0, 0, 600105.0, 0, -10.0, 4999895.0), 264, 264)
    if src_crs == 4326:
        lon, lat = Transformer.from_crs(32633, 4326, always_xy=True).transform(601425, 4998575)
        t_src = Affine(0.0003, 0, lon - 0.03, 0, -0.0003, lat + 0.03)
    src = RasterWindow(
        data=np.zeros((400, 400), np.float32), crs=CRS.from_epsg(src_crs), transform=t_src
    )
    rows, cols, _ = source_coords(src, grid)
    sampler = point_sampler(src, grid)
    if isinstance(sampler, SeparableSampler):
        assert src_crs != 4326
        assert sampler._rows.tobytes() == rows[:, 0].tobytes()
        assert sampler._cols.tobytes() == cols[0, :].tobytes()
    else:
        assert isinstance(sampler, PointSampler) and src_crs == 4326
        assert sampler._r.tobytes() == rows.ravel().tobytes()
        assert sampler._c.tobytes() == cols.ravel().tobytes()
        # the same field again (cached lattice projection): the same bits
        again = point_sampler(src, grid)
        assert isinstance(again, PointSampler) and again._r.tobytes() == sampler._r.tobytes()
