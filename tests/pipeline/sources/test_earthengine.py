"""Earth Engine source: metadata mapping against a recorded answer; clear error without credentials.

Earth Engine needs Google credentials and network, which tests do not have, so the source is
given a *recorded client*: it replays the JSON ``ImageCollection.getInfo()`` returned (image
descriptions in Earth Engine's own format, abridged to the bands and properties terraloom
reads). This is the only mock of the planning tests, and it replaces only Google's servers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from terraloom.pipeline.grid import Region
from terraloom.pipeline.plan import PlanConfig, plan_samples
from terraloom.pipeline.sources.base import SourceError
from terraloom.pipeline.sources.earthengine import (
    EarthEngineSource,
    ImageListing,
    PixelRequest,
    item_from_ee,
    pixel_grid,
)
from terraloom.schemas.modalities import EARTH_ENGINE, ee_to_corpus

# 2023-08-15, tile 33TWL: timestamps in ms, footprints as LinearRing, crs_transform per band.
_S2_BANDS = [
    {
        "id": "B1",
        "crs": "EPSG:32633",
        "crs_transform": [60, 0, 499980, 0, -60, 5100000],
        "dimensions": [1830, 1830],
    },
    *[
        {
            "id": b,
            "crs": "EPSG:32633",
            "crs_transform": [10, 0, 499980, 0, -10, 5100000],
            "dimensions": [10980, 10980],
        }
        for b in ("B2", "B3", "B4", "B8")
    ],
    *[
        {
            "id": b,
            "crs": "EPSG:32633",
            "crs_transform": [20, 0, 499980, 0, -20, 5100000],
            "dimensions": [5490, 5490],
        }
        for b in ("B5", "B6", "B7", "B8A", "B11", "B12", "SCL")
    ],
    {
        "id": "B9",
        "crs": "EPSG:32633",
        "crs_transform": [60, 0, 499980, 0, -60, 5100000],
        "dimensions": [1830, 1830],
    },
    {
        "id": "QA60",
        "crs": "EPSG:32633",
        "crs_transform": [60, 0, 499980, 0, -60, 5100000],
        "dimensions": [1830, 1830],
    },
]
_TWL = [
    [14.9998, 45.0653],
    [16.3942, 45.0568],
    [16.4189, 46.0448],
    [14.9998, 46.0536],
    [14.9998, 45.0653],
]

RECORDED: dict[str, dict[str, Any]] = {
    "COPERNICUS/S2_SR_HARMONIZED": {
        "type": "ImageCollection",
        "id": "COPERNICUS/S2_SR_HARMONIZED",
        "features": [
            {
                "type": "Image",
                "id": f"COPERNICUS/S2_SR_HARMONIZED/{index}",
                "bands": _S2_BANDS,
                "properties": {
                    "system:index": index,
                    "system:time_start": ms,
                    "system:footprint": {"type": "LinearRing", "coordinates": _TWL},
                    "CLOUDY_PIXEL_PERCENTAGE": cloud,
                    "SPACECRAFT_NAME": sat,
                    "MGRS_TILE": "33TWL",
                    "PROCESSING_BASELINE": "05.09",
                    "SENSING_ORBIT_DIRECTION": "DESCENDING",
                    "SENSING_ORBIT_NUMBER": 79,
                },
            }
            for index, ms, cloud, sat in [
                ("20230815T095031_20230815T095630_T33TWL", 1692093491662, 0.2040, "Sentinel-2A"),
                ("20230820T095029_20230820T095629_T33TWL", 1692525491072, 8.0663, "Sentinel-2B"),
            ]
        ],
    },
    "COPERNICUS/S1_GRD": {
        "type": "ImageCollection",
        "features": [
            {
                "type": "Image",
                "id": "COPERNICUS/S1_GRD/S1A_IW_GRDH_1SDV_20230817T050000_20230817T050025_049923_060123_ABCD",
                "bands": [
                    {
                        "id": p,
                        "crs": "EPSG:32633",
                        "crs_transform": [10, 0, 400000, 0, -10, 5200000],
                        "dimensions": [25000, 20000],
                    }
                    for p in ("VV", "VH", "angle")
                ],
                "properties": {
                    "system:time_start": 1692248400000,
                    "system:footprint": {
                        "type": "LinearRing",
                        "coordinates": [
                            [14.0, 44.5],
                            [17.5, 44.5],
                            [17.5, 47.0],
                            [14.0, 47.0],
                            [14.0, 44.5],
                        ],
                    },
                    "orbitProperties_pass": "DESCENDING",
                    "relativeOrbitNumber_start": 22,
                    "platform_number": "A",
                    "transmitterReceiverPolarisation": ["VV", "VH"],
                    "instrumentMode": "IW",
                },
            }
        ],
    },
    "COPERNICUS/DEM/GLO30": {
        "type": "ImageCollection",
        "features": [
            {
                "type": "Image",
                "id": "COPERNICUS/DEM/GLO30/Copernicus_DSM_COG_10_N45_00_E015_00_DEM",
                "bands": [
                    {
                        "id": "DEM",
                        "crs": "EPSG:4326",
                        "crs_transform": [0.000277777777778, 0, 15.0, 0, -0.000277777777778, 46.0],
                        "dimensions": [3600, 3600],
                    }
                ],
                "properties": {
                    "system:time_start": 1293840000000,
                    "system:footprint": {
                        "type": "LinearRing",
                        "coordinates": [
                            [15.0, 45.0],
                            [16.0, 45.0],
                            [16.0, 46.0],
                            [15.0, 46.0],
                            [15.0, 45.0],
                        ],
                    },
                },
            }
        ],
    },
}


class RecordedClient:
    """Replays RECORDED; records the calls it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def list_images(self, q: ImageListing) -> list[dict[str, Any]]:
        self.calls.append(("list_images", (q.ee_id, q.bbox, q.start, q.end)))
        return list(RECORDED.get(q.ee_id, {"features": []})["features"])

    def compute_pixels(self, r: PixelRequest) -> np.ndarray:
        self.calls.append(("compute_pixels", (r.image_id, list(r.bands), r.grid, r.resample)))
        h, w = r.grid["dimensions"]["height"], r.grid["dimensions"]["width"]
        out = np.zeros((h, w), dtype=[(b, "<u2") for b in r.bands])
        for b in r.bands:
            out[b] = 500  # harmonised DN: reflectance 0.05
        return out


def test_s2_image_metadata_maps_to_the_item_model() -> None:
    info = RECORDED["COPERNICUS/S2_SR_HARMONIZED"]["features"][0]
    it = item_from_ee(info, "sentinel-2-l2a")
    assert it.modality == "S2L2A"
    assert it.datetime == datetime(2023, 8, 15, 9, 58, 11, 662000, tzinfo=UTC)
    assert (it.cloud_cover, it.platform, it.mgrs_tile, it.processing_baseline) == (
        0.204,
        "sentinel-2a",
        "33TWL",
        "05.09",
    )
    assert (it.orbit_state, it.relative_orbit, it.epsg, it.needs_gcps) == (
        "descending",
        79,
        32633,
        False,
    )
    assert it.missing_bands("S2L2A") == ()
    b04, b01, scl = it.assets["B04"], it.assets["B01"], it.assets["SCL"]
    assert (b04.key, b01.key, scl.key) == ("B4", "B1", "SCL")
    assert b04.href == "ee://COPERNICUS/S2_SR_HARMONIZED/20230815T095031_20230815T095630_T33TWL"
    assert b04.transform == (10, 0, 499980, 0, -10, 5100000) and b04.shape == (10980, 10980)
    assert b01.transform[0] == 60
    assert "QA60" not in {a.key for a in it.assets.values()}
    assert it.geometry.bounds[0] == pytest.approx(14.9998)


def test_s1_and_dem_metadata() -> None:
    s1 = item_from_ee(RECORDED["COPERNICUS/S1_GRD"]["features"][0], "sentinel-1-grd")
    assert (s1.platform, s1.orbit_state, s1.relative_orbit, s1.polarizations) == (
        "sentinel-1a",
        "descending",
        22,
        ("VV", "VH"),
    )
    assert not s1.needs_gcps and s1.epsg == 32633  # Earth Engine's GRD is orthorectified
    assert s1.assets["VV"].key == "VV" and s1.missing_bands("S1GRD") == ()
    dem = item_from_ee(RECORDED["COPERNICUS/DEM/GLO30"]["features"][0], "cop-dem-glo-30")
    assert dem.modality == "DEM" and dem.epsg == 4326 and dem.assets["elevation"].key == "DEM"
    with pytest.raises(SourceError, match="no Earth Engine mapping"):
        item_from_ee(RECORDED["COPERNICUS/DEM/GLO30"]["features"][0], "sentinel-1-rtc")


def test_search_filters_and_plans_with_the_recorded_client() -> None:
    client = RecordedClient()
    src = EarthEngineSource(client=client)
    region = Region.from_bbox(15.3, 45.5, 15.4, 45.6)
    period = (datetime(2023, 8, 1, tzinfo=UTC), datetime(2023, 8, 31, 23, 59, tzinfo=UTC))
    items = src.search(
        "sentinel-2-l2a", region.geometry, (period[0], datetime(2023, 8, 16, tzinfo=UTC))
    )
    assert [it.id[-38:] for it in items] == [
        "20230815T095031_20230815T095630_T33TWL"
    ]  # date filter
    assert src.search("sentinel-1-rtc", region.geometry, period) == []  # not in Earth Engine
    assert client.calls[0][1][0] == "COPERNICUS/S2_SR_HARMONIZED"

    cfg = PlanConfig(modalities=("S2L2A", "S1GRD", "S1RTC", "DEM"), val_fraction=0.0)
    table = plan_samples(src, region, period, cfg)
    rows = table.to_pylist()
    assert rows
    for r in rows:
        scenes = {s["modality"]: s for s in r["scenes"]}
        # SCL is an ee:// href, not a file: cloud from CLOUDY_PIXEL_PERCENTAGE, clearest wins
        assert scenes["S2L2A"]["item_id"].endswith("20230815T095031_20230815T095630_T33TWL")
        assert scenes["S2L2A"]["cloud_cover"] == pytest.approx(0.204)
        assert scenes["S1GRD"]["item_id"].startswith("COPERNICUS/S1_GRD/")
        assert r["s1_s2_delta_days"] == pytest.approx((1692248400000 - 1692093491662) / 86400000)
        assert scenes["DEM"]["assets"][0]["href"].startswith("ee://COPERNICUS/DEM/GLO30/")
        (miss,) = r["unmatched"]
        assert miss["modality"] == "S1RTC" and "serves no 'sentinel-1-rtc'" in miss["message"]


def test_pixels_are_requested_on_the_sample_grid() -> None:
    client = RecordedClient()
    src = EarthEngineSource(client=client)
    it = item_from_ee(RECORDED["COPERNICUS/S2_SR_HARMONIZED"]["features"][0], "sentinel-2-l2a")
    tf = (10.0, 0.0, 531200.0, 0.0, -10.0, 5040160.0)
    arr = src.fetch_pixels(it, ["B04", "B8A", "SCL"], 32633, tf, 264, 264)
    # (band, y, x) corpus values: harmonised DN 500 -> 1500 on the corpus convention, SCL kept
    assert arr.shape == (3, 264, 264)
    assert (arr[0] == 1500).all() and (arr[1] == 1500).all() and (arr[2] == 500).all()
    calls = [c[1] for c in client.calls if c[0] == "compute_pixels"]
    # the reflectance bands resampled bilinearly by Earth Engine, SCL nearest (its default)
    assert [(c[1], c[3]) for c in calls] == [(["B4", "B8A"], "bilinear"), (["SCL"], None)]
    image_id, _, grid, _ = calls[0]
    assert image_id == it.id
    assert grid == pixel_grid(32633, tf, 264, 264)
    assert grid["crsCode"] == "EPSG:32633"
    assert grid["affineTransform"] == {
        "scaleX": 10.0,
        "shearX": 0.0,
        "translateX": 531200.0,
        "shearY": 0.0,
        "scaleY": -10.0,
        "translateY": 5040160.0,
    }
    # the plan's S2 assets describe the values the build hands on (corpus convention)
    assert (it.assets["B04"].scale, it.assets["B04"].offset) == (0.0001, -0.1)
    assert it.assets["SCL"].scale is None


def test_earth_engine_conventions_map_onto_the_corpus() -> None:
    s2 = EARTH_ENGINE["sentinel-2-l2a"]
    assert s2.collection == "COPERNICUS/S2_SR_HARMONIZED"
    out = ee_to_corpus(s2, "B04", np.array([0, 500, 9000], np.uint16))
    assert np.isnan(out[0]) and list(out[1:]) == [1500.0, 10000.0]  # DN + 1000, 0 nodata
    s1 = EARTH_ENGINE["sentinel-1-grd"]
    assert s1.db and "orthorectified" in s1.holds and s1.modality == "S1GRD"
    power = ee_to_corpus(s1, "VV", np.array([0.05, 0.0, np.nan]))  # answers are linear power
    assert power[0] == pytest.approx(0.05) and np.isnan(power[1:]).all()
    dem = EARTH_ENGINE["cop-dem-glo-30"]
    assert dem.vertical_datum == "EGM2008"
    assert list(np.isnan(ee_to_corpus(dem, "elevation", np.array([-32768.0, 0.0, 812.5])))) == [
        True,
        False,
        False,
    ]
    esri = EARTH_ENGINE["io-lulc-9-class"]
    assert list(ee_to_corpus(esri, "class", np.array([1, 11, 3], np.uint8))[:2]) == [1.0, 11.0]


def test_esa_worldcover_from_earth_engine_maps_its_legend() -> None:
    wc = EARTH_ENGINE["esa-worldcover"]
    assert wc.collection == "ESA/WorldCover/v200" and wc.modality == "LULC"
    mapped = ee_to_corpus(wc, "class", np.array([10, 40, 80, 95, 0, 33], np.uint8))
    assert list(mapped[:4]) == [2.0, 5.0, 1.0, 4.0]  # trees, crops, water, flooded veg.
    assert np.isnan(mapped[4:]).all()  # nodata and a value outside the legend


def test_clear_error_without_credentials(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "EE_SERVICE_ACCOUNT_KEY", "EARTHENGINE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SourceError, match="earthengine authenticate"):
        EarthEngineSource()
