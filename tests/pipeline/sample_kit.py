"""Fixture builders for the sample-processing tests: GeoTIFFs written with rasterio from
analytic fields (so the truth at any point is known exactly) and PLAN_SCHEMA rows.

Nothing here is random except through explicit seeds.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS

from terraloom.schemas.modalities import SAMPLE_PX

UTC = dt.UTC
T0 = dt.datetime(2023, 7, 15, 10, 0, tzinfo=UTC)

Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


def smooth_field(
    lon: np.ndarray,
    lat: np.ndarray,
    lon0: float,
    lat0: float,
    amp: float = 1000.0,
    base: float = 2000.0,
) -> np.ndarray:
    """A smooth, textured field of geographic position (features ~100-300 m wide), so
    cross-correlation has something to lock on and any shift shows up."""
    x = (np.asarray(lon) - lon0) * 111_320.0 * math.cos(math.radians(lat0))
    y = (np.asarray(lat) - lat0) * 110_574.0
    return (
        base
        + amp * np.sin(x / 170.0) * np.cos(y / 230.0)
        + 0.6 * amp * np.sin((x + 0.7 * y) / 97.0)
        + 0.4 * amp * np.cos((x - 1.3 * y) / 131.0)
    )


def grid_transform(
    epsg: int, lon: float, lat: float, px: int = SAMPLE_PX, res: float = 10.0
) -> Affine:
    """A sample grid centred near (lon, lat) in ``epsg``, origin snapped to the 10 m lattice."""
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    half = px * res / 2
    x0 = round((x - half) / res) * res
    y1 = round((y + half) / res) * res
    return Affine(res, 0.0, x0, 0.0, -res, y1)


def centres_lonlat(
    crs: CRS | int, transform: Affine, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = transform @ (cols, rows)
    src = CRS.from_user_input(crs)
    if src.is_geographic:
        return np.asarray(xs), np.asarray(ys)
    lon, lat = Transformer.from_crs(src, 4326, always_xy=True).transform(xs, ys)
    return np.asarray(lon), np.asarray(lat)


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: CRS | int | str | None,
    transform: Affine | None = None,
    gcps: Sequence[GroundControlPoint] | None = None,
    nodata: float | None = None,
    overviews: Sequence[int] = (),
    blocksize: int = 256,
) -> str:
    """Write a tiled GeoTIFF (COG-like: tiled, deflate, overviews) and return a file:// href."""
    arr = data[None] if data.ndim == 2 else data
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": arr.shape[1],
        "width": arr.shape[2],
        "count": arr.shape[0],
        "dtype": arr.dtype.name,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": "deflate",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if transform is not None:
        profile["transform"] = transform
        profile["crs"] = CRS.from_user_input(crs) if crs is not None else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # GCP-only files
        ds = rasterio.open(path, "w", **profile)
    with ds:
        ds.write(arr)
        if gcps is not None:
            ds.gcps = (list(gcps), CRS.from_user_input(crs))
        if overviews:
            ds.build_overviews(list(overviews), rasterio.enums.Resampling.average)
    return path.resolve().as_uri()


def raster_from_field(
    path: Path,
    field: Field,
    crs: int,
    transform: Affine,
    shape: tuple[int, int],
    dtype: str = "float32",
    nodata: float | None = None,
    overviews: Sequence[int] = (),
) -> str:
    lon, lat = centres_lonlat(crs, transform, *shape)
    vals = field(lon, lat)
    if np.issubdtype(np.dtype(dtype), np.integer):
        vals = np.rint(vals)
    return write_raster(
        path, vals.astype(dtype), crs=crs, transform=transform, nodata=nodata, overviews=overviews
    )


def asset(
    band: str,
    href: str,
    *,
    epsg: int | None = None,
    transform: Affine | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    nodata: float | None = None,
    scale: float | None = None,
    offset: float | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    return {
        "key": key or band.lower(),
        "band": band,
        "href": href,
        "epsg": epsg,
        "transform": list(transform)[:6] if transform is not None else None,
        "shape": list(shape) if shape is not None else None,
        "nodata": nodata,
        "scale": scale,
        "offset": offset,
    }


def scene(
    modality: str,
    item_id: str,
    assets: Sequence[dict[str, Any]],
    *,
    when: dt.datetime = T0,
    epsg: int | None = None,
    needs_gcps: bool = False,
    cloud_cover: float | None = None,
    processing_baseline: str | None = None,
    collection: str | None = None,
) -> dict[str, Any]:
    return {
        "modality": modality,
        "collection": collection or modality.lower(),
        "item_id": item_id,
        "datetime": when,
        "platform": None,
        "orbit_state": None,
        "relative_orbit": None,
        "cloud_cover": cloud_cover,
        "epsg": epsg,
        "needs_gcps": needs_gcps,
        "processing_baseline": processing_baseline,
        "assets": list(assets),
    }


def plan_row(
    sample_id: str,
    epsg: int,
    transform: Affine,
    scenes: Sequence[dict[str, Any]],
    *,
    row: int = 0,
    split: str = "train",
    cell_id: str = "0U_0R",
    unmatched: Sequence[dict[str, Any]] = (),
    s1_s2_delta_days: float | None = None,
    px: int = SAMPLE_PX,
) -> dict[str, Any]:
    """A PLAN_SCHEMA row as ``Table.to_pylist()`` yields it."""
    x0, y1 = transform.c, transform.f
    x1, y0 = x0 + transform.a * px, y1 + transform.e * px
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    lon, lat = tr.transform([x0, x1, x1, x0], [y1, y1, y0, y0])
    clon, clat = tr.transform((x0 + x1) / 2, (y0 + y1) / 2)
    poly = shapely.Polygon(list(zip(lon, lat)))
    return {
        "sample_id": sample_id,
        "split": split,
        "row": row,
        "cell_id": cell_id,
        "geometry": shapely.to_wkb(poly),
        "center_lon": float(clon),
        "center_lat": float(clat),
        "epsg": epsg,
        "transform": list(transform)[:6],
        "width": px,
        "height": px,
        "scenes": list(scenes),
        "unmatched": list(unmatched),
        "s1_s2_delta_days": s1_s2_delta_days,
    }


def utm_epsg(lon: float, lat: float) -> int:
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


# --------------------------------------------------------------------------- a mini synthetic scene set

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S2_RES = {"B01": 60, "B09": 60, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20, "B12": 20}
LULC_CODES = (1, 2, 5, 7, 11)


class Synth:
    """Analytic fields of one area and writers of source files that sample them.

    Every source file (any CRS, resolution, tiling or radar geometry) samples the same
    functions of (lon, lat) at its own pixel centres, so a correct co-registration
    reproduces ``truth(...)`` on the sample grid and any misregistration is a measurable
    shift.
    """

    def __init__(self, root: Path, lon0: float, lat0: float) -> None:
        self.root = Path(root)
        self.lon0 = lon0
        self.lat0 = lat0

    # truth -----------------------------------------------------------------------------
    def s2(self, band: str) -> Field:
        i = S2_BANDS.index(band) if band in S2_BANDS else 0
        return lambda lon, lat: smooth_field(
            lon, lat, self.lon0 + 0.001 * i, self.lat0, amp=300.0 + 30 * i, base=2000.0 + 100 * i
        )

    def dem(self) -> Field:
        return lambda lon, lat: smooth_field(
            lon, lat, self.lon0, self.lat0 + 0.002, amp=40.0, base=150.0
        )

    def s1_db(self, pol: str) -> Field:
        k = 0 if pol == "VV" else 1
        return lambda lon, lat: (
            -12.0
            - 7.0 * k
            + smooth_field(lon, lat, self.lon0 - 0.003 * k, self.lat0, amp=1.5, base=0.0)
        )

    def lulc(self) -> Field:
        def f(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
            v = smooth_field(lon, lat, self.lon0 + 0.004, self.lat0 - 0.001, amp=1.0, base=0.0)
            edges = np.array([-1.0, -0.3, 0.4, 1.1])
            return np.asarray(LULC_CODES, np.uint8)[np.digitize(v, edges)]

        return f

    def scl(self, cloud_fraction: float) -> Field:
        def f(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
            if cloud_fraction <= 0:
                return np.full(np.shape(lon), 4, np.uint8)
            if cloud_fraction >= 1:
                return np.full(np.shape(lon), 9, np.uint8)
            v = smooth_field(lon, lat, self.lon0, self.lat0, amp=1.0, base=0.0)
            thr = np.quantile(v, 1 - cloud_fraction)
            return np.where(v > thr, 9, 4).astype(np.uint8)

        return f

    # writers ---------------------------------------------------------------------------
    def s2_scene(
        self,
        item_id: str,
        epsg: int,
        ul: tuple[float, float],
        size_m: float,
        *,
        when: dt.datetime = T0,
        cloud_fraction: float = 0.0,
        valid: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        bands: Sequence[str] = S2_BANDS,
        overviews: Sequence[int] = (),
    ) -> dict[str, Any]:
        """A Sentinel-2 L2A item: 12 bands at native resolution + SCL at 20 m, uint16 DN,
        nodata 0; ``valid(x, y)`` (scene CRS) masks a partial footprint (tile edge)."""
        assets = []
        for band in (*bands, "SCL"):
            res = 20 if band == "SCL" else S2_RES.get(band, 10)
            n = int(round(size_m / res))
            t = Affine(res, 0, ul[0], 0, -res, ul[1])
            lon, lat = centres_lonlat(epsg, t, n, n)
            if band == "SCL":
                vals = self.scl(cloud_fraction)(lon, lat).astype(np.uint8)
            else:
                vals = np.clip(np.rint(self.s2(band)(lon, lat)), 1, 65535).astype(np.uint16)
            if valid is not None:
                cols, rows = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
                xs, ys = t @ (cols, rows)
                vals = np.where(valid(np.asarray(xs), np.asarray(ys)), vals, 0).astype(vals.dtype)
            href = write_raster(
                self.root / item_id / f"{band}.tif",
                vals,
                crs=epsg,
                transform=t,
                nodata=0,
                overviews=overviews,
            )
            assets.append(
                asset(
                    band,
                    href,
                    epsg=epsg,
                    transform=t,
                    shape=(n, n),
                    nodata=0,
                    scale=1e-4 if band != "SCL" else None,
                    offset=-0.1 if band != "SCL" else None,
                )
            )
        return scene(
            "S2L2A",
            item_id,
            assets,
            when=when,
            epsg=epsg,
            cloud_cover=100 * cloud_fraction,
            processing_baseline="05.09",
        )

    def dem_tiles(
        self,
        lon_edges: Sequence[float],
        lat_edges: Sequence[float],
        *,
        arcsec: float = 1.0,
        tag: str = "",
    ) -> list[dict[str, Any]]:
        """GLO-30-like EPSG:4326 tiles (one item per tile) on the given lon/lat edges."""
        res = arcsec / 3600.0
        lon_edges = [round(v / res) * res for v in lon_edges]  # tiles abut on the pixel lattice
        lat_edges = [round(v / res) * res for v in lat_edges]
        scenes = []
        for i in range(len(lon_edges) - 1):
            for j in range(len(lat_edges) - 1):
                w, e = lon_edges[i], lon_edges[i + 1]
                s, n = lat_edges[j], lat_edges[j + 1]
                t = Affine(res, 0, w, 0, -res, n)
                shape = (int(round((n - s) / res)), int(round((e - w) / res)))
                item = f"dem_{i}_{j}{tag}"
                href = raster_from_field(self.root / item / "dem.tif", self.dem(), 4326, t, shape)
                scenes.append(
                    scene(
                        "DEM",
                        item,
                        [asset("elevation", href, epsg=4326, transform=t, shape=shape, key="data")],
                        epsg=4326,
                    )
                )
        return scenes

    def lulc_scene(
        self, item_id: str, epsg: int, ul: tuple[float, float], size_m: float, res: float = 10.0
    ) -> dict[str, Any]:
        n = int(round(size_m / res))
        t = Affine(res, 0, ul[0], 0, -res, ul[1])
        href = raster_from_field(
            self.root / item_id / "lulc.tif", self.lulc(), epsg, t, (n, n), dtype="uint8", nodata=0
        )
        return scene(
            "LULC",
            item_id,
            [asset("class", href, epsg=epsg, transform=t, shape=(n, n), nodata=0, key="data")],
            epsg=epsg,
        )

    def grd_scene(
        self,
        item_id: str,
        centre: tuple[float, float],
        size_px: tuple[int, int] = (520, 520),
        *,
        when: dt.datetime = T0,
        heading_deg: float = -12.0,
        spacing_m: float = 10.0,
        n_gcps: int = 12,
        amplitude_dn: bool = False,
    ) -> dict[str, Any]:
        """A GRD-like item in radar geometry: no affine transform, only GCPs (lon/lat).

        Pixel (col, row) lies at ground range u = spacing * col * (1 + 2e-5 col) and
        azimuth v = -spacing * row, rotated by the heading around ``centre``: a mildly
        non-linear geometry only GCPs describe. Values are linear power (or amplitude DN).
        """
        rows_n, cols_n = size_px
        epsg = utm_epsg(*centre)
        to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
        to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)
        cx, cy = to_utm.transform(*centre)
        th = math.radians(heading_deg)

        def geo(col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            c = col - cols_n / 2
            u = spacing_m * c * (1 + 2e-5 * c)
            v = -spacing_m * (row - rows_n / 2)
            e = cx + math.cos(th) * u - math.sin(th) * v
            n = cy + math.sin(th) * u + math.cos(th) * v
            lon, lat = to_ll.transform(e, n)
            return np.asarray(lon), np.asarray(lat)

        cols, rows = np.meshgrid(np.arange(cols_n) + 0.5, np.arange(rows_n) + 0.5)
        lon, lat = geo(cols, rows)
        gc = np.linspace(0, cols_n, n_gcps)
        gr = np.linspace(0, rows_n, n_gcps)
        gcps = []
        for r in gr:
            for c in gc:
                glon, glat = geo(np.array(c), np.array(r))
                gcps.append(
                    GroundControlPoint(
                        row=float(r), col=float(c), x=float(glon), y=float(glat), z=0.0
                    )
                )
        assets = []
        for pol in ("VV", "VH"):
            power = 10.0 ** (self.s1_db(pol)(lon, lat) / 10.0)
            if amplitude_dn:
                vals = np.rint(np.sqrt(power) * 1000.0).astype(np.uint16)
                href = write_raster(
                    self.root / item_id / f"{pol}.tif", vals, crs=4326, gcps=gcps, nodata=0
                )
                assets.append(asset(pol, href, nodata=0, scale=1e-3))
            else:
                href = write_raster(
                    self.root / item_id / f"{pol}.tif",
                    power.astype(np.float32),
                    crs=4326,
                    gcps=gcps,
                )
                assets.append(asset(pol, href))
        return scene("S1GRD", item_id, assets, when=when, needs_gcps=True)

    def standard_scenes(
        self,
        scene_epsg: int,
        centre: tuple[float, float],
        size_m: float = 3400.0,
        *,
        tag: str = "",
        when: dt.datetime = T0,
        s1_when: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        """S2L2A + LULC in ``scene_epsg`` (on its 10 m lattice), a 2 x 2 DEM tile mosaic
        meeting near ``centre`` and a GRD scene in radar geometry, all covering a
        ``size_m`` square around ``centre``."""
        x, y = Transformer.from_crs(4326, scene_epsg, always_xy=True).transform(*centre)
        ul = (round((x - size_m / 2) / 60) * 60, round((y + size_m / 2) / 60) * 60)
        s2 = self.s2_scene(f"S2{tag}", scene_epsg, ul, size_m, when=when)
        lulc = self.lulc_scene(f"LULC{tag}", scene_epsg, ul, size_m)
        d = size_m / 111_000 * 0.9
        dl = d / math.cos(math.radians(centre[1]))
        lon_e = [round(centre[0] - dl, 4), round(centre[0] + 0.0021, 4), round(centre[0] + dl, 4)]
        lat_e = [round(centre[1] - d, 4), round(centre[1] - 0.0017, 4), round(centre[1] + d, 4)]
        dem = self.dem_tiles(lon_e, lat_e, tag=tag)
        n = int(size_m / 10 * 1.1)
        grd = self.grd_scene(f"S1{tag}", centre, (n, n), when=s1_when or when)
        return [s2, grd, lulc, *dem]
