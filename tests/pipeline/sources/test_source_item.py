"""Real STAC items of every collection map onto the item model (band keys, proj, times...)."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from terraloom.pipeline.sources.base import (
    SourceError,
    item_from_stac,
    matches_query,
    parse_time_range,
    s3_to_https,
)
from terraloom.pipeline.sources.static import StaticSource
from terraloom.schemas.modalities import get_modality
from terraloom.schemas.tables import SCENE


def _items(real_dir, provider: str, collection: str) -> dict:
    src = StaticSource(real_dir / "stac" / provider / f"{collection}.json")
    return {it.id: it for it in src.items(collection)}


def test_every_fixture_item_parses(real_dir) -> None:
    src = StaticSource(str(real_dir / "stac" / "*" / "*.json"))
    counts = {c: len(src.items(c)) for c in src.collections()}
    # README: es l2a 7 + pc l2a 5, es l1c 5, grd 3 + 2, rtc 5, dem 10 + 4, lulc 1 + 4, worldcover 1
    assert counts == {
        "cop-dem-glo-30": 14,
        "esa-worldcover": 1,
        "io-lulc-9-class": 1,
        "io-lulc-annual-v02": 4,
        "sentinel-1-grd": 5,
        "sentinel-1-rtc": 5,
        "sentinel-2-l1c": 5,
        "sentinel-2-l2a": 12,
    }
    for it in src.items():
        assert it.datetime.tzinfo is not None
        # Every scene converts to the plan's SCENE struct.
        if it.modality:
            pa.array([it.to_scene(it.modality)], type=SCENE)


def test_earth_search_s2_l2a(real_dir) -> None:
    it = _items(real_dir, "es", "sentinel-2-l2a")["S2B_20EPT_20250731_0_L2A"]
    assert it.modality == "S2L2A"
    assert it.datetime == datetime(2025, 7, 31, 13, 19, 22, 930000, tzinfo=UTC)
    assert it.cloud_cover == pytest.approx(26.02542)
    assert it.epsg == 32720  # from proj:code
    assert (it.platform, it.mgrs_tile, it.processing_baseline) == ("sentinel-2b", "20EPT", "05.11")
    assert set(it.assets) == set(get_modality("S2L2A").band_names) | {"SCL"}
    red, b01, scl = it.assets["B04"], it.assets["B01"], it.assets["SCL"]
    assert (
        red.key == "red"
        and red.href.endswith("/B04.tif")
        and red.href.startswith("https://sentinel-cogs.s3.us-west-2")
    )
    # raster:bands declares offset -0.1, but earthsearch:boa_offset_applied says the DN
    # already lost it: the plan records what the DN means (offset 0)
    assert (red.scale, red.offset, red.nodata) == (0.0001, 0.0, 0.0)
    assert red.band_index is None
    assert red.transform == (10.0, 0.0, 600000.0, 0.0, -10.0, 3300040.0) and red.shape == (
        10980,
        10980,
    )
    assert b01.key == "coastal" and b01.transform[0] == 60.0 and b01.shape == (1830, 1830)
    assert scl.key == "scl" and scl.epsg == 32720
    assert it.assets["B8A"].key == "nir08"
    assert it.missing_bands("S2L2A") == ()


def test_earth_search_l1c_has_b10_and_no_scl(real_dir) -> None:
    it = _items(real_dir, "es", "sentinel-2-l1c")["S2B_24MWV_20250731_0_L1C"]
    assert it.modality == "S2L1C"
    assert it.assets["B10"].key == "cirrus"
    assert "SCL" not in it.assets
    assert it.missing_bands("S2L1C") == ()
    # L1C hrefs are s3:// in the JSON (requester-pays bucket); rewritten to https
    assert (
        it.assets["B02"].href
        == "https://sentinel-s2-l1c.s3.eu-central-1.amazonaws.com/tiles/24/M/WV/2025/7/31/0/B02.jp2"
    )


def test_planetary_computer_s2_l2a(real_dir) -> None:
    it = _items(real_dir, "pc", "sentinel-2-l2a")[
        "S2B_MSIL2A_20250312T014549_R074_T53NKG_20250312T041213"
    ]
    assert it.assets["B04"].key == "B04" and it.assets["SCL"].key == "SCL"
    assert it.epsg == 32653
    assert (it.orbit_state, it.relative_orbit, it.mgrs_tile) == ("descending", 74, "53NKG")
    assert it.processing_baseline == "05.11"  # from the product name in the hrefs
    assert it.platform == "sentinel-2b"  # normalised case ("Sentinel-2B" on PC)
    assert it.assets["B04"].href.startswith("https://sentinel2l2a01.blob.core.windows.net/")


def test_grd_has_no_epsg_and_needs_gcps(real_dir) -> None:
    es = _items(real_dir, "es", "sentinel-1-grd")
    for it in es.values():
        # Earth Search claims proj:code EPSG:4326 for radar-geometry pixels: not trusted.
        assert it.epsg is None and it.needs_gcps
        assert all(a.epsg is None and a.transform is None for a in it.assets.values())
        assert it.polarizations == ("HH",) and it.missing_bands("S1GRD") == ("VV", "VH")
        assert it.orbit_state == "ascending" and it.relative_orbit == 56
    hh = next(iter(es.values())).assets["HH"]
    assert hh.href.startswith(
        "https://sentinel-s1-l1c.s3.eu-central-1.amazonaws.com/GRD/"
    )  # from storage:schemes
    pc = _items(real_dir, "pc", "sentinel-1-grd")[
        "S1A_IW_GRDH_1SDV_20250312T052236_20250312T052301_058267_073394"
    ]
    assert pc.needs_gcps and pc.epsg is None
    assert pc.missing_bands("S1GRD") == ()
    assert (
        pc.assets["VV"].key == "vv" and pc.orbit_state == "descending" and pc.relative_orbit == 95
    )
    # PC writes end_datetime with a space separator
    assert pc.end_datetime == datetime(2025, 3, 12, 5, 23, 1, 601759, tzinfo=UTC)


def test_rtc_dem_lulc(real_dir) -> None:
    rtc = _items(real_dir, "pc", "sentinel-1-rtc")[
        "S1A_IW_GRDH_1SDV_20250311T044231_20250311T044249_058252_073302_rtc"
    ]
    assert rtc.epsg == 32634 and not rtc.needs_gcps
    assert rtc.assets["VV"].transform == (
        10.0,
        0.0,
        180600.0,
        0.0,
        -10.0,
        3408040.0,
    )  # 9-element proj:transform
    assert rtc.assets["VH"].nodata == -32768.0

    for provider in ("es", "pc"):
        dem = next(iter(_items(real_dir, provider, "cop-dem-glo-30").values()))
        assert dem.modality == "DEM" and dem.epsg == 4326
        assert dem.assets["elevation"].key == "data"
    es_dem = next(iter(_items(real_dir, "es", "cop-dem-glo-30").values()))
    assert es_dem.assets["elevation"].href.startswith(
        "https://copernicus-dem-30m.s3.eu-central-1.amazonaws.com/"
    )

    lulc = _items(real_dir, "pc", "io-lulc-9-class")["60W-2022"]
    assert lulc.modality == "LULC" and lulc.year == 2022  # datetime null: start_datetime
    assert lulc.epsg == 32660 and lulc.assets["class"].nodata == 0.0
    annual = _items(real_dir, "pc", "io-lulc-annual-v02")["60W-2023"]
    assert annual.modality == "LULC" and annual.year == 2023  # served through the alias table

    wc = next(iter(_items(real_dir, "pc", "esa-worldcover").values()))
    # another legend, mapped onto LULC's by the registry's convention; its asset is "map"
    assert wc.modality == "LULC" and wc.year == 2021
    assert set(wc.assets) == {"class"} and wc.assets["class"].key == "map"
    assert wc.assets["class"].nodata == 0.0 and wc.assets["class"].band_index is None


def test_static_catalog_relative_hrefs_become_absolute(real_dir) -> None:
    src = StaticSource(real_dir / "s2l2a_croatia")
    items = {it.id: it for it in src.items()}
    assert set(items) == {
        "S2A_33TWL_20230815_0_L2A",
        "S2B_33TWL_20230820_0_L2A",
        "S2A_33TWM_20230815_0_L2A",
    }
    it = items["S2A_33TWL_20230815_0_L2A"]
    local = it.assets["B04"].href
    assert local.startswith("file:///") and local.endswith("S2A_33TWL_20230815_0_L2A/B04.tif")
    assert it.assets["SCL"].href.endswith("/SCL.tif")
    # Bands without local files keep their remote hrefs (the build reports them unreachable).
    assert it.assets["B11"].href.startswith("https://sentinel-cogs.s3.us-west-2.amazonaws.com/")
    assert it.relative_orbit == 79 and it.processing_baseline == "05.09"


def test_items_pickle_for_distributed_workers(real_dir) -> None:
    it = next(iter(_items(real_dir, "es", "sentinel-2-l2a").values()))
    back = pickle.loads(pickle.dumps(it))
    assert back == it and dict(back.assets) == dict(it.assets) and back.geometry.equals(it.geometry)
    assert back.properties["eo:cloud_cover"] == it.cloud_cover


def test_helpers() -> None:
    assert (
        s3_to_https("s3://sentinel-cogs/a/b.tif")
        == "https://sentinel-cogs.s3.us-west-2.amazonaws.com/a/b.tif"
    )
    assert s3_to_https("s3://some-bucket/k") == "https://some-bucket.s3.amazonaws.com/k"
    assert s3_to_https("https://x/y") == "https://x/y"
    props = {"eo:cloud_cover": 12.0, "platform": "sentinel-2a"}
    assert matches_query(props, {"eo:cloud_cover": {"lt": 20}})
    assert not matches_query(props, {"eo:cloud_cover": {"lt": 10}})
    assert matches_query(props, {"platform": {"in": ["sentinel-2a", "sentinel-2b"]}})
    assert not matches_query({}, {"eo:cloud_cover": {"lt": 10}})
    t0, t1 = parse_time_range("2023-06-01/2023-06-30")
    assert t0 == datetime(2023, 6, 1, tzinfo=UTC) and t1.day == 30 and t1.hour == 23
    for bad in ["2023-06-01", "2023-06-30/2023-06-01", "x/y"]:
        with pytest.raises(ValueError):
            parse_time_range(bad)
    with pytest.raises(SourceError):
        item_from_stac(
            {"id": "a", "properties": {"datetime": "2023-01-01T00:00:00Z"}, "assets": {}}
        )  # no collection
    with pytest.raises(SourceError):  # a relative href without a location to resolve against
        item_from_stac(
            json.loads(
                '{"id": "a", "collection": "cop-dem-glo-30", "geometry": {"type": "Point", "coordinates": [0, 0]},'
                ' "properties": {"datetime": "2021-01-01T00:00:00Z"}, "assets": {"data": {"href": "x.tif"}}}'
            )
        )


def test_stac_1_1_bands_spelling_reads_like_raster_bands() -> None:
    """STAC 1.1 items carry nodata/scale/offset in ``bands`` with ``raster:`` prefixes."""

    def item(asset: dict) -> dict:
        return {
            "id": "dem",
            "collection": "cop-dem-glo-30",
            "geometry": {"type": "Point", "coordinates": [15.0, 45.0]},
            "properties": {"datetime": "2021-04-22T00:00:00Z", "proj:code": "EPSG:4326"},
            "assets": {"data": {"href": "https://example.org/dem.tif", **asset}},
        }

    legacy = item({"raster:bands": [{"nodata": -32767, "scale": 2.0, "offset": -0.5}]})
    v11 = item({"bands": [{"nodata": -32767, "raster:scale": 2.0, "raster:offset": -0.5}]})
    asset_level = item({"nodata": -32767, "raster:scale": 2.0, "raster:offset": -0.5})
    got = [item_from_stac(d).assets["elevation"] for d in (legacy, v11, asset_level)]
    assert [(a.nodata, a.scale, a.offset) for a in got] == [(-32767.0, 2.0, -0.5)] * 3


def _stack_item(assets: dict, props: dict | None = None) -> dict:
    return {
        "type": "Feature",
        "id": "stack",
        "collection": "sentinel-2-l2a",
        "bbox": [15, 45, 16, 46],
        "geometry": {"type": "Polygon", "coordinates": [[[15, 45], [16, 45], [16, 46], [15, 45]]]},
        "properties": {"datetime": "2023-07-15T10:00:00Z", **(props or {})},
        "assets": assets,
    }


def test_a_multi_band_asset_gives_each_band_its_index_and_its_raster_band() -> None:
    """One asset listing bands (eo:bands order = file band order); each band's nodata and
    scale come from its own raster:bands entry; a true-colour rendering is never a band."""
    stack = {
        "href": "https://example.com/stack.tif",
        "eo:bands": [{"name": "B02"}, {"name": "red", "common_name": "red"}, {"name": "B08"}],
        "raster:bands": [
            {"nodata": 0, "scale": 1e-4, "offset": -0.1},
            {"nodata": 1, "scale": 2e-4, "offset": -0.1},
            {"nodata": 2, "scale": 1e-4, "offset": -0.1},
        ],
    }
    visual = {"href": "https://example.com/tci.tif", "eo:bands": [{"name": "B03"}, {"name": "B04"}]}
    it = item_from_stac(_stack_item({"image": stack, "visual": visual}))
    got = {b: (a.key, a.band_index, a.nodata, a.scale) for b, a in it.assets.items()}
    assert got == {
        "B02": ("image", 1, 0.0, 1e-4),
        "B04": ("image", 2, 1.0, 2e-4),  # by common name (the registry's B04 is "red")
        "B08": ("image", 3, 2.0, 1e-4),
    }
    assert "B03" not in it.assets  # only in the visual rendering
    assert it.to_scene("S2L2A")["assets"][0]["band_index"] == 1
    single = item_from_stac(
        _stack_item({"B04": {"href": "https://example.com/x.tif", "eo:bands": [{"name": "B04"}]}})
    )
    assert single.assets["B04"].band_index is None  # one-band list: the file tells


def test_s2_assets_record_what_their_dn_means() -> None:
    """scale/offset of S2 assets: raster:bands, ESA's baseline rule without them, and
    offset 0 where Earth Search says it already removed it."""
    a = {"href": "https://example.com/B04.tif"}
    rb = {**a, "raster:bands": [{"scale": 1e-4, "offset": -0.1}]}
    cases = [
        ({"B04": rb}, {"s2:processing_baseline": "05.09"}, (1e-4, -0.1)),
        ({"B04": rb}, {"earthsearch:boa_offset_applied": True}, (1e-4, 0.0)),
        ({"B04": a}, {"s2:processing_baseline": "05.00"}, (1e-4, -0.1)),
        ({"B04": a}, {"s2:processing_baseline": "02.14"}, (1e-4, 0.0)),
    ]
    for assets, props, want in cases:
        b04 = item_from_stac(_stack_item(assets, props)).assets["B04"]
        assert (b04.scale, b04.offset) == pytest.approx(want), props


@pytest.mark.parametrize(
    "href",
    [
        "https://a/b.tif",
        "s3://bucket/key.tif",
        "git+ssh://host/x",
        "a.b-c+d://x",
        "/vsis3/b/k.tif",
        "/data/x.tif",
        "rel/x.tif",
        "./x.tif",
        "../up/x.tif",
        " https://a/leading-space.tif",
        "ht\ttps://a/tab-inside-scheme.tif",
        "C:/windows/drive.tif",
        "1http://digit-first",
        "http:no-slashes.tif",
        "x.tif?sig=a:b",
    ],
)
def test_asset_href_resolution_agrees_with_urlparse(href: str) -> None:
    """The regex fast path of href resolution gives what the urlparse rule gives."""
    from urllib.parse import urljoin, urlparse

    from terraloom.pipeline.sources.stac_items import _absolute

    base = "https://host/catalog/item.json"
    scheme = urlparse(href).scheme
    if scheme and len(scheme) > 1:
        expected = href
    elif href.startswith("/"):
        expected = "file://" + href
    else:
        expected = urljoin(base, href)
    assert _absolute(href, base) == expected
