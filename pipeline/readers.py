"""Windowed raster reads through GDAL's virtual file systems (and fsspec as a fallback).

Every asset href of a plan goes through :func:`gdal_path`, so ``file://``, plain paths,
``https://`` (``/vsicurl/``), ``s3://`` (``/vsis3/``), ``gs://`` and ``az://`` are read by
GDAL itself with range requests, and any other fsspec protocol (``memory://``, ...) is
opened through an fsspec opener. Failures are classified once, here, into the reject
reasons the corpus records: a missing file or an HTTP/connection failure is
``UNREACHABLE_ASSET``; a file that exists but cannot be decoded (truncated COG, garbage)
is ``UNREADABLE_ASSET``; georeferencing that disagrees with the item's ``proj:*`` is
``CRS_MISMATCH``; an href the :class:`~pipeline.hrefs.HrefPolicy` refuses (a file outside
the catalog, a device, a ``/vsi`` chain, a loopback or private host, an undeclared
scheme) is ``HREF_NOT_ALLOWED`` and is never opened, so it costs no I/O.

A read returns a :class:`RasterWindow`: float32 values with NaN for nodata plus the
window's own geolocation (an affine transform, or GCPs shifted into the window for radar
geometry), so the co-registration step never goes back to the file.

Why one module of ~600 lines: it is the one read path of an asset, and its parts only
serve that read: the href mapping and policy check decide what may be opened, the open and
the georeferencing check decide whether it is what the item says, and the failure
classification turns every way the read can go wrong into one reject reason. Split, each
part would need the others' private state (the open dataset, its classified errors).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import Resampling as GdalResampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from terraloom.pipeline.hrefs import HrefPolicy, href_refusal
from terraloom.schemas.tables import RejectReason

__all__ = [
    "affine_xy",
    "Asset",
    "AssetError",
    "AssetInfo",
    "HrefPolicy",
    "RasterWindow",
    "ReaderOptions",
    "check_georeferencing",
    "gdal_env",
    "gdal_path",
    "check_href",
    "is_remote",
    "open_asset",
    "open_info",
    "pixel_bounds",
    "read_window",
    "resolve_band",
    "split_vertical",
]

_VSI_PREFIX = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "gcs": "/vsigs/",
    "az": "/vsiaz/",
    "abfs": "/vsiaz/",
}

#: Fragments of GDAL/curl messages that mean "could not get the bytes" rather than
#: "got bytes that do not decode".
_UNREACHABLE_HINTS = (
    "does not exist in the file system",
    "no such file",
    "http response code",
    "http error",
    "couldn't connect",
    "could not connect",
    "connection refused",
    "could not resolve",
    "couldn't resolve",
    "timed out",
    "timeout",
    "failed to connect",
    "access denied",
    "curl error",
    "403",
    "404",
)


class AssetError(Exception):
    """An asset could not be used; carries the reject reason the sample will get."""

    def __init__(self, reason: RejectReason, href: str, message: str) -> None:
        super().__init__(f"{reason.value}: {href}: {message}")
        self.reason = reason
        self.href = href
        self.message = message


@dataclass(frozen=True)
class ReaderOptions:
    """GDAL settings of a read session (timeouts small enough that dead hosts fail fast)."""

    gdal_cache_mb: int = 256
    http_timeout_s: int = 20
    http_connect_timeout_s: int = 5
    http_max_retry: int = 2
    http_retry_delay_s: float = 0.5
    #: Anonymous S3 access (public buckets); set False to let GDAL find credentials itself.
    s3_anonymous: bool = True
    #: Extra GDAL configuration options, e.g. (("GDAL_HTTP_PROXY", "host:port"),).
    gdal_options: tuple[tuple[str, str], ...] = ()


def gdal_env(options: ReaderOptions | None = None) -> rasterio.Env:
    """A ``rasterio.Env`` with the read settings (enter it around reads, per thread)."""
    o = options or ReaderOptions()
    cfg: dict[str, Any] = {
        # bytes: rasterio hands an int straight to GDALSetCacheMax64, so 256 would be a
        # 256-byte block cache (every tile decoded again at each read, never kept)
        "GDAL_CACHEMAX": int(o.gdal_cache_mb) * 2**20,
        "GDAL_HTTP_TIMEOUT": int(o.http_timeout_s),
        "GDAL_HTTP_CONNECTTIMEOUT": int(o.http_connect_timeout_s),
        "GDAL_HTTP_MAX_RETRY": int(o.http_max_retry),
        "GDAL_HTTP_RETRY_DELAY": float(o.http_retry_delay_s),
        "GDAL_HTTP_MULTIRANGE": "YES",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "VSI_CACHE": "TRUE",
        "CPL_VSIL_CURL_USE_HEAD": "NO",
        # GDAL's default, set here so that opening a local file (which wants it) enters
        # no Env of its own: a nested Env per open cost ~0.15 ms (see _readdir_env)
        "GDAL_DISABLE_READDIR_ON_OPEN": "FALSE",
    }
    if o.s3_anonymous:
        cfg["AWS_NO_SIGN_REQUEST"] = "YES"
    cfg.update(dict(o.gdal_options))
    return rasterio.Env(**cfg)


def is_remote(href: str) -> bool:
    scheme = urlparse(href).scheme.lower()
    return scheme in _VSI_PREFIX or href.startswith(("/vsicurl", "/vsis3", "/vsigs", "/vsiaz"))


def gdal_path(href: str) -> str:
    """Asset href -> path GDAL opens (``/vsicurl/``, ``/vsis3/``, local path, ...).

    Unknown schemes are returned unchanged; :func:`open_info` opens them through fsspec.
    """
    if href.startswith("/vsi"):
        return href
    parsed = urlparse(href)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        return unquote(parsed.path)
    if scheme in ("http", "https"):
        return _VSI_PREFIX[scheme] + href
    if scheme in _VSI_PREFIX:
        return _VSI_PREFIX[scheme] + parsed.netloc + parsed.path
    if len(scheme) <= 1:  # plain path (or a Windows drive letter)
        return href
    return href


def _fsspec_opener(href: str) -> Any | None:
    scheme = urlparse(href).scheme.lower()
    if len(scheme) <= 1 or scheme == "file" or scheme in _VSI_PREFIX or href.startswith("/vsi"):
        return None
    import fsspec

    fs, _ = fsspec.core.url_to_fs(href)
    return fs


def _messages(exc: BaseException) -> str:
    """The messages of an exception and its causes (rasterio chains GDAL's detail)."""
    parts: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(parts) < 5:
        text = str(e).strip()
        if text and text not in parts:
            parts.append(text)
        e = e.__cause__ or e.__context__
    return "; ".join(parts) or type(exc).__name__


def _classify(exc: BaseException, href: str) -> AssetError:
    msg = _messages(exc)
    low = msg.lower()
    if any(h in low for h in _UNREACHABLE_HINTS):
        return AssetError(RejectReason.UNREACHABLE_ASSET, href, msg)
    return AssetError(RejectReason.UNREADABLE_ASSET, href, msg)


def check_href(href: str, policy: HrefPolicy | None) -> None:
    """Raise ``HREF_NOT_ALLOWED`` when ``policy`` refuses ``href`` (None: no policy)."""
    if policy is None:
        return
    why = href_refusal(href, policy)
    if why is not None:
        raise AssetError(RejectReason.HREF_NOT_ALLOWED, href, why)


#: ``rasterio.open`` without its wrapper, which enters an Env of its own on every call to
#: give remote paths their credentials and on the way out re-applies every option of the
#: Env around it; a local path inside :func:`gdal_env` needs neither (~0.1 ms per open).
_open_local = getattr(rasterio.open, "__wrapped__", rasterio.open)


def _readdir_env(value: str) -> Any:
    """An Env setting ``GDAL_DISABLE_READDIR_ON_OPEN`` to ``value``, or nothing when the
    Env around it (:func:`gdal_env`) already has that value: a build opens a file per
    source per block, and entering and leaving an Env restores every option each time."""
    current = (
        rasterio.env.getenv().get("GDAL_DISABLE_READDIR_ON_OPEN") if rasterio.env.hasenv() else None
    )
    if current == value:
        return nullcontext()
    return rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN=value)


@contextmanager
def _open(href: str, policy: HrefPolicy | None = None) -> Iterator[Any]:
    """Open a dataset, mapping every failure to an :class:`AssetError`.

    The href policy is checked first, before any I/O. Local files keep GDAL's directory
    reading so ``.aux.xml`` sidecars (which carry the georeferencing of some JPEG2000
    products) are found; remote files skip it, which saves one listing request per open.
    """
    check_href(href, policy)
    path = gdal_path(href)
    remote = is_remote(href)
    opener = _fsspec_opener(href)
    if opener is None and not remote and not os.path.exists(path):
        raise AssetError(RejectReason.UNREACHABLE_ASSET, href, f"asset file not found: {path}")
    readdir = "EMPTY_DIR" if remote else "FALSE"
    try:
        with _readdir_env(readdir):
            if opener is not None:
                ds = rasterio.open(href, opener=opener)
            elif not remote and rasterio.env.hasenv():
                ds = _open_local(path)
            else:
                ds = rasterio.open(path)
    except AssetError:
        raise
    except (RasterioError, OSError, ValueError) as exc:
        raise _classify(exc, href) from exc
    try:
        yield ds
    finally:
        ds.close()


@dataclass(frozen=True)
class AssetInfo:
    """Georeferencing and layout of one asset, as the file itself declares it."""

    href: str
    crs: CRS | None
    transform: Affine | None  # None when the file is georeferenced only by GCPs
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    gcps: tuple[GroundControlPoint, ...] = ()
    gcps_crs: CRS | None = None
    overviews: tuple[int, ...] = ()
    #: Per band (file order): declared nodata and GDAL description (a band's name).
    band_nodata: tuple[float | None, ...] = ()
    descriptions: tuple[str | None, ...] = ()
    #: The vertical part of a compound (or 3D) CRS: its WKT (``crs`` is then the horizontal
    #: part the geometry is computed in); None when the file declares no vertical datum.
    vertical_wkt: str | None = None

    @property
    def has_gcps(self) -> bool:
        return bool(self.gcps) and self.gcps_crs is not None

    @property
    def source_crs(self) -> CRS | None:
        """CRS in which the geolocation (transform or GCPs) is expressed."""
        return self.gcps_crs if self.transform is None else self.crs

    @property
    def resolution(self) -> float | None:
        if self.transform is None:
            return None
        return float(math.hypot(self.transform.a, self.transform.d))

    @property
    def bounds(self) -> tuple[float, float, float, float] | None:
        if self.transform is None:
            return None
        return pixel_bounds(self.transform, self.height, self.width)


def affine_xy(t: Affine, cols: Any, rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """Apply an affine transform to pixel coordinates (arrays or scalars) -> (x, y)."""
    c = np.asarray(cols, np.float64)
    r = np.asarray(rows, np.float64)
    return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f


def pixel_bounds(transform: Affine, height: int, width: int) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a raster, for any sign of the pixel sizes."""
    xs, ys = [], []
    for r, c in ((0, 0), (0, width), (height, 0), (height, width)):
        x, y = affine_xy(transform, c, r)
        xs.append(float(x))
        ys.append(float(y))
    return min(xs), min(ys), max(xs), max(ys)


def split_vertical(crs: CRS | None) -> tuple[CRS | None, str | None]:
    """(horizontal CRS, vertical CRS WKT or None) of a CRS.

    A compound CRS (EPSG:9707 = WGS 84 + EGM96 height) splits into its parts; a 3D CRS
    (EPSG:4979) is its 2D counterpart plus the WGS 84 ellipsoid as vertical reference,
    written ``ELLIPSOIDAL``. Geometry is always computed in the horizontal part.
    """
    if crs is None:
        return None, None
    horizontal, vertical = _split_wkt(crs.to_wkt())
    return (crs if horizontal is None else horizontal), vertical


@functools.lru_cache(maxsize=256)
def _split_wkt(wkt: str) -> tuple[CRS | None, str | None]:
    """:func:`split_vertical` of a WKT (None: the CRS is its own horizontal part). Parsed
    once per process and CRS: every asset of a build declares one of a few CRSs, and
    pyproj's parse was a third of the cost of opening one."""
    from pyproj import CRS as ProjCRS

    try:
        pc = ProjCRS.from_wkt(wkt)
    except Exception:  # a CRS pyproj cannot read: keep it as it is
        return None, None
    if pc.is_compound and len(pc.sub_crs_list) >= 2:
        horiz, vert = pc.sub_crs_list[0], pc.sub_crs_list[1]
        return CRS.from_wkt(horiz.to_wkt()), vert.to_wkt()
    if len(pc.axis_info) == 3 and not pc.is_vertical:
        return CRS.from_wkt(pc.to_2d().to_wkt()), ELLIPSOIDAL
    return None, None


#: ``AssetInfo.vertical_wkt`` of a 3D CRS: heights above the ellipsoid.
ELLIPSOIDAL = "ELLIPSOIDAL"


def resolve_band(info: AssetInfo, band_index: int | None, names: Sequence[str]) -> int | str:
    """The 1-based file band holding a band, or why it cannot be told (a message).

    The item's band index when it has one; the only band of a one-band file; else the band
    whose GDAL description is one of ``names`` (the registry band and its asset key). A
    multi-band file with none of these is never read as band 1 by default.
    """
    if band_index is not None:
        if 1 <= int(band_index) <= info.count:
            return int(band_index)
        return f"the item says band {band_index}, the file has {info.count} band(s)"
    if info.count == 1:
        return 1
    want = {n.lower() for n in names if n}
    hits = [i + 1 for i, d in enumerate(info.descriptions) if d and d.strip().lower() in want]
    if len(hits) == 1:
        return hits[0]
    return (
        f"the file has {info.count} bands and nothing says which one is {names[0]} "
        "(no band index from the item's eo:bands/raster:bands order, no band description "
        f"named {'/'.join(sorted(want))})"
    )


def _describe(ds: Any, href: str) -> AssetInfo:
    gcps, gcps_crs = ds.gcps if ds.gcps else ([], None)
    identity = ds.transform == Affine.identity()
    vertical: str | None = None
    if (ds.crs is None or identity) and not gcps:
        transform, crs = None, None
    else:
        transform = None if (gcps and (identity or ds.crs is None)) else ds.transform
        crs, vertical = split_vertical(ds.crs)
    try:
        overviews = tuple(ds.overviews(1))
    except RasterioError:
        overviews = ()
    return AssetInfo(
        href=href,
        crs=crs,
        transform=transform,
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtype=ds.dtypes[0],
        nodata=ds.nodata,
        gcps=tuple(gcps),
        gcps_crs=gcps_crs,
        overviews=overviews,
        band_nodata=tuple(ds.nodatavals),
        descriptions=tuple(ds.descriptions),
        vertical_wkt=vertical,
    )


class Asset:
    """An open asset: its :class:`AssetInfo` and windowed reads of its bands."""

    def __init__(self, ds: Any, href: str) -> None:
        self._ds = ds
        self.href = href
        self.info = _describe(ds, href)

    def read(
        self,
        window: Window,
        *,
        band: int = 1,
        decimation: int = 1,
        nodata: float | None = None,
        resampling: GdalResampling = GdalResampling.nearest,
        out_shape: tuple[int, int] | None = None,
        fill_values: Sequence[float] = (),
    ) -> RasterWindow:
        """Read one band window; ``decimation`` > 1 reads a coarser rendition (overviews),
        ``out_shape`` one of exactly that (height, width).

        ``nodata`` stands in for a file that declares none (the item's ``raster:bands``);
        ``fill_values`` are nodata whatever the file declares (a collection's convention,
        e.g. S1 GRD's zero border fill), so resampling kernels renormalise over valid
        neighbours instead of averaging fill in.
        Raises :class:`AssetError` (truncated or corrupt blocks are ``UNREADABLE_ASSET``).
        """
        info = self.info
        t0 = time.perf_counter()
        window = window.round_offsets().round_lengths()
        h, w = int(window.height), int(window.width)
        if out_shape is not None:
            out_h, out_w = out_shape
        elif decimation > 1:
            out_h, out_w = max(1, h // decimation), max(1, w // decimation)
        else:
            out_h, out_w = h, w
        try:
            raw = self._ds.read(
                band, window=window, out_shape=(out_h, out_w), resampling=resampling
            )
        except (RasterioError, OSError, ValueError) as exc:
            err = _classify(exc, self.href)
            if err.reason is RejectReason.UNREACHABLE_ASSET and not is_remote(self.href):
                err = AssetError(RejectReason.UNREADABLE_ASSET, self.href, err.message)
            raise err from exc
        declared = info.band_nodata[band - 1] if len(info.band_nodata) >= band else info.nodata
        nd = declared if declared is not None else nodata
        data, bad = _to_float(raw, nd)
        for v in fill_values:
            data[raw == np.asarray(v).astype(raw.dtype)] = np.nan
        sy, sx = h / out_h, w / out_w
        crs = info.source_crs
        if crs is None:
            raise AssetError(RejectReason.CRS_MISMATCH, self.href, "asset has no georeferencing")
        transform: Affine | None = None
        gcps: tuple[GroundControlPoint, ...] = ()
        if info.transform is not None:
            transform = (
                info.transform
                @ Affine.translation(window.col_off, window.row_off)
                @ Affine.scale(sx, sy)
            )
        else:
            gcps = tuple(
                replace_gcp(g, row=(g.row - window.row_off) / sy, col=(g.col - window.col_off) / sx)
                for g in info.gcps
            )
        return RasterWindow(
            data=data,
            crs=crs,
            transform=transform,
            gcps=gcps,
            bad=bad,
            base_transform=info.transform,
            base_gcps=info.gcps if info.transform is None else (),
            placement=(float(window.row_off), float(window.col_off), float(sy), float(sx)),
            source_dtype=str(raw.dtype),
            bytes_decoded=int(raw.nbytes),
            read_ms=(time.perf_counter() - t0) * 1e3,
        )


@contextmanager
def open_asset(href: str, policy: HrefPolicy | None = None) -> Iterator[Asset]:
    """Open an asset once for its info and any number of window reads.

    ``policy`` checks the href first (the build always passes its config's); None
    trusts the href, for callers that made it themselves.
    """
    with _open(href, policy) as ds:
        try:
            asset = Asset(ds, href)
        except (RasterioError, OSError, ValueError) as exc:
            raise _classify(exc, href) from exc
        yield asset


def open_info(href: str, policy: HrefPolicy | None = None) -> AssetInfo:
    """Open an asset and describe it. Raises :class:`AssetError`."""
    with open_asset(href, policy) as asset:
        return asset.info


@functools.lru_cache(maxsize=256)
def _epsg_crs(epsg: int) -> tuple[CRS, CRS | None]:
    """An EPSG code's CRS and its horizontal part (an item may name a compound CRS such as
    EPSG:9707); parsed once per process, not once per asset checked."""
    expected = CRS.from_epsg(epsg)
    return expected, split_vertical(expected)[0]


#: (CRS WKT, EPSG code) -> whether the CRS is that code's (or its horizontal part): a
#: comparison of two CRSs goes through PROJ, and a build checks every asset it opens
#: against one of a few codes.
_CRS_MATCH: dict[tuple[str, int], bool] = {}


def _crs_is_epsg(crs: CRS, epsg: int, expected: CRS, expected_h: CRS | None) -> bool:
    key = (crs.to_wkt(), epsg)
    hit = _CRS_MATCH.get(key)
    if hit is None:
        hit = crs in (expected, expected_h) or crs.to_epsg() == epsg
        if len(_CRS_MATCH) < 1024:
            _CRS_MATCH[key] = hit
    return hit


def check_georeferencing(
    info: AssetInfo,
    epsg: int | None,
    transform: Sequence[float] | None,
    shape: Sequence[int] | None,
) -> str | None:
    """Compare an asset with its item's ``proj:*``; a message when they disagree.

    The CRS must be the same. The footprint (bounds from ``proj:transform`` and
    ``proj:shape``) must agree within one pixel of the coarser of the two grids; the
    pixel size itself may differ, so an overview or a decimated copy of the product
    (e.g. a 120 m rendition of a 10 m band) is not a mismatch, but a shifted grid or a
    file from another tile is.
    """
    if epsg is None:
        return None
    if info.transform is None or info.crs is None:
        if info.has_gcps:
            return None  # radar geometry: the item cannot describe it with proj:*
        return f"asset has no georeferencing but its item declares EPSG:{epsg}"
    try:
        expected, expected_h = _epsg_crs(int(epsg))
    except Exception as exc:  # an invalid code in the item is a mismatch too
        return f"item declares an invalid proj:epsg {epsg!r}: {exc}"
    if not _crs_is_epsg(info.crs, int(epsg), expected, expected_h):
        return f"asset CRS {info.crs.to_string()} differs from the item's EPSG:{epsg}"
    if transform is None or shape is None or len(transform) < 6 or len(shape) < 2:
        return None
    t = Affine(*[float(v) for v in transform[:6]])
    item_bounds = pixel_bounds(t, int(shape[0]), int(shape[1]))
    file_bounds = info.bounds
    assert file_bounds is not None
    tol = max(math.hypot(t.a, t.d), info.resolution or 0.0) * 1.0 + 1e-6
    diff = max(abs(a - b) for a, b in zip(item_bounds, file_bounds))
    if diff > tol:
        return (
            f"asset footprint {tuple(round(v, 3) for v in file_bounds)} differs from the item's "
            f"proj:transform/proj:shape footprint {tuple(round(v, 3) for v in item_bounds)} "
            f"by {diff:.3f} (tolerance {tol:.3f})"
        )
    return None


@dataclass
class RasterWindow:
    """Values of one band window, float32 with NaN for nodata, plus its geolocation.

    ``bad`` marks non-finite source values that were *not* declared nodata (NaN/inf
    in a float band whose nodata is some other number); it is None when there are none.
    """

    data: np.ndarray
    crs: CRS
    transform: Affine | None = None
    gcps: tuple[GroundControlPoint, ...] = ()
    bad: np.ndarray | None = None
    #: Geolocation of the whole asset and where this window sits in it (row_off,
    #: col_off, row_step, col_step): coordinates computed in the asset's own pixel space
    #: and shifted by integers are bit-identical whichever window a sample was read from.
    base_transform: Affine | None = None
    base_gcps: tuple[GroundControlPoint, ...] = ()
    placement: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    source_dtype: str = "float32"
    bytes_decoded: int = 0
    read_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[-2]), int(self.data.shape[-1]))


def _to_float(raw: np.ndarray, nodata: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    out = raw.astype(np.float32, copy=True)
    bad: np.ndarray | None = None
    if np.issubdtype(raw.dtype, np.floating):
        nonfinite = ~np.isfinite(out)
        if nodata is not None and math.isnan(nodata):
            nonfinite &= ~np.isnan(out)  # NaN is the declared nodata
        if nonfinite.any():
            bad = nonfinite
    if nodata is not None and not math.isnan(nodata):
        out[raw == np.asarray(nodata).astype(raw.dtype)] = np.nan
    if bad is not None:
        out[bad] = np.nan
    return out, bad


def read_window(
    href: str, window: Window, *, policy: HrefPolicy | None = None, **kwargs: Any
) -> RasterWindow:
    """Open ``href`` and read one window (see :meth:`Asset.read`)."""
    with open_asset(href, policy) as asset:
        return asset.read(window, **kwargs)


def replace_gcp(g: GroundControlPoint, **changes: float) -> GroundControlPoint:
    """A copy of a GCP with new row/col (GroundControlPoint is not a dataclass)."""
    kw: dict[str, Any] = {
        "row": g.row,
        "col": g.col,
        "x": g.x,
        "y": g.y,
        "z": g.z,
        "id": g.id,
        "info": g.info,
    }
    kw.update(changes)
    return GroundControlPoint(**kw)
