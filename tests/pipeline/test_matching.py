"""Scene matching on items built in code, with real (small, generated) SCL GeoTIFFs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import Polygon, box

from terraloom.pipeline.grid import GRID, SampleGrid, samples_for_cell
from terraloom.pipeline.matching import (
    MatchConfig,
    MatchRequest,
    covering_set,
    match_sample,
    scl_footprint_stats,
)
from terraloom.pipeline.sources.base import SourceAsset, SourceItem
from terraloom.schemas.modalities import SCL_CLOUD_SHADOW, get_modality

T0 = datetime(2023, 7, 1, 10, 0, tzinfo=UTC)
PERIOD = (datetime(2023, 6, 1, tzinfo=UTC), datetime(2023, 8, 31, tzinfo=UTC))
SCL_RES = 20.0


def _sample(lon: float = 15.52, lat: float = 45.53) -> SampleGrid:
    return samples_for_cell(GRID.cell_of(lon, lat), 1)[0]


def _lonlat_poly(epsg: int, x0: float, y0: float, x1: float, y1: float) -> Polygon:
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    xs = np.r_[np.linspace(x0, x1, 9), np.full(9, x1), np.linspace(x1, x0, 9), np.full(9, x0)]
    ys = np.r_[np.full(9, y1), np.linspace(y1, y0, 9), np.full(9, y0), np.linspace(y0, y1, 9)]
    lon, lat = tr.transform(xs, ys)
    return Polygon(zip(lon, lat))


def write_scl(path: Path, epsg: int, x0: float, y1: float, arr: np.ndarray) -> str:
    with rasterio.open(
        path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1, dtype="uint8",
        crs=f"EPSG:{epsg}", transform=from_origin(x0, y1, SCL_RES, SCL_RES), nodata=0,
    ) as ds:  # fmt: skip
        ds.write(arr, 1)
    return path.as_uri()


def s2_item(
    item_id: str,
    when: datetime,
    bounds: tuple[float, float, float, float],
    *,
    epsg: int = 32633,
    collection: str = "sentinel-2-l2a",
    platform: str = "sentinel-2a",
    cloud: float | None = 10.0,
    scl: str | None = None,
    tile: str = "33TWL",
) -> SourceItem:
    modality = "S2L2A" if collection == "sentinel-2-l2a" else "S2L1C"
    assets = {
        b: SourceAsset(b, f"https://example.com/{item_id}/{b}.tif", b, epsg)
        for b in get_modality(modality).band_names
    }
    if scl is not None:
        assets["SCL"] = SourceAsset("SCL", scl, "SCL", epsg)
    geom = _lonlat_poly(epsg, *bounds)
    return SourceItem(
        collection, item_id, when, geom, geom.bounds, modality, cloud_cover=cloud, platform=platform,
        orbit_state="descending", epsg=epsg, mgrs_tile=tile, assets=assets,
    )  # fmt: skip


def s1_item(
    item_id: str, when: datetime, geom: Polygon, orbit: str, *, pols=("VV", "VH"), rel: int = 22
) -> SourceItem:
    assets = {p: SourceAsset(p.lower(), f"https://example.com/{item_id}/{p}.tiff", p) for p in pols}
    return SourceItem(
        "sentinel-1-grd", item_id, when, geom, geom.bounds, "S1GRD", platform="sentinel-1a", orbit_state=orbit,
        relative_orbit=rel, needs_gcps=True, polarizations=tuple(pols), assets=assets,
    )  # fmt: skip


def static_item(
    collection: str,
    modality: str,
    item_id: str,
    geom: Polygon,
    when: datetime,
    start=None,
    end=None,
) -> SourceItem:
    band = get_modality(modality).band_names[0]
    return SourceItem(
        collection, item_id, when, geom, geom.bounds, modality, start_datetime=start, end_datetime=end,
        epsg=4326, assets={band: SourceAsset("data", f"https://example.com/{item_id}.tif", band, 4326)},
    )  # fmt: skip


def tile_around(sample: SampleGrid, margin: float = 4000.0) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = sample.bounds_utm
    return (x0 - margin, y0 - margin, x1 + margin, y1 + margin)


def brute_force_cloud(scl_path: str, sample: SampleGrid) -> float:
    """Cloud % over the footprint counted at every 10 m sample pixel (no resampling shortcut)."""
    with rasterio.open(scl_path) as ds:
        a = ds.read(1)
        x0, y0, x1, y1 = sample.bounds_utm
        xs, ys = np.meshgrid(np.arange(x0 + 5, x1, 10.0), np.arange(y1 - 5, y0, -10.0))
        tx, ty = Transformer.from_crs(sample.epsg, ds.crs.to_epsg(), always_xy=True).transform(
            xs, ys
        )
        cols, rows = ~ds.transform @ (tx.ravel(), ty.ravel())
        v = a[np.floor(rows).astype(int), np.floor(cols).astype(int)]
    v = v[v != 0]
    return 100.0 * np.isin(v, SCL_CLOUD_SHADOW).mean()


def scl_with_cloud(sample: SampleGrid, margin: float, frac_west: float, seed: int) -> np.ndarray:
    """A vegetation SCL with clouds over the western ``frac_west`` of the footprint, plus noise."""
    rng = np.random.default_rng(seed)
    n = int((sample.bounds_utm[2] - sample.bounds_utm[0] + 2 * margin) / SCL_RES)
    arr = np.full((n, n), 4, np.uint8)
    c0 = int(margin / SCL_RES)
    cut = c0 + int(frac_west * (sample.width * 10 / SCL_RES))
    arr[:, c0:cut] = 9
    speckle = rng.random(arr.shape) < 0.02
    arr[speckle] = 8
    return arr


def _request(*mods: str) -> MatchRequest:
    return MatchRequest(mods, PERIOD)


# --- coverage ---------------------------------------------------------------------------------


def test_covering_set_prefers_one_item_and_lists_all_needed() -> None:
    fp = box(0.0, 0.0, 1.0, 1.0)

    def it(name: str, *b: float) -> SourceItem:
        g = box(*b)
        return SourceItem("c", name, T0, g, g.bounds)

    big, west, east, extra = (
        it("big", -1, -1, 2, 2),
        it("w", -1, -1, 0.6, 2),
        it("e", 0.4, -1, 2, 2),
        it("x", 0.5, 0.5, 0.7, 0.7),
    )
    assert covering_set([west, big, east], fp) == (big,)
    assert covering_set([west, east, extra], fp) == (east, west)  # both, sorted by id; extra pruned
    assert covering_set([west, extra], fp) is None
    assert covering_set([], fp) is None


# --- S2 ---------------------------------------------------------------------------------------


def test_clearest_over_the_footprint_from_scl_not_tile_metadata(tmp_path) -> None:
    s = _sample()
    m = 4000.0
    x0, _, _, y1 = tile_around(s, m)
    hazy = write_scl(tmp_path / "a.tif", 32633, x0, y1, scl_with_cloud(s, m, 0.5, seed=1))
    clear = write_scl(tmp_path / "b.tif", 32633, x0, y1, scl_with_cloud(s, m, 0.1, seed=2))
    # The tile-level eo:cloud_cover says the opposite of what the footprint sees.
    a = s2_item("A", T0, tile_around(s, m), cloud=1.0, scl=hazy)
    b = s2_item(
        "B",
        T0 - timedelta(days=10),
        tile_around(s, m),
        cloud=60.0,
        scl=clear,
        platform="sentinel-2b",
    )
    for path, frac in ((hazy, 50), (clear, 10)):
        stats = scl_footprint_stats([a if path == hazy else b], s, 60.0)
        assert stats.cloud_pct == pytest.approx(brute_force_cloud(path, s), abs=3.0)
        assert stats.cloud_pct == pytest.approx(frac + 2, abs=4.0)
        assert stats.nodata_pct == 0.0
    r = match_sample(s, {"S2L2A": [a, b]}, _request("S2L2A"), MatchConfig(max_cloud=30))
    (mm,) = r.matches
    assert mm.acquisition is not None and mm.acquisition.ids == ("B",)
    assert mm.acquisition.cloud_source == "scl" and mm.acquisition.cloud_cover == pytest.approx(
        12, abs=4
    )
    # Without SCL the item metadata decides.
    r = match_sample(
        s, {"S2L2A": [a, b]}, _request("S2L2A"), MatchConfig(max_cloud=80, scl_hrefs="never")
    )
    assert r.matches[0].acquisition.ids == ("A",)
    # Over the threshold: a reason, not a silent pick.
    r = match_sample(s, {"S2L2A": [a, b]}, _request("S2L2A"), MatchConfig(max_cloud=5))
    assert r.matches[0].reason == "cloudy" and "clearest" in r.matches[0].message


def test_ties_go_to_the_most_recent_and_outside_period_is_ignored() -> None:
    s = _sample()
    old = s2_item("old", T0 - timedelta(days=20), tile_around(s), cloud=0.0)
    new = s2_item("new", T0, tile_around(s), cloud=0.0, platform="sentinel-2b")
    late = s2_item("late", PERIOD[1] + timedelta(days=3), tile_around(s), cloud=0.0)
    r = match_sample(s, {"S2L2A": [old, new, late]}, _request("S2L2A"))
    assert r.matches[0].acquisition.ids == ("new",)


def test_reasons_no_match_and_no_coverage() -> None:
    s = _sample()
    x0, y0, x1, y1 = s.bounds_utm
    partial = s2_item("P", T0, (x0 + 1000, y0 - 3000, x1 + 3000, y1 + 3000))
    r = match_sample(s, {"S2L2A": [partial]}, _request("S2L2A", "DEM"))
    assert [(m.modality, m.reason) for m in r.matches] == [
        ("S2L2A", "no_coverage"),
        ("DEM", "no_match"),
    ]
    no_bands = SourceItem(
        "sentinel-2-l2a", "nb", T0, partial.geometry, partial.bbox, "S2L2A",
        assets={"B04": SourceAsset("B04", "x", "B04")},
    )  # fmt: skip
    r = match_sample(s, {"S2L2A": [no_bands]}, _request("S2L2A"))
    assert r.matches[0].reason == "no_match" and "lacks" in r.matches[0].message


def test_footprint_across_tiles_lists_both_and_mosaics_scl(tmp_path) -> None:
    s = _sample()
    x0, y0, x1, y1 = s.bounds_utm
    mid = round((x0 + x1) / 2 / SCL_RES) * SCL_RES
    n_rows = int((y1 - y0 + 8000) / SCL_RES)
    west_arr = np.full((n_rows, int((mid - x0 + 4000) / SCL_RES)), 4, np.uint8)  # clear
    east_arr = np.full((n_rows, int((x1 - mid + 4000) / SCL_RES)), 9, np.uint8)  # cloudy
    west = s2_item(
        "W",
        T0,
        (x0 - 4000, y0 - 4000, mid, y1 + 4000),
        scl=write_scl(tmp_path / "w.tif", 32633, x0 - 4000, y1 + 4000, west_arr),
        tile="33TWL",
    )
    east = s2_item(
        "E",
        T0 + timedelta(seconds=20),
        (mid, y0 - 4000, x1 + 4000, y1 + 4000),
        scl=write_scl(tmp_path / "e.tif", 32633, mid, y1 + 4000, east_arr),
        tile="33TXL",
    )
    other_day = s2_item(
        "W2", T0 + timedelta(days=5), (x0 - 4000, y0 - 4000, mid, y1 + 4000), cloud=0.0
    )
    r = match_sample(
        s, {"S2L2A": [west, east, other_day]}, _request("S2L2A"), MatchConfig(max_cloud=60)
    )
    acq = r.matches[0].acquisition
    assert acq is not None and acq.ids == (
        "E",
        "W",
    )  # one pass, both tiles; never mixed with another day
    assert acq.cloud_cover == pytest.approx(50.0, abs=3.0)  # half the footprint from each SCL


def test_scl_of_a_tile_in_the_neighbouring_utm_zone(tmp_path) -> None:
    s = _sample(18.2, 45.3)  # sample grid in zone 34
    assert s.epsg == 32634
    tr = Transformer.from_crs(4326, 32633, always_xy=True)
    cx, cy = tr.transform(*s.center)
    x0, y1 = round((cx - 6000) / SCL_RES) * SCL_RES, round((cy + 6000) / SCL_RES) * SCL_RES
    n = int(12000 / SCL_RES)
    arr = np.full((n, n), 4, np.uint8)
    arr[: n // 2] = 8  # northern half cloudy, in zone 33 pixel rows
    path = write_scl(tmp_path / "z33.tif", 32633, x0, y1, arr)
    it = s2_item("Z", T0, (x0, y1 - 12000, x0 + 12000, y1), epsg=32633, scl=path)
    stats = scl_footprint_stats([it], s, 60.0)
    assert stats.cloud_pct == pytest.approx(brute_force_cloud(path, s), abs=3.0)
    assert 30 < stats.cloud_pct < 70
    # SCL nodata over the footprint: the acquisition does not cover it.
    hole = arr.copy()
    hole[:, :] = 0
    hole[:, : n // 3] = 4
    it2 = s2_item(
        "H",
        T0,
        (x0, y1 - 12000, x0 + 12000, y1),
        epsg=32633,
        scl=write_scl(tmp_path / "h.tif", 32633, x0, y1, hole),
    )
    r = match_sample(s, {"S2L2A": [it2]}, _request("S2L2A"))
    assert r.matches[0].reason == "no_coverage" and "SCL" in r.matches[0].message


# --- L1C, S1, DEM, LULC -----------------------------------------------------------------------


def test_l1c_comes_from_the_same_acquisition() -> None:
    s = _sample()
    b = tile_around(s)
    l2a = [
        s2_item("A2", T0, b, cloud=5.0),
        s2_item("B2", T0 + timedelta(days=5), b, cloud=1.0, platform="sentinel-2b"),
    ]
    l1c = [
        s2_item("A1", T0, b, cloud=5.0, collection="sentinel-2-l1c"),
        s2_item(
            "B1",
            T0 + timedelta(days=5),
            b,
            cloud=1.0,
            collection="sentinel-2-l1c",
            platform="sentinel-2b",
        ),
    ]
    r = match_sample(
        s, {"S2L2A": l2a, "S2L1C": l1c}, _request("S2L2A", "S2L1C"), MatchConfig(scl_hrefs="never")
    )
    assert [m.acquisition.ids for m in r.matches] == [("B2",), ("B1",)]
    # The clearest L2A has no L1C twin: an acquisition with both wins (prefer_complete) ...
    r = match_sample(
        s,
        {"S2L2A": l2a, "S2L1C": l1c[:1]},
        _request("S2L2A", "S2L1C"),
        MatchConfig(scl_hrefs="never"),
    )
    assert [m.acquisition.ids for m in r.matches] == [("A2",), ("A1",)]
    # ... unless asked for the clearest regardless; then L1C is missing with a reason.
    cfg = MatchConfig(scl_hrefs="never", prefer_complete=False)
    r = match_sample(s, {"S2L2A": l2a, "S2L1C": l1c[:1]}, _request("S2L2A", "S2L1C"), cfg)
    assert r.matches[0].acquisition.ids == ("B2",) and r.matches[1].reason == "no_match"


def test_s1_closest_in_window_same_orbit_preferred() -> None:
    s = _sample()
    g = s.footprint.buffer(0.2)
    l2a = [s2_item("S2", T0, tile_around(s), cloud=0.0)]  # a descending S2 pass
    asc = s1_item("asc-1d", T0 - timedelta(days=1), g, "ascending", rel=117)
    desc = s1_item("desc-5d", T0 + timedelta(days=5), g, "descending")
    far = s1_item("desc-9d", T0 - timedelta(days=9), g, "descending", rel=95)
    req = _request("S2L2A", "S1GRD")
    cands = {"S2L2A": l2a, "S1GRD": [asc, desc, far]}
    r = match_sample(s, cands, req, MatchConfig(scl_hrefs="never"))
    assert r.matches[1].acquisition.ids == ("desc-5d",)
    assert r.s1_s2_delta_days == pytest.approx(5.0)
    r = match_sample(s, cands, req, MatchConfig(scl_hrefs="never", s1_orbit="any"))
    assert r.matches[1].acquisition.ids == ("asc-1d",) and r.s1_s2_delta_days == pytest.approx(-1.0)
    r = match_sample(s, {"S2L2A": l2a, "S1GRD": [far]}, req, MatchConfig(scl_hrefs="never"))
    assert (
        r.matches[1].reason == "s1_s2_delta"
        and "9.0 days" in r.matches[1].message
        and r.s1_s2_delta_days is None
    )
    hh = s1_item("hh", T0, g, "descending", pols=("HH",))
    r = match_sample(s, {"S2L2A": l2a, "S1GRD": [hh]}, req, MatchConfig(scl_hrefs="never"))
    assert r.matches[1].reason == "no_match" and "VV+VH" in r.matches[1].message


def test_s1_slices_of_one_pass_mosaic() -> None:
    s = _sample()
    lon, lat = s.center
    north = box(lon - 1, lat, lon + 1, lat + 1)
    south = box(lon - 1, lat - 1, lon + 1, lat)
    items = [
        s1_item("n", T0, north, "descending"),
        s1_item("s", T0 - timedelta(seconds=25), south, "descending"),
    ]
    r = match_sample(
        s,
        {"S2L2A": [s2_item("S2", T0, tile_around(s), cloud=0.0)], "S1GRD": items},
        _request("S2L2A", "S1GRD"),
        MatchConfig(scl_hrefs="never"),
    )
    assert set(r.matches[1].acquisition.ids) == {"n", "s"}


def test_dem_tiles_and_lulc_by_year() -> None:
    # A footprint on a 1-degree corner needs the four DEM tiles around it.
    cell = GRID.cell_of(16.0, 46.0)
    # A sample grid built directly at the corner: a footprint centred on (16, 46).
    tr = Transformer.from_crs(4326, 32633, always_xy=True)
    cx, cy = tr.transform(16.0, 46.0)
    s = SampleGrid(
        "t",
        str(cell),
        0,
        0,
        32633,
        (10.0, 0.0, round(cx - 1320, -1), 0.0, -10.0, round(cy + 1320, -1)),
    )
    tiles = [
        static_item("cop-dem-glo-30", "DEM", f"dem_{la}_{lo}", box(lo, la, lo + 1, la + 1), T0)
        for la in (45, 46)
        for lo in (15, 16)
    ]
    r = match_sample(s, {"DEM": tiles}, _request("DEM"))
    assert len(r.matches[0].acquisition.ids) == 4
    r = match_sample(s, {"DEM": tiles[:3]}, _request("DEM"))
    assert r.matches[0].reason == "no_coverage"

    g = s.footprint.buffer(0.5)

    def lulc(y: int) -> SourceItem:
        t = datetime(y, 1, 1, tzinfo=UTC)
        return static_item(
            "io-lulc-9-class",
            "LULC",
            f"33T-{y}",
            g,
            t,
            start=t,
            end=datetime(y + 1, 1, 1, tzinfo=UTC),
        )

    s2 = s2_item("S2", T0, tile_around(s), cloud=0.0)
    req = _request("S2L2A", "LULC")
    r = match_sample(
        s,
        {"S2L2A": [s2], "LULC": [lulc(2021), lulc(2022), lulc(2023)]},
        req,
        MatchConfig(scl_hrefs="never"),
    )
    assert r.matches[1].acquisition.ids == ("33T-2023",)
    r = match_sample(s, {"S2L2A": [s2], "LULC": [lulc(2021)]}, req, MatchConfig(scl_hrefs="never"))
    assert r.matches[1].reason == "no_match"
    r = match_sample(
        s,
        {"S2L2A": [s2], "LULC": [lulc(2021)]},
        req,
        MatchConfig(scl_hrefs="never", lulc_max_year_gap=2),
    )
    assert r.matches[1].acquisition.ids == ("33T-2021",)


def test_scl_stats_read_the_file_as_it_is_now_not_a_cached_open_one(tmp_path) -> None:
    """SCL is read through ``pipeline.readers``, opened per call: a file replaced between two
    calls (a re-generated catalog, a re-downloaded asset) is read anew, never from a
    dataset some earlier call left open."""
    s = _sample()
    m = 4000.0
    x0, _, _, y1 = tile_around(s, m)
    path = tmp_path / "scl.tif"
    href = write_scl(path, 32633, x0, y1, scl_with_cloud(s, m, 0.1, seed=3))
    it = s2_item("R", T0, tile_around(s, m), scl=href)
    first = scl_footprint_stats([it], s, 60.0)
    assert first.cloud_pct == pytest.approx(brute_force_cloud(path.as_uri(), s), abs=3.0)
    write_scl(tmp_path / "new.tif", 32633, x0, y1, scl_with_cloud(s, m, 0.6, seed=4))
    (tmp_path / "new.tif").replace(path)
    second = scl_footprint_stats([it], s, 60.0)
    assert second.cloud_pct == pytest.approx(brute_force_cloud(path.as_uri(), s), abs=3.0)
    assert second.cloud_pct > first.cloud_pct + 30
