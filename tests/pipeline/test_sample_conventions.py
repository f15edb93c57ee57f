"""Sources in the wild (issue 18), through ``pipeline.sample.build_block``: multi-band files,
S1 GRD zero border fill, one Sentinel-2 DN convention and ESA WorldCover's legend.

Every fixture is generated here (rasterio GeoTIFFs, STAC items as dicts) with fixed values;
the vertical-datum cases live in ``test_vertical.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from sample_kit import Synth, centres_lonlat, grid_transform, plan_row, write_raster

from terraloom.pipeline.sample import BuildConfig, SampleResult, build_block
from terraloom.pipeline.sources.base import item_from_stac
from terraloom.schemas.modalities import (
    ESA_WORLDCOVER_TO_LULC,
    S2_CONVENTION,
    get_modality,
    source_convention,
)
from terraloom.schemas.tables import RejectReason

LON0, LAT0 = 15.3, 45.5
EPSG = 32633
T = grid_transform(EPSG, LON0, LAT0)
FOUR = ("B02", "B03", "B04", "B08")
S2 = get_modality("S2L2A")
S2_CFG = BuildConfig(
    modalities=("S2L2A", "S2RGB", "NDVI", "GEO", "CAPTION"),
    required=("S2L2A",),
    band_subset=(("S2L2A", FOUR),),
)


def _row(scenes: list[dict[str, Any]], i: int = 0) -> dict[str, Any]:
    return plan_row(f"s{i}", EPSG, T, copy.deepcopy(scenes), row=i)


def _ok(r: SampleResult) -> SampleResult:
    assert r.reject is None, (r.reject or {}).get("message")
    assert r.arrays is not None and r.index_row is not None
    return r


def _reflectance(band: str) -> np.ndarray:
    """A smooth surface reflectance (0.02..0.45) on a 10 m lattice around the sample."""
    lon, lat = centres_lonlat(EPSG, _SCENE_T, _N, _N)
    i = FOUR.index(band)
    x = (lon - LON0) * 78_000.0
    y = (lat - LAT0) * 111_000.0
    return 0.2 + 0.03 * i + 0.15 * np.sin(x / 170.0 + i) * np.cos(y / 230.0)


_N = 300  # 3 km scene around the 2.64 km sample, on the sample's lattice
_SCENE_T = Affine(10, 0, T.c - 180, 0, -10, T.f + 180)


def _stac_item(
    item_id: str, assets: dict[str, dict[str, Any]], props: dict[str, Any] | None = None
) -> dict[str, Any]:
    lon, lat = centres_lonlat(EPSG, _SCENE_T, _N, _N)
    w, s, e, n = float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "bbox": [w, s, e, n],
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
        },
        "properties": {"datetime": "2023-07-15T10:00:00Z", "proj:epsg": EPSG, **(props or {})},
        "assets": assets,
        "links": [],
    }


def _proj() -> dict[str, Any]:
    return {"proj:transform": list(_SCENE_T)[:6], "proj:shape": [_N, _N]}


def _scene(item: dict[str, Any], modality: str = "S2L2A") -> dict[str, Any]:
    return item_from_stac(item).to_scene(modality)


# --------------------------------------------------------------------------- 1. multi-band files


@pytest.fixture(scope="module")
def bands_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same four S2 bands as four single-band files, one 4-band stack, a 2-band stack
    with band descriptions and one without."""
    root = tmp_path_factory.mktemp("multiband")
    dn = {b: np.rint(_reflectance(b) * 10000 + 1000).astype(np.uint16) for b in FOUR}
    single = {
        b: write_raster(root / f"{b}.tif", dn[b], crs=EPSG, transform=_SCENE_T, nodata=0)
        for b in FOUR
    }
    stack = write_raster(
        root / "stack.tif", np.stack([dn[b] for b in FOUR]), crs=EPSG, transform=_SCENE_T, nodata=0
    )
    pair = write_raster(
        root / "pair.tif", np.stack([dn["B04"], dn["B08"]]), crs=EPSG, transform=_SCENE_T, nodata=0
    )
    named = write_raster(
        root / "named.tif", np.stack([dn["B08"], dn["B04"]]), crs=EPSG, transform=_SCENE_T, nodata=0
    )
    with rasterio.open(root / "named.tif", "r+") as ds:
        ds.set_band_description(1, "B08")
        ds.set_band_description(2, "B04")
    return {"dn": dn, "single": single, "stack": stack, "pair": pair, "named": named}


def _raster_bands(n: int) -> list[dict[str, Any]]:
    return [{"nodata": 0, "data_type": "uint16", "scale": 1e-4, "offset": -0.1}] * n


def _single_band_item(hrefs: dict[str, str], item_id: str = "single") -> dict[str, Any]:
    assets = {
        b: {
            "href": hrefs[b],
            "eo:bands": [{"name": b}],
            "raster:bands": _raster_bands(1),
            **_proj(),
        }
        for b in hrefs
    }
    return _stac_item(item_id, assets, {"s2:processing_baseline": "05.09"})


def test_one_asset_listing_four_bands_builds_each_band_from_its_own_index(
    bands_dir: dict[str, Any],
) -> None:
    """A Landsat-style stack: one asset whose eo:bands lists four bands; each registry band
    is read from its position (reads grouped by (href, band)), identical to four files."""
    stack_item = _stac_item(
        "stack",
        {
            "image": {
                "href": bands_dir["stack"],
                "eo:bands": [{"name": b} for b in FOUR],
                "raster:bands": _raster_bands(4),
                **_proj(),
            }
        },
        {"s2:processing_baseline": "05.09"},
    )
    sc = _scene(stack_item)
    assert [(a["band"], a["key"], a["band_index"]) for a in sc["assets"]] == [
        (b, "image", i + 1) for i, b in enumerate(FOUR)
    ]
    ref, got = build_block(
        [_row([_scene(_single_band_item(bands_dir["single"]))], 0), _row([sc], 1)], S2_CFG
    )
    _ok(ref), _ok(got)
    assert ref.arrays is not None and got.arrays is not None
    np.testing.assert_array_equal(got.arrays["S2L2A"], ref.arrays["S2L2A"])
    b04 = got.arrays["S2L2A"][S2.band_names.index("B04")]
    b08 = got.arrays["S2L2A"][S2.band_names.index("B08")]
    assert not np.array_equal(b04, b08)  # not the same (first) band twice


def test_two_assets_on_one_two_band_file_without_a_band_index_are_a_clear_reject(
    bands_dir: dict[str, Any],
) -> None:
    """B04 and B08 assets both point at a 2-band file and each lists only itself: nothing
    says which band is which, so the sample is rejected with ``ambiguous_band`` (before:
    band 1 warped for one of them and a misleading all-nodata reject, or band 1 stored)."""
    hrefs = {**bands_dir["single"], "B04": bands_dir["pair"], "B08": bands_dir["pair"]}
    (r,) = build_block([_row([_scene(_single_band_item(hrefs))])], S2_CFG)
    assert r.reject is not None and r.arrays is None
    assert r.reject["reason"] == RejectReason.AMBIGUOUS_BAND.value
    assert r.reject["modality"] == "S2L2A"
    assert "the file has 2 bands and nothing says which one is B0" in r.reject["message"]


def test_one_band_asset_on_a_multi_band_file_is_never_band_1_by_default(
    bands_dir: dict[str, Any],
) -> None:
    hrefs = {**bands_dir["single"], "B08": bands_dir["stack"]}  # B08 is band 4 of the stack
    (r,) = build_block([_row([_scene(_single_band_item(hrefs))])], S2_CFG)
    assert r.reject is not None and r.reject["reason"] == RejectReason.AMBIGUOUS_BAND.value


def test_band_descriptions_in_the_file_say_which_band_is_which(bands_dir: dict[str, Any]) -> None:
    """Two assets on one file whose GDAL band descriptions name the bands (B08 first)."""
    hrefs = {**bands_dir["single"], "B04": bands_dir["named"], "B08": bands_dir["named"]}
    ref, got = build_block(
        [
            _row([_scene(_single_band_item(bands_dir["single"]))], 0),
            _row([_scene(_single_band_item(hrefs, "named"))], 1),
        ],
        S2_CFG,
    )
    assert _ok(got).arrays is not None and _ok(ref).arrays is not None
    np.testing.assert_array_equal(got.arrays["S2L2A"], ref.arrays["S2L2A"])


def test_a_band_index_beyond_the_file_is_a_reject(bands_dir: dict[str, Any]) -> None:
    sc = _scene(_single_band_item(bands_dir["single"]))
    for a in sc["assets"]:
        if a["band"] == "B04":
            a["band_index"] = 7
    (r,) = build_block([_row([sc])], S2_CFG)
    assert r.reject is not None and r.reject["reason"] == RejectReason.AMBIGUOUS_BAND.value
    assert "the item says band 7, the file has 1 band(s)" in r.reject["message"]


# --------------------------------------------------------------------------- 2. S1 GRD border fill


def _without_nodata(src_href: str, dst: Path, zero_cols: int) -> str:
    """A copy of a GCP-georeferenced DN file with its first ``zero_cols`` columns set to 0
    (GRD swath-edge fill) and no declared nodata, as real GRD products are."""
    with rasterio.open(src_href.removeprefix("file://")) as ds:
        data = ds.read(1)
        gcps, gcrs = ds.gcps
    data[:, :zero_cols] = 0
    return write_raster(dst, data, crs=gcrs, gcps=gcps)


def test_grd_zero_border_is_nodata_and_its_neighbours_match_the_border_free_truth(
    tmp_path: Path,
) -> None:
    synth = Synth(tmp_path, LON0, LAT0)
    truth = synth.grd_scene("GRD", (LON0, LAT0), (374, 374), amplitude_dn=True)
    truth["collection"] = "sentinel-1-grd"
    fill = copy.deepcopy(truth)
    fill["item_id"] = "GRD_fill"
    for a in fill["assets"]:
        a["href"] = _without_nodata(a["href"], tmp_path / "fill" / f"{a['band']}.tif", 187)
        a["nodata"] = None  # the item declares none either
    assert source_convention("sentinel-1-grd").fill_values == (0.0,)  # type: ignore[union-attr]
    cfg = BuildConfig(
        modalities=("S1GRD",),
        required=("S1GRD",),
        max_nodata_fraction=0.9,
        fill_small_gaps=False,
    )
    ref, got = build_block([_row([truth], 0), _row([fill], 1)], cfg)
    a = _ok(got).arrays["S1GRD"].astype(np.float32)  # type: ignore[index]
    b = _ok(ref).arrays["S1GRD"].astype(np.float32)  # type: ignore[index]
    hole = ~np.isfinite(a[0])
    assert 0.2 < hole.mean() < 0.8  # the fill is nodata, not power 0
    assert np.isfinite(b).all()
    # pixels within 3 px of the fill: their kernels straddle it
    from scipy import ndimage

    near = ndimage.binary_dilation(hole, iterations=3) & ~hole
    assert near.sum() > 300
    for band in (0, 1):
        diff = np.abs(a[band][near] - b[band][near])
        assert float(diff.max()) < 0.1, float(diff.max())  # dB


# --------------------------------------------------------------------------- 4. one S2 convention


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One synthetic scene published three ways: Planetary Computer (baseline 05.09, DN =
    10000 * reflectance + 1000), Earth Search (the offset removed from the DN,
    ``earthsearch:boa_offset_applied: true``, -0.1 still declared) and a baseline-02.14
    product without raster:bands (no offset)."""
    root = tmp_path_factory.mktemp("s2conv")
    out: dict[str, dict[str, Any]] = {}
    styles = {
        "pc": (1000, {"s2:processing_baseline": "05.09"}, True),
        "es": (
            0,
            {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True},
            True,
        ),
        "old": (0, {"s2:processing_baseline": "02.14"}, False),
    }
    for name, (add, props, with_rb) in styles.items():
        assets = {}
        for b in FOUR:
            dn = np.rint(_reflectance(b) * 10000 + add).astype(np.uint16)
            href = write_raster(
                root / name / f"{b}.tif", dn, crs=EPSG, transform=_SCENE_T, nodata=0
            )
            assets[b] = {"href": href, "eo:bands": [{"name": b}], **_proj()}
            if with_rb:
                assets[b]["raster:bands"] = _raster_bands(1)
        out[name] = _scene(_stac_item(f"S2_{name}", assets, props))
    return out


def test_one_scene_published_both_ways_gives_identical_corpus_arrays(
    published: dict[str, dict[str, Any]],
) -> None:
    pc, es, old = build_block(
        [_row([published["pc"]], 0), _row([published["es"]], 1), _row([published["old"]], 2)],
        S2_CFG,
    )
    for r in (pc, es, old):
        _ok(r)
        assert r.index_row is not None and r.index_row["s2_convention"] == S2_CONVENTION
    assert pc.arrays is not None and es.arrays is not None and old.arrays is not None
    for name in ("S2L2A", "S2RGB", "NDVI", "CAPTION"):
        np.testing.assert_array_equal(es.arrays[name], pc.arrays[name], err_msg=name)
        np.testing.assert_array_equal(old.arrays[name], pc.arrays[name], err_msg=name)
    assert pc.index_row is not None and es.index_row is not None
    assert pc.index_row["caption"] == es.index_row["caption"]
    assert pc.index_row["quality"]["ndvi_mean"] == es.index_row["quality"]["ndvi_mean"]
    assert pc.index_row["quality"]["s2_dn_shift_S2L2A"] == 0.0  # PC is the convention
    assert es.index_row["quality"]["s2_dn_shift_S2L2A"] == 1000.0
    # the stored DN is the convention's: 10000 * reflectance + 1000
    b04 = pc.arrays["S2L2A"][S2.band_names.index("B04")].astype(np.float64)
    assert 1000 + 0.02 * 10000 < b04.mean() < 1000 + 0.5 * 10000


# --------------------------------------------------------------------------- 5. ESA WorldCover


def _worldcover(root: Path, name: str, bad_fraction: float) -> dict[str, Any]:
    """A WorldCover-coded raster on the sample lattice (ESA codes 10..100, 0 = nodata) with a
    fraction of codes outside the legend (15, 200), and its Planetary Computer-style item."""
    rng = np.random.default_rng(18)
    codes = np.array([c for c, _ in ESA_WORLDCOVER_TO_LULC], np.uint8)
    patches = rng.integers(0, len(codes), (_N // 30 + 1, _N // 30 + 1))
    data = codes[np.kron(patches, np.ones((30, 30), int))[:_N, :_N]]
    bad = rng.random(data.shape) < bad_fraction
    data[bad] = np.where(rng.random(int(bad.sum())) < 0.5, 15, 200)
    href = write_raster(root / f"{name}.tif", data, crs=EPSG, transform=_SCENE_T, nodata=0)
    item = _stac_item(
        name,
        {
            "map": {
                "href": href,
                "roles": ["data"],
                "raster:bands": [{"name": "Band1", "nodata": 0, "data_type": "uint8"}],
                **_proj(),
            }
        },
        {"start_datetime": "2021-01-01T00:00:00Z", "end_datetime": "2021-12-31T23:59:59Z"},
    )
    item["collection"] = "esa-worldcover"
    item["properties"]["datetime"] = None
    return {"scene": _scene(item, "LULC"), "codes": data}


def test_worldcover_codes_are_mapped_onto_the_lulc_legend(tmp_path: Path) -> None:
    wc = _worldcover(tmp_path, "wc_clean", 0.0)
    assert [(a["band"], a["key"]) for a in wc["scene"]["assets"]] == [("class", "map")]
    cfg = BuildConfig(modalities=("LULC",), required=("LULC",), fill_small_gaps=False)
    (r,) = build_block([_row([wc["scene"]])], cfg)
    got = _ok(r).arrays["LULC"][0]  # type: ignore[index]
    off_r, off_c = 18, 18  # the sample sits 180 m inside the scene on the same lattice
    src = wc["codes"][off_r : off_r + 264, off_c : off_c + 264]
    lut = dict(ESA_WORLDCOVER_TO_LULC)
    np.testing.assert_array_equal(got, np.vectorize(lut.get)(src).astype(np.uint8))
    assert set(np.unique(got)) <= set(get_modality("LULC").classes)
    assert not np.any(got[src == 10] == 10)  # ESA tree cover is not Esri's "clouds"
    assert np.all(got[src == 10] == 2)


def test_worldcover_codes_outside_the_legend_are_nodata_and_count(tmp_path: Path) -> None:
    few = _worldcover(tmp_path, "wc_few", 0.004)  # under the 1 % nodata threshold
    many = _worldcover(tmp_path, "wc_many", 0.05)
    cfg = BuildConfig(modalities=("LULC",), required=("LULC",))
    ok, bad = build_block([_row([few["scene"]], 0), _row([many["scene"]], 1)], cfg)
    _ok(ok)
    assert ok.index_row is not None and ok.arrays is not None
    assert 0 < ok.index_row["quality"]["nodata_LULC"] < 0.01
    assert ok.index_row["nodata_filled_px"] > 0  # filled from legend neighbours
    assert set(np.unique(ok.arrays["LULC"])) <= set(get_modality("LULC").classes)
    assert bad.reject is not None and bad.reject["reason"] == RejectReason.NODATA.value
    assert bad.reject["modality"] == "LULC"
