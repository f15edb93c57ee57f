"""Cross-modal relations measured on the generated files (what a model will learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from world_testkit import items, pixel_lonlat, read, valid_pixels

from terraloom.pipeline.world import World
from terraloom.pipeline.world.landscape import CROPS, SNOW, TREES, WATER

CLOUDY_SCL = (3, 8, 9, 10)


def _clear_l2a(tiny_dir: Path) -> list[dict]:
    it = [i for i in items(tiny_dir, "sentinel-2-l2a") if i["properties"]["eo:cloud_cover"] < 10]
    assert it, "each region has a clear acquisition"
    return it


def test_ndvi_high_over_vegetation_in_season_negative_over_water(
    tiny_dir: Path, tiny: World
) -> None:
    ndvi_by: dict[int, list[np.ndarray]] = {TREES: [], CROPS: [], WATER: []}
    for item in _clear_l2a(tiny_dir):
        red, tr, epsg, nod = read(item, "B04")
        nir, *_ = read(item, "B08")
        scl, *_ = read(item, "SCL")
        r, c = valid_pixels(red, nod, 3000)
        cloudy = np.isin(scl[r // 2, c // 2], CLOUDY_SCL)
        r, c = r[~cloudy], c[~cloudy]
        rho_r = (red[r, c].astype(float) - 1000) / 1e4
        rho_n = (nir[r, c].astype(float) - 1000) / 1e4
        ndvi = (rho_n - rho_r) / (rho_n + rho_r)
        lon, lat = pixel_lonlat(tr, epsg, r, c)
        cls = tiny.truth("CLASS", lon, lat)[0]
        for k in ndvi_by:
            ndvi_by[k].append(ndvi[cls == k])
    trees, crops, water = (np.concatenate(ndvi_by[k]) for k in (TREES, CROPS, WATER))
    assert len(trees) > 200 and len(crops) > 100 and len(water) > 20
    assert np.median(trees) > 0.65
    assert np.median(crops) > 0.5
    assert np.median(water) < 0 and np.mean(water < 0) > 0.95


def test_cross_polarisation_ratio_lower_over_water_than_forest(tiny_dir: Path, tiny: World) -> None:
    ratio: dict[int, list[np.ndarray]] = {WATER: [], TREES: []}
    for item in items(tiny_dir, "sentinel-1-rtc"):
        vv, tr, epsg, nod = read(item, "vv")
        vh, *_ = read(item, "vh")
        r, c = valid_pixels(vv, nod, 6000)
        lon, lat = pixel_lonlat(tr, epsg, r, c)
        cls = tiny.truth("CLASS", lon, lat)[0]
        db = 10 * np.log10(vh[r, c] / vv[r, c])
        for k in ratio:
            ratio[k].append(db[cls == k])
    water, forest = np.concatenate(ratio[WATER]), np.concatenate(ratio[TREES])
    assert len(water) > 50 and len(forest) > 500
    assert np.mean(water) < np.mean(forest) - 2.0  # dB


def test_snow_only_above_the_regional_snow_line(tiny_dir: Path, tiny: World) -> None:
    alps = tiny.region("alps")
    assert alps.snow_line_m is not None
    n_snow = 0
    for item in items(tiny_dir, "io-lulc-9-class"):
        a, tr, epsg, _ = read(item, "data")
        r, c = np.nonzero(a == SNOW)
        if len(r) == 0:
            continue
        sel = np.random.default_rng(0).choice(len(r), min(2000, len(r)), replace=False)
        lon, lat = pixel_lonlat(tr, epsg, r[sel], c[sel])
        elev = tiny.truth("DEM", lon, lat)[0]
        assert np.all(elev >= alps.snow_line_m)
        n_snow += len(r)
    assert n_snow > 100
    # and the DEM files agree: high pixels exist only in the mountain region
    for r_ in tiny.regions:
        if r_.snow_line_m is None:
            lon = np.linspace(r_.bbox[0], r_.bbox[2], 50)
            lat = np.linspace(r_.bbox[1], r_.bbox[3], 50)
            cls = tiny.truth("CLASS", *np.meshgrid(lon, lat))[0]
            assert not np.any(cls == SNOW)


def test_l1c_brighter_than_l2a_in_blue(tiny_dir: Path) -> None:
    l2a = {
        (i["properties"]["s2:mgrs_tile"], i["properties"]["datetime"]): i
        for i in items(tiny_dir, "sentinel-2-l2a")
    }
    pairs = 0
    for item in items(tiny_dir, "sentinel-2-l1c"):
        key = (item["properties"]["s2:mgrs_tile"], item["properties"]["datetime"])
        toa, *_ = read(item, "B02")
        boa, *_ = read(l2a[key], "B02")
        ok = boa > 0
        assert np.all(toa[ok] > boa[ok])
        assert np.median(toa[ok].astype(float) - boa[ok]) > 300
        pairs += 1
    assert pairs > 0


def test_cloud_cover_matches_scl_and_varies_per_acquisition(tiny_dir: Path) -> None:
    covers = {}
    for item in items(tiny_dir, "sentinel-2-l2a"):
        scl, *_ = read(item, "SCL")
        valid = scl > 0
        cloudy = np.isin(scl, (8, 9, 10)) & valid
        p = item["properties"]
        assert abs(100.0 * cloudy.sum() / valid.sum() - p["eo:cloud_cover"]) < 1e-4
        assert abs(100.0 * (scl == 3).sum() / valid.sum() - p["s2:cloud_shadow_percentage"]) < 1e-4
        covers.setdefault(p["s2:mgrs_tile"], set()).add(round(p["eo:cloud_cover"], 3))
    assert any(len(v) > 1 for v in covers.values()), "clouds change between acquisitions"


def test_grd_brighter_on_slopes_facing_the_radar(tiny: World) -> None:
    """sigma0 (GRD, not terrain-flattened) / gamma0 (RTC) rises with the slope towards the sensor."""
    from terraloom.pipeline.world.regions import transformer
    from terraloom.pipeline.world.sensors import look_geometry

    m = tiny.models["alps"]
    rng = np.random.default_rng(2)
    x = rng.uniform(*m.frame.data_rect[0::2], 4000) * 0.9
    y = rng.uniform(*m.frame.data_rect[1::2], 4000) * 0.9
    lon, lat = transformer(m.frame.epsg, 4326).transform(
        x + m.frame.origin[0], y + m.frame.origin[1]
    )
    t = tiny.region("alps").s1_datetimes[0]
    ratio = tiny.truth("S1GRD", lon, lat, t)[0] / tiny.truth("S1RTC", lon, lat, t)[0]
    from terraloom.pipeline.world.noise import Points

    ter = m.landscape.terrain(Points(x, y), grad=True)
    look = look_geometry(m.landscape, m.s1_acquisition(t).orbit_state)
    facing = (
        ter["hx"] * look.u_rg[0] + ter["hy"] * look.u_rg[1]
    )  # terrain rising away from the sensor
    assert np.corrcoef(facing, np.log(ratio))[0, 1] > 0.7
