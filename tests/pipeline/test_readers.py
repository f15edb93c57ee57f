from __future__ import annotations

import functools
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from range_server import RangeHandler
from rasterio.control import GroundControlPoint
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window
from sample_kit import write_raster

from terraloom.pipeline.readers import (
    AssetError,
    ReaderOptions,
    check_georeferencing,
    gdal_env,
    gdal_path,
    open_asset,
    open_info,
    read_window,
)
from terraloom.schemas.tables import RejectReason

T = Affine(10, 0, 500_000, 0, -10, 5_000_000)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ramp(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    rows, cols = np.mgrid[0:300, 0:400]
    data = (rows * 1000 + cols + 1).astype(np.uint32).astype(np.float32)
    data[0, 0] = -9999
    href = write_raster(
        tmp_path_factory.mktemp("ramp") / "ramp.tif",
        data,
        crs=32633,
        transform=T,
        nodata=-9999,
        overviews=(2, 4),
    )
    return href, data


def test_gdal_path_maps_every_scheme_to_a_vsi_path() -> None:
    assert gdal_path("file:///data/a%20b.tif") == "/data/a b.tif"
    assert gdal_path("/data/x.tif") == "/data/x.tif"
    assert gdal_path("https://host/a/b.tif") == "/vsicurl/https://host/a/b.tif"
    assert gdal_path("s3://bucket/key/b.tif") == "/vsis3/bucket/key/b.tif"
    assert gdal_path("gs://bucket/b.tif") == "/vsigs/bucket/b.tif"
    assert gdal_path("/vsizip/x.zip/a.tif") == "/vsizip/x.zip/a.tif"


def test_window_read_keeps_values_and_locates_the_window(ramp: tuple[str, np.ndarray]) -> None:
    href, data = ramp
    info = open_info(href)
    assert info.crs is not None and info.crs.to_epsg() == 32633
    assert info.transform == T and (info.height, info.width) == (300, 400)
    assert info.overviews == (2, 4)
    rw = read_window(href, Window(10, 20, 50, 30))
    assert rw.data.shape == (30, 50) and rw.data.dtype == np.float32
    np.testing.assert_array_equal(rw.data, data[20:50, 10:60])
    assert rw.transform == T @ Affine.translation(10, 20)
    assert rw.bytes_decoded == 30 * 50 * 4
    corner = read_window(href, Window(0, 0, 2, 2))
    assert np.isnan(corner.data[0, 0]) and corner.data[0, 1] == 2.0  # declared nodata -> NaN


def test_decimated_read_uses_the_overview_grid(ramp: tuple[str, np.ndarray]) -> None:
    href, _ = ramp
    with open_asset(href) as asset:
        rw = asset.read(
            Window(0, 0, 400, 300), decimation=4, resampling=rasterio.enums.Resampling.nearest
        )
    assert rw.data.shape == (75, 100)
    assert rw.transform == T @ Affine.scale(4, 4)


def test_gcp_asset_has_no_transform_and_window_gcps_are_shifted(tmp_path: Path) -> None:
    gcps = [
        GroundControlPoint(row=r, col=c, x=15 + c * 1e-4, y=45 - r * 1e-4, z=0.0)
        for r in (0, 100)
        for c in (0, 100)
    ]
    href = write_raster(tmp_path / "grd.tif", np.ones((100, 100), np.float32), crs=4326, gcps=gcps)
    info = open_info(href)
    assert info.transform is None and info.has_gcps
    assert info.source_crs is not None and info.source_crs.to_epsg() == 4326
    rw = read_window(href, Window(10, 20, 30, 30))
    assert rw.transform is None
    by_id = {(g.x, g.y): g for g in rw.gcps}
    g = by_id[(15 + 100 * 1e-4, 45 - 100 * 1e-4)]
    assert (g.row, g.col) == (80.0, 90.0)


def test_missing_file_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(AssetError) as e:
        open_info((tmp_path / "nope.tif").as_uri())
    assert e.value.reason is RejectReason.UNREACHABLE_ASSET
    assert "not found" in e.value.message


def test_an_href_the_policy_refuses_is_never_opened(tmp_path: Path) -> None:
    from terraloom.pipeline.hrefs import HrefPolicy

    data = np.ones((8, 8), np.float32)
    outside = write_raster(tmp_path / "outside" / "a.tif", data, crs=32633, transform=T)
    policy = HrefPolicy(roots=(str(tmp_path / "catalog"),))
    for href in (outside, "/dev/stdin", f"http://127.0.0.1:{_closed_port()}/a.tif"):
        with pytest.raises(AssetError) as e:
            open_info(href, policy)
        assert e.value.reason is RejectReason.HREF_NOT_ALLOWED, href
    with pytest.raises(AssetError) as e:
        read_window(outside, Window(0, 0, 2, 2), policy=policy)
    assert e.value.reason is RejectReason.HREF_NOT_ALLOWED
    assert open_info(outside, HrefPolicy(roots=(str(tmp_path),))).width == 8
    assert open_info(outside).width == 8  # no policy: the caller made the href itself


def test_closed_port_https_is_unreachable() -> None:
    href = f"http://127.0.0.1:{_closed_port()}/scene/B04.tif"
    with (
        gdal_env(ReaderOptions(http_timeout_s=2, http_max_retry=0)),
        pytest.raises(AssetError) as e,
    ):
        open_info(href)
    assert e.value.reason is RejectReason.UNREACHABLE_ASSET


def test_truncated_cog_is_unreadable(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = write_raster(
        tmp_path / "src.tif",
        rng.integers(1, 5000, (512, 512)).astype(np.uint16),
        crs=32633,
        transform=T,
        nodata=0,
    )
    cog = tmp_path / "cog.tif"
    rio_copy(gdal_path(src), cog, driver="COG", compress="deflate", blocksize=256)
    raw = cog.read_bytes()
    cut = tmp_path / "truncated.tif"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AssetError) as e, open_asset(cut.as_uri()) as asset:
        asset.read(Window(0, 0, 512, 512))
    assert e.value.reason is RejectReason.UNREADABLE_ASSET
    assert "TIFF" in e.value.message or "Read" in e.value.message


def test_garbage_file_is_unreadable(tmp_path: Path) -> None:
    p = tmp_path / "garbage.tif"
    p.write_bytes(b"this is not a tiff" * 64)
    with pytest.raises(AssetError) as e:
        open_info(p.as_uri())
    assert e.value.reason is RejectReason.UNREADABLE_ASSET


def test_fsspec_protocols_are_read_through_an_opener(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    data = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    local = write_raster(tmp_path / "m.tif", data, crs=32633, transform=T)
    fs = fsspec.filesystem("memory")
    fs.pipe("/terraloom-test/m.tif", Path(gdal_path(local)).read_bytes())
    try:
        rw = read_window("memory://terraloom-test/m.tif", Window(3, 4, 5, 6))
    finally:
        fs.rm("/terraloom-test/m.tif")
    np.testing.assert_array_equal(rw.data, data[4:10, 3:8])


def test_nonfinite_source_values_are_flagged_not_hidden(tmp_path: Path) -> None:
    data = np.ones((32, 32), np.float32)
    data[3, 4] = np.inf
    data[5, 6] = np.nan
    data[7, 8] = -9999
    href = write_raster(tmp_path / "f.tif", data, crs=32633, transform=T, nodata=-9999)
    rw = read_window(href, Window(0, 0, 32, 32))
    assert rw.bad is not None and rw.bad.sum() == 2 and rw.bad[3, 4] and rw.bad[5, 6]
    assert np.isnan(rw.data[7, 8]) and not rw.bad[7, 8]  # declared nodata is not "bad"


def test_georeferencing_check_compares_crs_and_footprint_not_pixel_size(
    ramp: tuple[str, np.ndarray],
) -> None:
    info = open_info(ramp[0])
    ok = check_georeferencing(info, 32633, list(T)[:6], (300, 400))
    assert ok is None
    # the same footprint described at 2.5 m (the file is a decimated rendition): fine
    assert (
        check_georeferencing(info, 32633, [2.5, 0, 500_000, 0, -2.5, 5_000_000], (1200, 1600))
        is None
    )
    wrong_crs = check_georeferencing(info, 32634, list(T)[:6], (300, 400))
    assert wrong_crs is not None and "EPSG:32634" in wrong_crs
    shifted = check_georeferencing(info, 32633, [10, 0, 500_100, 0, -10, 5_000_000], (300, 400))
    assert shifted is not None and "footprint" in shifted
    assert (
        check_georeferencing(info, None, None, None) is None
    )  # nothing declared: nothing to check


_RangeHandler = RangeHandler


def test_http_hrefs_are_read_with_range_requests(tmp_path: Path) -> None:
    data = (np.arange(300 * 400, dtype=np.float32) % 977).reshape(300, 400)
    write_raster(tmp_path / "scene" / "B04.tif", data, crs=32633, transform=T)
    handler = functools.partial(_RangeHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        href = f"http://127.0.0.1:{server.server_address[1]}/scene/B04.tif"
        with gdal_env(ReaderOptions(http_timeout_s=5, http_max_retry=0)):
            info = open_info(href)
            rw = read_window(href, Window(100, 50, 40, 30))
            with pytest.raises(AssetError) as e:
                open_info(href.replace("B04", "B99"))
    finally:
        server.shutdown()
        server.server_close()
    assert info.transform == T and info.crs is not None and info.crs.to_epsg() == 32633
    np.testing.assert_array_equal(rw.data, data[50:80, 100:140])
    assert e.value.reason is RejectReason.UNREACHABLE_ASSET  # HTTP 404


def _gdal_cache_max() -> int:
    """GDAL's block cache size in bytes, asked of the libgdal rasterio loaded."""
    import ctypes

    with open("/proc/self/maps") as f:
        lib = next(line.split()[-1] for line in f if "libgdal" in line)
    gdal = ctypes.CDLL(lib)
    gdal.GDALGetCacheMax64.restype = ctypes.c_int64
    return int(gdal.GDALGetCacheMax64())


def test_gdal_env_sets_a_block_cache_of_the_configured_mebibytes() -> None:
    # rasterio passes an int GDAL_CACHEMAX to GDALSetCacheMax64 as bytes: 256 would be a
    # 256-byte cache, so every tile is decoded again at every read
    with gdal_env(ReaderOptions(gdal_cache_mb=96)):
        assert _gdal_cache_max() == 96 * 2**20


def test_local_opens_inside_gdal_env_enter_no_env_of_their_own(
    ramp: tuple[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside the build's Env a local file is opened without a nested Env (rasterio's own
    per-call Env included): entering and leaving one re-applies every option of the Env
    around it. Outside any Env, or when the Env says otherwise, the open sets its option."""
    href, data = ramp
    entered: list[dict] = []
    real_enter = rasterio.Env.__enter__

    def counting_enter(self: rasterio.Env) -> rasterio.Env:
        entered.append(dict(self.options))
        return real_enter(self)

    monkeypatch.setattr(rasterio.Env, "__enter__", counting_enter)
    with gdal_env():
        entered.clear()
        with open_asset(href) as asset:
            window = asset.read(Window(5, 7, 20, 10))
        assert entered == []
        np.testing.assert_array_equal(window.data, data[7:17, 5:25])
    # an Env that disables the directory reading: a local open still reads it (sidecars)
    with gdal_env(ReaderOptions(gdal_options=(("GDAL_DISABLE_READDIR_ON_OPEN", "TRUE"),))):
        entered.clear()
        with open_asset(href):
            pass
        assert {"GDAL_DISABLE_READDIR_ON_OPEN": "FALSE"} in entered


def test_georeferencing_check_of_one_crs_against_several_codes(tmp_path: Path) -> None:
    """The CRS comparison is remembered per (CRS, code): the same file is still a match
    for its own code and a mismatch for another, in any order."""
    href = write_raster(tmp_path / "a.tif", np.ones((30, 40), np.float32), crs=32633, transform=T)
    info = open_info(href)
    for _ in range(2):
        assert check_georeferencing(info, 32634, list(T)[:6], (30, 40)) is not None
        assert check_georeferencing(info, 32633, list(T)[:6], (30, 40)) is None
