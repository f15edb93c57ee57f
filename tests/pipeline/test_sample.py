from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from affine import Affine
from rasterio.shutil import copy as rio_copy
from sample_kit import (
    Synth,
    grid_transform,
    plan_row,
    raster_from_field,
    write_raster,
)

from terraloom.pipeline.caption import SampleStats
from terraloom.pipeline.readers import HrefPolicy, gdal_path
from terraloom.pipeline.sample import BuildConfig, SampleResult, build_block, build_sample
from terraloom.schemas.layouts import corpus_layout
from terraloom.schemas.modalities import get_modality
from terraloom.schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA, RejectReason

LON0, LAT0 = 15.3, 45.5
EPSG = 32633
#: The unreachable-asset cases use a closed port on 127.0.0.1: they opt in to loopback hrefs.
LOOPBACK = HrefPolicy(hosts=("127.0.0.1",))
FAST = BuildConfig(http_timeout_s=2, http_max_retry=0, href_policy=LOOPBACK)


class ShoutingCaptioner:
    """A stand-in for a VLM captioner (loaded through BuildConfig.captioner)."""

    def caption(self, stats: SampleStats) -> str:
        return f"SAMPLE AT {stats.lat:.2f} {stats.lon:.2f}"


def make_shouting_captioner() -> ShoutingCaptioner:
    return ShoutingCaptioner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("synth")
    synth = Synth(root, LON0, LAT0)
    scenes = synth.standard_scenes(EPSG, (LON0, LAT0))
    t = grid_transform(EPSG, LON0, LAT0)
    return {"synth": synth, "scenes": scenes, "t": t, "root": root}


def _row(
    world: dict[str, Any],
    i: int,
    scenes: list[dict[str, Any]] | None = None,
    dx: float = 0.0,
    dy: float = 0.0,
    **kw: Any,
) -> dict[str, Any]:
    t = world["t"] @ Affine.translation(dx / 10, -dy / 10)
    kw.setdefault("s1_s2_delta_days", 0.0)
    return plan_row(
        f"s{i}",
        EPSG,
        t,
        copy.deepcopy(scenes if scenes is not None else world["scenes"]),
        row=i,
        **kw,
    )


def _replace_asset(
    scenes: list[dict[str, Any]], modality: str, band: str, **changes: Any
) -> list[dict[str, Any]]:
    out = copy.deepcopy(scenes)
    for sc in out:
        if sc["modality"] == modality:
            for a in sc["assets"]:
                if a["band"] == band:
                    a.update(changes)
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepted(r: SampleResult) -> SampleResult:
    assert r.reject is None, r.reject
    assert r.arrays is not None and r.index_row is not None
    return r


def test_accepted_sample_matches_the_corpus_layout_and_index_schema(world: dict[str, Any]) -> None:
    r = _accepted(build_sample(_row(world, 0), FAST))
    assert r.arrays is not None and r.index_row is not None
    layout = corpus_layout(1, 1)
    for spec in layout.arrays:
        if spec.name in ("valid", "sample_id"):  # the writer fills these from the plan
            continue
        v = r.arrays[spec.name]
        assert v.shape == spec.shape[1:], spec.name
        assert v.dtype == np.dtype(spec.dtype), spec.name
    s2 = r.arrays["S2L2A"]
    assert (s2 > 0).all()  # no nodata left in a required modality
    assert (
        np.isnan(r.arrays["S2L1C"]).sum() == 0 and (r.arrays["S2L1C"] == 0).all()
    )  # not planned: fill
    assert np.isfinite(r.arrays["S1GRD"].astype(np.float32)).all()
    assert set(np.unique(r.arrays["LULC"])) <= {1, 2, 5, 7, 11}
    assert r.arrays["epsg"] == EPSG
    np.testing.assert_array_equal(r.arrays["transform"], list(world["t"])[:6])
    lat, lon = r.arrays["GEO"]
    assert (lat, lon) == pytest.approx((LAT0, LON0), abs=0.01)
    caption = bytes(r.arrays["CAPTION"]).rstrip(b"\0").decode()
    assert caption == r.index_row["caption"] and "summer" in caption and "%" in caption
    row = dict(r.index_row, checksums={})
    table = pa.Table.from_pylist([row], schema=INDEX_SCHEMA)  # raises if a field is off
    assert table.num_rows == 1
    q = r.index_row["quality"]
    assert q["nodata_S2L2A"] == 0.0 and q["available_S2L1C"] == 0.0 and "ndvi_mean" in q
    assert r.index_row["time_S2L2A"] == world["scenes"][0]["datetime"]
    assert r.index_row["cloud_fraction"] == 0.0
    assert r.stats["bytes_read"] > 0 and r.stats["msec_warp"] > 0


def test_scene_major_block_reads_each_asset_once_and_equals_per_sample_builds(
    world: dict[str, Any],
) -> None:
    rows = [
        _row(world, i, dx=dx, dy=dy)
        for i, (dx, dy) in enumerate([(0, 0), (200, 0), (0, -150), (-100, 120)])
    ]
    block = build_block(rows, FAST)
    n_hrefs = sum(len(sc["assets"]) for sc in world["scenes"])
    assert sum(r.stats["reads"] for r in block) == pytest.approx(n_hrefs)  # one read per asset
    single = [build_sample(r, FAST) for r in rows]
    assert sum(r.stats["reads"] for r in single) == pytest.approx(4 * n_hrefs)
    for a, b in zip(block, single):
        _accepted(a)
        assert a.arrays is not None and b.arrays is not None
        for name in a.arrays:
            np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
    threaded = build_block(rows, dataclasses.replace(FAST, io_threads=3))
    for a, b in zip(block, threaded):
        assert a.arrays is not None and b.arrays is not None
        for name in a.arrays:
            np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
    # shifted samples really are shifted copies of the same scene: 200 m east = 20 px
    s2a, s2b = block[0].arrays["S2L2A"], block[1].arrays["S2L2A"]  # type: ignore[index]
    np.testing.assert_array_equal(s2a[:, :, 20:], s2b[:, :, :-20])


def test_bad_inputs_become_rejects_with_the_right_reason(
    world: dict[str, Any], tmp_path: Path
) -> None:
    synth: Synth = world["synth"]
    scenes = world["scenes"]
    s2 = scenes[0]
    b04 = next(a for a in s2["assets"] if a["band"] == "B04")
    cog = tmp_path / "B04_cog.tif"
    rio_copy(gdal_path(b04["href"]), cog, driver="COG", compress="deflate", blocksize=64)
    raw = cog.read_bytes()
    truncated = tmp_path / "B04_truncated.tif"
    truncated.write_bytes(raw[: len(raw) // 3])
    ul = (b04["transform"][2], b04["transform"][5])
    size = b04["shape"][0] * 10
    empty = synth.s2_scene(
        "S2_EMPTY", EPSG, ul, size, valid=lambda x, y: np.zeros(np.shape(x), bool)
    )
    cloudy = synth.s2_scene("S2_CLOUDY", EPSG, ul, size, cloud_fraction=1.0)
    port = _closed_port()
    cases = {
        RejectReason.UNREADABLE_ASSET: _replace_asset(
            scenes, "S2L2A", "B04", href=truncated.as_uri()
        ),
        RejectReason.UNREACHABLE_ASSET: _replace_asset(
            scenes, "DEM", "elevation", href=(tmp_path / "gone.tif").as_uri()
        ),
        "https": _replace_asset(
            scenes, "LULC", "class", href=f"http://127.0.0.1:{port}/lulc/data.tif"
        ),
        RejectReason.CRS_MISMATCH: _replace_asset(scenes, "S2L2A", "B03", epsg=32634),
        RejectReason.NODATA: [empty, *copy.deepcopy(scenes[1:])],
        RejectReason.CLOUDY: [cloudy, *copy.deepcopy(scenes[1:])],
    }
    rows = [_row(world, 0)] + [_row(world, i + 1, sc) for i, sc in enumerate(cases.values())]
    results = build_block(rows, FAST)
    assert len(results) == len(rows)  # the run completes; accepted + rejected = planned
    assert [r.row for r in results] == list(range(len(rows)))
    _accepted(results[0])
    expected = [
        RejectReason.UNREADABLE_ASSET,
        RejectReason.UNREACHABLE_ASSET,
        RejectReason.UNREACHABLE_ASSET,
        RejectReason.CRS_MISMATCH,
        RejectReason.NODATA,
        RejectReason.CLOUDY,
    ]
    modalities = ["S2L2A", "DEM", "LULC", "S2L2A", "S2L2A", "S2L2A"]
    for r, reason, modality in zip(results[1:], expected, modalities):
        assert r.arrays is None and r.reject is not None
        assert r.reject["reason"] == reason.value, r.reject
        assert r.reject["modality"] == modality
        assert r.reject["message"]
        pa.Table.from_pylist([r.reject], schema=REJECTS_SCHEMA)
    assert (
        "127.0.0.1" in results[3].reject["message"]
        or "connect" in results[3].reject["message"].lower()
    )  # type: ignore[index]


def test_non_finite_and_constant_sources_are_rejected(
    world: dict[str, Any], tmp_path: Path
) -> None:
    scenes = world["scenes"]
    dem0 = next(sc for sc in scenes if sc["modality"] == "DEM")
    a = dem0["assets"][0]
    t = Affine(*a["transform"])
    field = world["synth"].dem()

    def with_inf(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        v = field(lon, lat).astype(np.float32)
        v[::5, ::7] = np.inf
        return v

    inf_href = raster_from_field(
        tmp_path / "dem_inf.tif", with_inf, 4326, t, tuple(a["shape"]), nodata=-9999.0
    )
    s2 = scenes[0]
    b05 = next(x for x in s2["assets"] if x["band"] == "B05")
    const_href = write_raster(
        tmp_path / "B05_const.tif",
        np.full(tuple(b05["shape"]), 1234, np.uint16),
        crs=EPSG,
        transform=Affine(*b05["transform"]),
        nodata=0,
    )
    rows = [
        _row(world, 0, [_swap(sc, dem0["item_id"], inf_href) for sc in copy.deepcopy(scenes)]),
        _row(world, 1, _replace_asset(scenes, "S2L2A", "B05", href=const_href)),
    ]
    r_inf, r_const = build_block(rows, FAST)
    assert (
        r_inf.reject is not None
        and r_inf.reject["reason"] == RejectReason.NAN_INF.value
        and r_inf.reject["modality"] == "DEM"
    )
    assert r_const.reject is not None and r_const.reject["reason"] == RejectReason.CONSTANT.value


def _swap(scene: dict[str, Any], item_id: str, href: str) -> dict[str, Any]:
    if scene["item_id"] == item_id:
        scene["assets"][0]["href"] = href
    return scene


def test_small_gaps_are_filled_and_counted(world: dict[str, Any]) -> None:
    synth: Synth = world["synth"]
    b04 = next(a for a in world["scenes"][0]["assets"] if a["band"] == "B04")
    ul = (b04["transform"][2], b04["transform"][5])
    cx, cy = world["t"] @ (132, 132)
    hole = synth.s2_scene(
        "S2_HOLE", EPSG, ul, b04["shape"][0] * 10, valid=lambda x, y: np.hypot(x - cx, y - cy) > 60
    )
    r = _accepted(build_sample(_row(world, 0, [hole, *copy.deepcopy(world["scenes"][1:])]), FAST))
    assert r.index_row is not None and r.arrays is not None
    n = r.index_row["nodata_filled_px"]
    assert 100 < n < 0.01 * 264 * 264  # ~ pi * 6^2 px (+ the 20/60 m bands' coarser edge)
    assert r.index_row["quality"]["filled_px_S2L2A"] == n
    assert (r.arrays["S2L2A"] > 0).all()  # no hole left


def test_unmatched_and_delta_rules_use_the_plan(world: dict[str, Any]) -> None:
    no_s1 = [sc for sc in world["scenes"] if sc["modality"] != "S1GRD"]
    unmatched = [
        {
            "modality": "S1GRD",
            "reason": "no_coverage",
            "message": "S1GRD: 2 scenes, none covers the footprint",
        }
    ]
    rows = [
        _row(world, 0, no_s1, unmatched=unmatched),
        _row(world, 1, s1_s2_delta_days=12.0),
        _row(world, 2, no_s1),
    ]
    r_unmatched, r_delta, r_unplanned = build_block(rows, FAST)
    assert r_unmatched.reject is not None and r_unmatched.reject["reason"] == "no_coverage"
    assert r_unmatched.reject["message"] == unmatched[0]["message"]
    assert r_delta.reject is not None and r_delta.reject["reason"] == RejectReason.S1_S2_DELTA.value
    assert (
        r_unplanned.reject is not None
        and r_unplanned.reject["reason"] == RejectReason.NO_MATCH.value
    )
    # the same rows with S1 optional: accepted, S1 left at its fill value and flagged
    optional = BuildConfig(required=("S2L2A", "DEM", "LULC"), http_timeout_s=2, http_max_retry=0)
    for r in build_block(rows, optional):
        _accepted(r)
        assert r.arrays is not None and r.index_row is not None
        assert np.isnan(r.arrays["S1GRD"].astype(np.float32)).all()
        assert r.index_row["quality"]["available_S1GRD"] == 0.0


def test_mosaic_across_an_s2_tile_edge_has_no_seam(world: dict[str, Any]) -> None:
    synth: Synth = world["synth"]
    b04 = next(a for a in world["scenes"][0]["assets"] if a["band"] == "B04")
    ul = (b04["transform"][2], b04["transform"][5])
    size = b04["shape"][0] * 10
    edge_x = world["t"].c + 1275  # inside the sample, not on a 20/60 m pixel edge
    west = synth.s2_scene("S2_WEST", EPSG, ul, size, valid=lambda x, y: x < edge_x)
    east = synth.s2_scene("S2_EAST", EPSG, ul, size, valid=lambda x, y: x >= edge_x)
    mosaic = _accepted(
        build_sample(_row(world, 0, [west, east, *copy.deepcopy(world["scenes"][1:])]), FAST)
    )
    whole = _accepted(build_sample(_row(world, 0), FAST))
    assert mosaic.arrays is not None and whole.arrays is not None
    m, w = mosaic.arrays["S2L2A"].astype(float), whole.arrays["S2L2A"].astype(float)
    assert (m > 0).all()
    b02 = get_modality("S2L2A").band_names.index("B02")
    np.testing.assert_array_equal(m[b02], w[b02])  # 10 m bands: exact
    # coarser bands: the two tiles' partial kernels at the seam are merged, which is
    # bilinear on the merged source: the mosaic equals the single scene (DN rounding aside)
    assert np.abs(m - w).max() <= 1


def test_band_subset_and_pluggable_captioner(world: dict[str, Any]) -> None:
    cfg = BuildConfig(
        modalities=("S2L2A", "S2RGB", "NDVI", "GEO", "CAPTION"),
        required=("S2L2A",),
        band_subset=(("S2L2A", ("B02", "B03", "B04", "B08")),),
        captioner="test_sample:make_shouting_captioner",
    )
    r = _accepted(build_sample(_row(world, 0), cfg))
    assert r.arrays is not None and r.index_row is not None
    assert set(r.arrays) == {
        "S2L2A",
        "S2RGB",
        "NDVI",
        "GEO",
        "CAPTION",
        "cloud_mask",
        "epsg",
        "transform",
    }
    names = get_modality("S2L2A").band_names
    s2 = r.arrays["S2L2A"]
    for i, b in enumerate(names):
        assert (s2[i] > 0).all() if b in ("B02", "B03", "B04", "B08") else (s2[i] == 0).all(), b
    assert r.index_row["caption"].startswith("SAMPLE AT 45.50 15.30")
    assert np.isfinite(r.arrays["NDVI"].astype(np.float32)).all()


def test_config_validates_names_and_thresholds() -> None:
    cfg = BuildConfig(modalities=("s2l2a", "dem"), required=("S2L2A", "LULC"))
    assert cfg.modalities == ("S2L2A", "DEM") and cfg.required == ("S2L2A",)
    with pytest.raises(ValueError):
        BuildConfig(max_cloud_fraction=1.5)
    with pytest.raises(KeyError):
        BuildConfig(modalities=("S3OLCI",))
    with pytest.raises(ValueError):
        BuildConfig(band_subset=(("S2L2A", ("B99",)),))
    assert hash(BuildConfig()) == hash(BuildConfig())


def test_grd_amplitude_dn_is_converted_to_db(world: dict[str, Any]) -> None:
    synth: Synth = world["synth"]
    grd = synth.grd_scene("S1_DN", (LON0, LAT0), (374, 374), amplitude_dn=True)
    scenes = [grd if sc["modality"] == "S1GRD" else copy.deepcopy(sc) for sc in world["scenes"]]
    dn = _accepted(build_sample(_row(world, 0, scenes), FAST))
    power = _accepted(build_sample(_row(world, 0), FAST))
    assert dn.arrays is not None and power.arrays is not None
    a = dn.arrays["S1GRD"].astype(np.float32)
    b = power.arrays["S1GRD"].astype(np.float32)
    assert np.abs(a - b).mean() < 0.05  # dB either way (DN quantisation aside)
    assert -30 < float(np.nanmean(b[1])) < -10


def test_delta_is_computed_from_scene_times_when_the_plan_has_none(world: dict[str, Any]) -> None:
    scenes = copy.deepcopy(world["scenes"])
    for sc in scenes:
        if sc["modality"] == "S1GRD":
            sc["datetime"] = sc["datetime"] + dt.timedelta(days=9)
    r = build_sample(_row(world, 0, scenes, s1_s2_delta_days=None), FAST)
    assert r.reject is not None and r.reject["reason"] == RejectReason.S1_S2_DELTA.value


# --------------------------------------------------------------------------- on the embedded world


def _world_asset(row: dict[str, Any], modality: str, band: str) -> dict[str, Any]:
    sc = next(s for s in row["scenes"] if s["modality"] == modality)
    return next(a for a in sc["assets"] if a["band"] == band)


def _rewrite(src_href: str, dst: Path, *, fill: float | None = None, crs: int | None = None) -> str:
    """A copy of a world COG with its values replaced by ``fill`` or its CRS replaced."""
    import rasterio

    with rasterio.open(gdal_path(src_href)) as ds:
        data = ds.read()
        profile = ds.profile.copy()
    if fill is not None:
        data[:] = fill
    if crs is not None:
        profile["crs"] = rasterio.crs.CRS.from_epsg(crs)
    profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst.as_uri()


def test_bad_inputs_built_from_the_world_are_rejected_and_the_run_completes(
    tiny_plan: tuple[Path, Any], tmp_path: Path
) -> None:
    from terraloom.schemas.tables import read_table

    plan = read_table("plan", tiny_plan[0]).to_pylist()
    cfg = BuildConfig(
        required=("S2L2A", "S1GRD", "DEM"), http_timeout_s=2, http_max_retry=0, href_policy=LOOPBACK
    )
    base = next(
        r for r in plan if build_sample(r, cfg).reject is None
    )  # a good sample of the world
    b04 = _world_asset(base, "S2L2A", "B04")
    raw = Path(gdal_path(b04["href"])).read_bytes()
    truncated = tmp_path / "truncated" / "B04.tif"
    truncated.parent.mkdir()
    truncated.write_bytes(raw[: len(raw) // 2])
    s2 = next(s for s in base["scenes"] if s["modality"] == "S2L2A")
    empty = {
        a["band"]: _rewrite(a["href"], tmp_path / "empty" / f"{a['band']}.tif", fill=0)
        for a in s2["assets"]
    }
    port = _closed_port()
    variants: list[tuple[RejectReason, str, dict[str, Any]]] = []

    def variant(reason: RejectReason, modality: str, edit: Any) -> None:
        row = copy.deepcopy(base)
        edit(row)
        variants.append((reason, modality, row))

    variant(
        RejectReason.UNREADABLE_ASSET,
        "S2L2A",
        lambda r: _world_asset(r, "S2L2A", "B04").update(href=truncated.as_uri()),
    )
    variant(
        RejectReason.UNREACHABLE_ASSET,
        "DEM",
        lambda r: [
            a.update(href=(tmp_path / "missing.tif").as_uri())
            for s in r["scenes"]
            if s["modality"] == "DEM"
            for a in s["assets"]
        ],
    )
    variant(
        RejectReason.UNREACHABLE_ASSET,
        "S1GRD",
        lambda r: _world_asset(r, "S1GRD", "VH").update(href=f"http://127.0.0.1:{port}/grd/vh.tif"),
    )
    wrong_crs = _rewrite(
        b04["href"], tmp_path / "crs" / "B04.tif", crs=32723 if base["epsg"] != 32723 else 32724
    )
    variant(
        RejectReason.CRS_MISMATCH,
        "S2L2A",
        lambda r: _world_asset(r, "S2L2A", "B04").update(href=wrong_crs),
    )
    variant(
        RejectReason.NODATA,
        "S2L2A",
        lambda r: [
            a.update(href=empty[a["band"]])
            for s in r["scenes"]
            if s["modality"] == "S2L2A"
            for a in s["assets"]
        ],
    )
    cloudy = _rewrite(
        _world_asset(base, "S2L2A", "SCL")["href"], tmp_path / "cloudy" / "SCL.tif", fill=9
    )
    variant(
        RejectReason.CLOUDY, "S2L2A", lambda r: _world_asset(r, "S2L2A", "SCL").update(href=cloudy)
    )
    rows = [copy.deepcopy(base)] + [row for _, _, row in variants]
    for i, row in enumerate(rows):
        row["row"] = i
        row["sample_id"] = f"{base['sample_id']}_v{i}"
    results = build_block(rows, cfg)
    assert len(results) == len(rows)  # accepted + rejected = planned
    assert results[0].reject is None, results[0].reject
    for (reason, modality, _), r in zip(variants, results[1:]):
        assert r.reject is not None, (reason, r.index_row)
        assert (r.reject["reason"], r.reject["modality"]) == (reason.value, modality), r.reject


def test_an_optional_modality_that_fails_is_recorded_with_its_reason(
    tiny_plan: tuple[Path, Any], world: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 15 item 6: a truncated optional S1RTC COG no longer vanishes without a trace;
    the accepted sample lists it in ``missing_modalities`` and the block stats count it."""
    from terraloom.schemas.tables import INDEX_SCHEMA, read_table

    cfg = BuildConfig(http_timeout_s=2, http_max_retry=0)  # S1RTC is optional by default
    assert "S1RTC" not in cfg.required_sources
    plan = read_table("plan", tiny_plan[0]).to_pylist()
    base = next(r for r in plan if any(s["modality"] == "S1RTC" for s in r["scenes"]))
    good = _accepted(build_sample(base, cfg))
    assert good.index_row is not None
    assert not any(e["modality"] == "S1RTC" for e in good.index_row["missing_modalities"])

    import rasterio

    vv = _world_asset(base, "S1RTC", "VV")
    with rasterio.open(gdal_path(vv["href"])) as ds:  # cut inside the first image tile
        first_tile = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    truncated = tmp_path / "rtc" / "VV.tif"
    truncated.parent.mkdir()
    truncated.write_bytes(Path(gdal_path(vv["href"])).read_bytes()[: first_tile + 16])
    row = copy.deepcopy(base)
    _world_asset(row, "S1RTC", "VV").update(href=truncated.as_uri())
    r = _accepted(build_sample(row, cfg))
    assert r.index_row is not None and r.arrays is not None
    rtc = [e for e in r.index_row["missing_modalities"] if e["modality"] == "S1RTC"]
    assert len(rtc) == 1
    assert rtc[0]["reason"] == RejectReason.UNREADABLE_ASSET.value
    assert "S1RTC VV" in rtc[0]["message"] and "VV.tif" in rtc[0]["message"]
    assert r.index_row["quality"]["available_S1RTC"] == 0.0
    assert r.stats["missing_S1RTC_unreadable_asset"] == 1.0
    assert np.isnan(r.arrays["S1RTC"].astype(np.float32)).all()
    pa.Table.from_pylist([r.index_row], schema=INDEX_SCHEMA)  # the index column's type

    # an optional modality the plan found no scene for carries the plan's reason, and the
    # modalities derived from a missing source are listed too
    no_s2 = [sc for sc in world["scenes"] if sc["modality"] != "S2L2A"]
    unmatched = [{"modality": "S2L2A", "reason": "no_coverage", "message": "S2L2A: partial"}]
    opt = BuildConfig(required=("S1GRD", "DEM"), http_timeout_s=2, http_max_retry=0)
    r2 = _accepted(build_sample(_row(world, 0, no_s2, unmatched=unmatched), opt))
    assert r2.index_row is not None
    s2_family = ("S2L2A", "S2RGB", "NDVI")
    assert [e for e in r2.index_row["missing_modalities"] if e["modality"] in s2_family] == [
        {"modality": "S2L2A", "reason": "no_coverage", "message": "S2L2A: partial"},
        {
            "modality": "S2RGB",
            "reason": "no_coverage",
            "message": "S2RGB: not derived, S2L2A is missing",
        },
        {
            "modality": "NDVI",
            "reason": "no_coverage",
            "message": "NDVI: not derived, S2L2A is missing",
        },
    ]
    assert r2.stats["missing_S2L2A_no_coverage"] == 1.0
