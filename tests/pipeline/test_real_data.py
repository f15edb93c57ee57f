"""Real-data checks of reading and co-registration on the fixtures in ``../shared/real``.

* s2l2a_croatia: JPEG2000 files named ``.tif`` whose georeferencing is only in
  ``.aux.xml`` sidecars, decimated to 120 m while the items describe the 10 m products;
  B02/B03/B04/B08/SCL are local, every other band is a remote href.
* dem_glo30_losangeles: four Copernicus GLO-30 crops meeting at (-118, 34).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling as R
from rasterio.merge import merge
from rasterio.warp import reproject
from sample_kit import asset, grid_transform, plan_row, scene

from terraloom.pipeline.alignment import subpixel_shift
from terraloom.pipeline.readers import open_info
from terraloom.pipeline.sample import BuildConfig, build_block
from terraloom.schemas.modalities import S2_CONVENTION, get_modality
from terraloom.schemas.tables import RejectReason

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "real"
CROATIA = REAL / "s2l2a_croatia"
LA = REAL / "dem_glo30_losangeles"

pytestmark = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real-data fixtures not found at {REAL} (../shared/real)"
)

LOCAL = ("B02", "B03", "B04", "B08")
S2 = get_modality("S2L2A")
#: Remote hrefs fail fast and deterministically: all HTTP goes to a closed local port.
OFFLINE = (("GDAL_HTTP_PROXY", "127.0.0.1:9"), ("GDAL_HTTP_TIMEOUT", "3"))
S2_ONLY = dict(
    modalities=("S2L2A", "S2RGB", "NDVI", "GEO", "CAPTION"),
    required=("S2L2A",),
    http_max_retry=0,
    gdal_options=OFFLINE,
)


@pytest.fixture(scope="module")
def croatia() -> dict[str, dict[str, Any]]:
    if not CROATIA.is_dir():
        pytest.skip(f"{CROATIA} not found")
    from terraloom.pipeline.sources.static import StaticSource

    src = StaticSource(str(CROATIA / "catalog.json"))
    return {it.id: it.to_scene("S2L2A") for it in src.items("sentinel-2-l2a")}


def _s2_row(scenes: list[dict[str, Any]], epsg: int, t: Affine, i: int = 0) -> dict[str, Any]:
    return plan_row(f"croatia_{epsg}_{i}", epsg, t, copy.deepcopy(scenes), row=i)


def _t33(x: float, y: float) -> Affine:
    return Affine(10, 0, x - 1320, 0, -10, y + 1320)


def test_sidecar_georeferencing_is_read_for_jpeg2000_named_tif() -> None:
    info = open_info((CROATIA / "sentinel-2-l2a" / "S2A_33TWL_20230815_0_L2A" / "B04.tif").as_uri())
    assert info.crs is not None and info.crs.to_epsg() == 32633
    assert info.transform == Affine(120, 0, 499_980, 0, -120, 5_100_000)
    assert info.nodata == 0


def test_croatia_builds_local_bands_on_the_utm33_grid(croatia: dict[str, dict[str, Any]]) -> None:
    cfg = BuildConfig(band_subset=(("S2L2A", LOCAL),), **S2_ONLY)  # type: ignore[arg-type]
    sc = croatia["S2A_33TWL_20230815_0_L2A"]
    t = _t33(560_000, 5_060_000)
    (r,) = build_block([_s2_row([sc], 32633, t)], cfg)
    assert r.reject is None, r.reject
    assert r.arrays is not None and r.index_row is not None
    s2 = r.arrays["S2L2A"]
    for i, b in enumerate(S2.band_names):
        assert (s2[i] > 0).all() if b in LOCAL else (s2[i] == 0).all(), b
    # the same grid warped by GDAL straight from the file (same CRS: GDAL is exact here),
    # plus the 1000 DN Earth Search removed (earthsearch:boa_offset_applied): the corpus
    # stores every S2 item as DN = 10000 * reflectance + 1000
    assert r.index_row["s2_convention"] == S2_CONVENTION
    assert r.index_row["quality"]["s2_dn_shift_S2L2A"] == 1000.0
    for band in LOCAL:
        ref = np.zeros((264, 264), np.float32)
        with rasterio.open(
            CROATIA / "sentinel-2-l2a" / "S2A_33TWL_20230815_0_L2A" / f"{band}.tif"
        ) as ds:
            reproject(
                rasterio.band(ds, 1), ref, dst_transform=t, dst_crs=ds.crs, resampling=R.bilinear
            )
        ours = s2[S2.band_names.index(band)].astype(np.float32)
        assert np.abs(ours - (ref + 1000)).max() <= 1.0, band  # uint16 rounding only
    assert r.arrays["cloud_mask"].max() < 255  # SCL read and classified everywhere
    assert 0.0 <= r.index_row["cloud_fraction"] <= 0.2
    assert 0.2 < r.index_row["quality"]["ndvi_mean"] < 0.9  # August vegetation in Croatia
    assert (r.arrays["S2RGB"] > 0).any()


def test_croatia_cross_zone_grid_agrees_with_the_home_zone(
    croatia: dict[str, dict[str, Any]],
) -> None:
    """The same scene on a 34N grid (as a sample centred in the next zone needs) and on
    its own 33N grid: resampled onto each other they agree, with no shift."""
    cfg = BuildConfig(band_subset=(("S2L2A", LOCAL),), **S2_ONLY)  # type: ignore[arg-type]
    sc = croatia["S2A_33TWL_20230815_0_L2A"]
    t33 = _t33(560_000, 5_060_000)
    lon, lat = rasterio.warp.transform(
        CRS.from_epsg(32633), CRS.from_epsg(4326), [560_000], [5_060_000]
    )
    t34 = grid_transform(32634, lon[0], lat[0])
    r33, r34 = build_block([_s2_row([sc], 32633, t33, 0), _s2_row([sc], 32634, t34, 1)], cfg)
    assert r33.reject is None and r34.reject is None, (r33.reject, r34.reject)
    assert r33.arrays is not None and r34.arrays is not None
    assert r34.arrays["epsg"] == 32634
    for band in ("B04", "B08"):
        i = S2.band_names.index(band)
        a = r33.arrays["S2L2A"][i].astype(np.float32)
        b = np.full((264, 264), np.nan, np.float32)
        reproject(
            r34.arrays["S2L2A"][i].astype(np.float32),
            b,
            src_transform=t34,
            src_crs=CRS.from_epsg(32634),
            dst_transform=t33,
            dst_crs=CRS.from_epsg(32633),
            src_nodata=0,
            dst_nodata=np.nan,
            resampling=R.bilinear,
        )
        both = np.isfinite(b) & (a > 0)
        assert both.mean() > 0.8  # the 34N grid is rotated ~3 deg: most of the square overlaps
        rel = np.abs(a[both] - b[both]).mean() / a[both].std()
        assert rel < 0.05, band
        ys, xs = np.where(both)
        crop = (slice(ys.min() + 20, ys.max() - 20), slice(xs.min() + 20, xs.max() - 20))
        dy, dx = subpixel_shift(a[crop], np.where(np.isfinite(b), b, np.nan)[crop])
        assert np.hypot(dy, dx) < 0.25, (band, dy, dx)


def test_croatia_tiles_mosaic_across_the_tile_edge(croatia: dict[str, dict[str, Any]]) -> None:
    """A sample across TWL's northern edge: TWL (first in plan order) fills the south,
    TWM the north; no nodata anywhere."""
    cfg = BuildConfig(band_subset=(("S2L2A", LOCAL),), **S2_ONLY)  # type: ignore[arg-type]
    twl, twm = croatia["S2A_33TWL_20230815_0_L2A"], croatia["S2A_33TWM_20230815_0_L2A"]
    t = _t33(560_000, 5_100_000)
    mosaic, only_twl, only_twm = build_block(
        [
            _s2_row([twl, twm], 32633, t, 0),
            _s2_row([twl], 32633, t, 1),
            _s2_row([twm], 32633, t, 2),
        ],
        cfg,
    )
    assert mosaic.reject is None, mosaic.reject
    assert (
        only_twl.reject is not None and only_twl.reject["reason"] == RejectReason.NODATA.value
    )  # half outside TWL
    assert only_twm.reject is None
    assert mosaic.arrays is not None and only_twm.arrays is not None
    i = S2.band_names.index("B04")
    m = mosaic.arrays["S2L2A"][i].astype(int)
    assert (m > 0).all()
    north = m[:100]  # > 6 source px north of TWL's edge: TWM only
    np.testing.assert_array_equal(north, only_twm.arrays["S2L2A"][i][:100].astype(int))


def test_croatia_remote_only_bands_give_a_clear_reject(croatia: dict[str, dict[str, Any]]) -> None:
    cfg = BuildConfig(**S2_ONLY)  # type: ignore[arg-type]  # all 12 bands: 8 of them are remote-only
    (r,) = build_block(
        [_s2_row([croatia["S2A_33TWL_20230815_0_L2A"]], 32633, _t33(560_000, 5_060_000))], cfg
    )
    assert r.arrays is None and r.reject is not None
    assert r.reject["reason"] == RejectReason.UNREACHABLE_ASSET.value
    assert r.reject["modality"] == "S2L2A"
    assert "https://sentinel-cogs" in r.reject["message"]


def test_glo30_los_angeles_tiles_mosaic_onto_utm11_without_seam() -> None:
    if not LA.is_dir():
        pytest.skip(f"{LA} not found")
    tiles = sorted(LA.glob("*.tif"))
    assert len(tiles) == 4
    scenes = []
    lo, hi = np.inf, -np.inf
    for p in tiles:
        with rasterio.open(p) as ds:
            a = ds.read(1)
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
            scenes.append(
                scene(
                    "DEM",
                    p.stem,
                    [
                        asset(
                            "elevation",
                            p.resolve().as_uri(),
                            epsg=4326,
                            transform=ds.transform,
                            shape=ds.shape,
                            key="data",
                        )
                    ],
                    epsg=4326,
                    collection="cop-dem-glo-30",
                )
            )
    t = grid_transform(32611, -118.0, 34.0)
    cfg = BuildConfig(modalities=("DEM", "GEO", "CAPTION"), required=("DEM",))
    (r,) = build_block([plan_row("la", 32611, t, scenes)], cfg)
    assert r.reject is None, r.reject
    assert r.arrays is not None and r.index_row is not None
    dem = r.arrays["DEM"][0]
    assert np.isfinite(dem).all()
    assert lo <= dem.min() and dem.max() <= hi  # elevations in the tiles' range
    # the same mosaic done by GDAL (merge, then warp): ours matches it everywhere
    with rasterio.Env():
        srcs = [rasterio.open(p) for p in tiles]
        try:
            merged, mt = merge(srcs)
        finally:
            for s in srcs:
                s.close()
    ref = np.full((264, 264), np.nan, np.float32)
    reproject(
        merged[0],
        ref,
        src_transform=mt,
        src_crs=CRS.from_epsg(4326),
        dst_transform=t,
        dst_crs=CRS.from_epsg(32611),
        resampling=R.bilinear,
        dst_nodata=np.nan,
    )
    assert np.abs(dem - ref).max() < 0.5  # metres; GDAL's approximate transform aside
    # no seam: steps across the tiles' meeting lines are like steps anywhere else
    xs, ys = np.meshgrid(np.arange(264) + 0.5, np.arange(264) + 0.5)
    lon, lat = rasterio.warp.transform(
        CRS.from_epsg(32611), CRS.from_epsg(4326), *(t @ (xs.ravel(), ys.ravel()))
    )
    lon = np.asarray(lon).reshape(264, 264)
    lat = np.asarray(lat).reshape(264, 264)
    dx = np.abs(np.diff(dem, axis=1))
    seam_x = (lon[:, :-1] < -118.0) != (lon[:, 1:] < -118.0)
    dy = np.abs(np.diff(dem, axis=0))
    seam_y = (lat[:-1] < 34.0) != (lat[1:] < 34.0)
    assert seam_x.sum() > 200 and seam_y.sum() > 200  # the sample straddles both meeting lines
    assert dx[seam_x].mean() < 2 * dx.mean() and dy[seam_y].mean() < 2 * dy.mean()
    assert "m" in r.index_row["caption"]
