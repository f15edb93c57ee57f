"""Ground truth: a COG pixel centre and ``truth()`` at its map coordinates agree to the noise
level for every collection (GRD pixels located through their GCPs only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import GCPTransformer
from scipy import stats
from world_testkit import items, pixel_lonlat, read, valid_pixels

from terraloom.pipeline.world import World
from terraloom.pipeline.world.grids import radar_grids
from terraloom.pipeline.world.sensors import (
    S1_ENL,
    S2_BANDS_L1C,
    S2_BANDS_L2A,
    S2_NOISE_DN,
    look_geometry,
)

S2_TOL = 1.5 + 6 * S2_NOISE_DN  # rounding, float32 and < 2 cm block-affine shifts, + 6 sigma
LOG_GAMMA_MEAN = float(stats.gamma(S1_ENL, scale=1 / S1_ENL).expect(np.log))
GAMMA_LO, GAMMA_HI = stats.gamma(S1_ENL, scale=1 / S1_ENL).ppf([1e-6, 1 - 1e-6])


def _spread(all_items: list[dict], n: int) -> list[dict]:
    return all_items[:: max(1, len(all_items) // n)]


@pytest.mark.parametrize(
    ("coll", "modality", "bands"),
    [("sentinel-2-l2a", "S2L2A", S2_BANDS_L2A), ("sentinel-2-l1c", "S2L1C", S2_BANDS_L1C)],
)
def test_s2_pixels_equal_truth_to_noise(
    tiny_dir: Path, tiny: World, coll: str, modality: str, bands: tuple[str, ...]
) -> None:
    n = 0
    for item in _spread(items(tiny_dir, coll), 5):
        t = item["properties"]["datetime"]
        for key in ("B02", "B8A", "B09", "B11") + (("B10",) if "B10" in bands else ()):
            a, tr, epsg, nod = read(item, key)
            r, c = valid_pixels(a, nod, 600)
            lon, lat = pixel_lonlat(tr, epsg, r, c)
            truth = tiny.truth(modality, lon, lat, t)[bands.index(key)]
            err = np.abs(a[r, c] - truth)
            # exact up to noise; a pixel centre within float rounding of a class edge may flip
            assert np.mean(err <= S2_TOL) > 0.998, (item["id"], key, np.sort(err)[-5:])
            n += len(r)
    assert n > 5000


def test_scl_and_lulc_classes_equal_truth(tiny_dir: Path, tiny: World) -> None:
    for item in _spread(items(tiny_dir, "sentinel-2-l2a"), 6):
        a, tr, epsg, nod = read(item, "SCL")
        r, c = valid_pixels(a, nod, 1500)
        lon, lat = pixel_lonlat(tr, epsg, r, c)
        assert (
            np.mean(tiny.truth("SCL", lon, lat, item["properties"]["datetime"])[0] == a[r, c])
            > 0.998
        )
    seen = set()
    for item in items(tiny_dir, "io-lulc-9-class"):
        a, tr, epsg, nod = read(item, "data")
        r, c = valid_pixels(a, nod, 1500)
        if len(r) == 0:
            continue
        lon, lat = pixel_lonlat(tr, epsg, r, c)
        assert np.mean(tiny.truth("LULC", lon, lat)[0] == a[r, c]) > 0.998
        seen |= set(np.unique(a[r, c]).tolist())
    assert seen <= {1, 2, 4, 5, 7, 8, 9, 10, 11} and len(seen) >= 6


def test_dem_pixel_is_point_equals_truth(tiny_dir: Path, tiny: World) -> None:
    for item in _spread(items(tiny_dir, "cop-dem-glo-30"), 8):
        with rasterio.open(item["_dir"] / item["assets"]["data"]["href"]) as ds:
            a, tr = ds.read(1), ds.transform
        r, c = valid_pixels(a, None, 500)
        # pixel-is-point: the transform is corner-based, centres are on whole arc-seconds
        lon = tr.c + (c + 0.5) * tr.a
        lat = tr.f + (r + 0.5) * tr.e
        assert np.allclose(np.round(lon * 3600), lon * 3600, atol=1e-6)
        err = a[r, c] - tiny.truth("DEM", lon, lat)[0]
        assert np.mean(np.abs(err) < 1.5) > 0.999 and abs(np.mean(err)) < 0.1


def _speckle_ok(ratio: np.ndarray) -> None:
    assert np.mean((ratio > GAMMA_LO) & (ratio < GAMMA_HI)) > 0.999
    assert abs(np.mean(np.log(ratio)) - LOG_GAMMA_MEAN) < 0.04  # 0.17 dB


def test_rtc_pixels_equal_truth_to_speckle(tiny_dir: Path, tiny: World) -> None:
    for item in _spread(items(tiny_dir, "sentinel-1-rtc"), 3):
        t = item["properties"]["datetime"]
        for j, pol in enumerate(("vv", "vh")):
            a, tr, epsg, nod = read(item, pol)
            r, c = valid_pixels(a, nod, 3000)
            lon, lat = pixel_lonlat(tr, epsg, r, c)
            _speckle_ok(a[r, c] / tiny.truth("S1RTC", lon, lat, t)[j])


def test_grd_pixels_located_through_gcps_equal_truth(tiny_dir: Path, tiny: World) -> None:
    for item in _spread(items(tiny_dir, "sentinel-1-grd"), 4):
        p = item["properties"]
        with rasterio.open(item["_dir"] / item["assets"]["vv"]["href"]) as ds:
            vv, (gcps, _) = ds.read(1), ds.gcps
        with rasterio.open(item["_dir"] / item["assets"]["vh"]["href"]) as ds:
            vh = ds.read(1)
        r, c = valid_pixels(vv, 0.0, 3000)
        lon, lat = GCPTransformer(gcps, tps=True).xy(r, c, offset="center")
        lon, lat = np.asarray(lon), np.asarray(lat)
        truth = tiny.truth("S1GRD", lon, lat, p["datetime"])
        _speckle_ok(vv[r, c] / truth[0])
        _speckle_ok(vh[r, c] / truth[1])
        # the GCP warp lands within 0.25 px of the generator's radar geometry
        region = next(x for x in tiny.regions if x.bbox[0] - 0.5 < lon.mean() < x.bbox[2] + 0.5)
        m = tiny.models[region.name]
        grids = radar_grids(
            m.frame, look_geometry(m.landscape, p["sat:orbit_state"]), p["sat:orbit_state"]
        )
        rg = grids[int(p["s1:slice_number"]) - 1]
        ex, ey = rg.corner_xy(r + 0.5, c + 0.5)
        gx, gy = m.frame.from_crs(4326, lon, lat)
        assert np.max(np.hypot(gx - ex, gy - ey)) < 2.5


def test_truth_outside_the_world_is_nan_and_shapes_follow_input(tiny: World) -> None:
    lon = np.array([[0.0, 0.0], [tiny.regions[0].bbox[0] + 0.01, 1.0]])
    lat = np.array([[0.0, 0.0], [tiny.regions[0].bbox[1] + 0.01, 1.0]])
    v = tiny.truth("S2L2A", lon, lat, tiny.regions[0].s2_datetimes[0])
    assert v.shape == (12, 2, 2)
    assert np.isnan(v[:, 0, 0]).all() and np.isfinite(v[:, 1, 0]).all()
    with pytest.raises(ValueError, match="unknown modality"):
        tiny.truth("S3OLCI", lon, lat, "2023-06-01")
    with pytest.raises(ValueError, match="needs a time"):
        tiny.truth("S1RTC", lon, lat)


def test_truth_grid_matches_pointwise_truth(tiny: World) -> None:
    """The fast path for a whole 264 px sample grid agrees with point-wise truth."""
    from terraloom.pipeline.world.regions import transformer

    region = tiny.region("parana")
    lon_c = (region.bbox[0] + region.bbox[2]) / 2
    lat_c = (region.bbox[1] + region.bbox[3]) / 2
    x, y = transformer(4326, region.frame_epsg).transform(lon_c, lat_c)
    transform = (10.0, 0.0, round(x / 10) * 10 - 1320.0, 0.0, -10.0, round(y / 10) * 10 + 1320.0)
    t = region.s2_datetimes[0]
    fast = tiny.truth_grid("S2L2A", region.frame_epsg, transform, (264, 264), t)
    assert fast.shape == (12, 264, 264) and np.isfinite(fast).all()
    rows = np.array([0, 17, 131, 263])
    cols = np.array([5, 200, 64, 263])
    xs = transform[2] + (cols + 0.5) * 10.0
    ys = transform[5] - (rows + 0.5) * 10.0
    lon, lat = transformer(region.frame_epsg, 4326).transform(xs, ys)
    slow = tiny.truth("S2L2A", np.asarray(lon), np.asarray(lat), t)
    np.testing.assert_allclose(fast[:, rows, cols], slow, atol=1e-3)
