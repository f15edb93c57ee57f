"""Native grids of the world's products, scaled-down copies of the real tilings.

* S2: MGRS-like tiles, 10.5 km on a 10 km lattice of their own UTM zone (real: 109.8 km on
  100 km), so neighbours overlap by 500 m and tiles of both zones cover a zone boundary.
* S1 RTC: one north-up UTM frame per region and slice, pixel edges on the 10 m lattice but
  frame edges unrelated to S2 tiles.
* S1 GRD: radar geometry -- rows along track, columns in ground range, rotated by the orbit
  heading (and so mirrored for descending passes); georeferenced by GCPs only.
* LULC: 20 km UTM tiles per zone on their own lattice (offset from S2's), data only inside
  their own zone.
* DEM: 3 arc-minute (0.05 deg) geographic tiles of 1 arc-second pixels, pixel-is-point,
  named like Copernicus tiles (``N46_33`` = 46 deg 33 min).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon, box

from terraloom.pipeline.world.noise import Grid, Points
from terraloom.pipeline.world.regions import Frame, transformer, zone_lon_range
from terraloom.pipeline.world.sensors import LookGeometry

S2_LATTICE_M = 10_000.0
S2_TILE_M = 10_500.0
LULC_TILE_M = 20_000.0
LULC_OFFSET = (7310.0, 1500.0)
DEM_TILE_ARCSEC = 180
S1_SLICE_LINES = 4096
_MGRS_COLS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
_MGRS_ROWS = "ABCDEFGHJKLMNPQRSTUV"
_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"

Transform = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class RasterGrid:
    """A north-up raster: rasterio-order affine ``(a, b, c, d, e, f)`` and (height, width)."""

    epsg: int
    transform: Transform
    shape: tuple[int, int]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform
        h, w = self.shape
        return (c, f + e * h, c + a * w, f)

    def window_grid(self, frame: Frame, r0: int, r1: int, c0: int, c1: int) -> Grid:
        """The window's pixel centres as an affine grid in the frame (same CRS only)."""
        assert self.epsg == frame.epsg
        a, _, c, _, e, f = self.transform
        ox = c + (c0 + 0.5) * a - frame.origin[0]
        oy = f + (r0 + 0.5) * e - frame.origin[1]
        return Grid((ox, oy), (a, 0.0), (0.0, e), (r1 - r0, c1 - c0))

    def window_blocks(
        self, frame: Frame, r0: int, r1: int, c0: int, c1: int, block: int
    ) -> list[tuple[int, int, int, int, Grid]]:
        """The window cut into ``block``-px squares, each an affine grid in the frame through
        the exact positions of three of its pixel centres (for grids in another CRS)."""
        a, _, c, _, e, f = self.transform
        out = []
        for br in range(r0, r1, block):
            for bc in range(c0, c1, block):
                er, ec = min(r1, br + block), min(c1, bc + block)
                nr, nc = er - br, ec - bc
                sr, sc = max(nr - 1, 1), max(nc - 1, 1)
                rr = np.array([br, br, br + sr], float) + 0.5
                cc = np.array([bc, bc + sc, bc], float) + 0.5
                fx, fy = frame.from_crs(self.epsg, c + cc * a, f + rr * e)
                dcol = (float(fx[1] - fx[0]) / sc, float(fy[1] - fy[0]) / sc)
                drow = (float(fx[2] - fx[0]) / sr, float(fy[2] - fy[0]) / sr)
                out.append(
                    (br, er, bc, ec, Grid((float(fx[0]), float(fy[0])), dcol, drow, (nr, nc)))
                )
        return out

    def window_points(
        self, frame: Frame, r0: int, r1: int, c0: int, c1: int, step: int = 8
    ) -> Points:
        """Pixel centres mapped into the frame: exact pyproj at every ``step``-th pixel,
        bilinear in between (the map between two UTM zones or lon/lat and UTM is smooth:
        < 1 mm off at step 8)."""
        a, _, c, _, e, f = self.transform
        nr, nc = r1 - r0, c1 - c0
        rr = np.unique(np.concatenate([np.arange(0, nr, step), [nr - 1]]))
        cc = np.unique(np.concatenate([np.arange(0, nc, step), [nc - 1]]))
        gx = c + (c0 + cc + 0.5) * a
        gy = f + (r0 + rr + 0.5) * e
        mx, my = np.meshgrid(gx, gy)
        fx, fy = frame.from_crs(self.epsg, mx, my)
        if step == 1 or (len(rr) == nr and len(cc) == nc):
            return Points(fx, fy)
        ri = np.arange(nr, dtype=np.float64)
        ci = np.arange(nc, dtype=np.float64)
        return Points(_bilinear(rr, cc, fx, ri, ci), _bilinear(rr, cc, fy, ri, ci))


def _bilinear(
    rr: np.ndarray, cc: np.ndarray, v: np.ndarray, ri: np.ndarray, ci: np.ndarray
) -> np.ndarray:
    # along columns, then rows (separable linear interpolation on a rectilinear node grid)
    tmp = np.stack([np.interp(ci, cc, row) for row in v])  # (len(rr), nc)
    return np.stack([np.interp(ri, rr, tmp[:, j]) for j in range(tmp.shape[1])], axis=1)


LATTICE_PAD_M = 80.0
AFFINE_BLOCK_M = 1280.0
"""Side of the blocks in which a grid of another CRS is treated as affine in the frame (the
UTM-to-UTM map bends < 2 cm over 1.28 km, so values are exact to that shift)."""


def region_lattices(
    frame: Frame, s2_size: float, s2_lattice: float, lulc_size: float
) -> dict[int, RasterGrid]:
    """Per UTM zone of the region, one 10 m grid holding every S2 10 m tile and LULC tile of
    that zone (all their pixel centres are at 5 mod 10 m), so the latent landscape is
    evaluated once per zone and cut into windows. The frame zone's also holds RTC frames."""
    out = {}
    for epsg in frame.utm_epsgs:
        if epsg == frame.epsg:
            x0, y0, x1, y1 = frame.data_rect
            ox, oy = frame.origin
            bx0, by0, bx1, by1 = x0 + ox, y0 + oy, x1 + ox, y1 + oy
        else:
            grids = [t.grid(10) for t in s2_tiles(frame, s2_size, s2_lattice) if t.epsg == epsg]
            grids += [t.grid for t in lulc_tiles(frame, lulc_size) if t.epsg == epsg]
            wins = [(g, valid_window(g, frame)) for g in grids]
            bounds = [_window_bounds(g, w) for g, w in wins if w is not None]
            if not bounds:
                continue
            bx0, by0 = min(b[0] for b in bounds), min(b[1] for b in bounds)
            bx1, by1 = max(b[2] for b in bounds), max(b[3] for b in bounds)
        gx0 = math.floor((bx0 - LATTICE_PAD_M) / 10.0) * 10.0
        gy1 = math.ceil((by1 + LATTICE_PAD_M) / 10.0) * 10.0
        w = int(math.ceil((bx1 + LATTICE_PAD_M - gx0) / 10.0))
        h = int(math.ceil((gy1 - by0 + LATTICE_PAD_M) / 10.0))
        out[epsg] = RasterGrid(epsg, (10.0, 0.0, gx0, 0.0, -10.0, gy1), (h, w))
    return out


def _window_bounds(
    grid: RasterGrid, win: tuple[int, int, int, int]
) -> tuple[float, float, float, float]:
    a, _, c, _, e, f = grid.transform
    r0, r1, c0, c1 = win
    return (c + c0 * a, f + r1 * e, c + c1 * a, f + r0 * e)


def lattice_offset(lattice: RasterGrid, grid: RasterGrid, r0: int, c0: int) -> tuple[int, int]:
    """Row/col in ``lattice`` of pixel (r0, c0) of a 10 m grid of the same zone."""
    la, _, lc, _, le, lf = lattice.transform
    a, _, c, _, e, f = grid.transform
    if grid.epsg != lattice.epsg or a != la or e != le:
        raise ValueError("grid is not on the lattice")
    col = (c + c0 * a - lc) / a
    row = (f + r0 * e - lf) / e
    ic, ir = int(round(col)), int(round(row))
    if abs(col - ic) > 1e-6 or abs(row - ir) > 1e-6:
        raise ValueError("grid is not on the lattice")
    return ir, ic


def data_polygon(frame: Frame, epsg: int) -> Polygon:
    """The region's data rectangle as a polygon in ``epsg`` coordinates."""
    xs, ys = frame.rect_polygon(48)
    ox, oy = frame.to_crs(epsg, xs, ys)
    return Polygon(list(zip(ox.tolist(), oy.tolist())))


def valid_window(grid: RasterGrid, frame: Frame) -> tuple[int, int, int, int] | None:
    """Rows/cols [r0, r1) x [c0, c1) that can hold pixels inside the data rectangle."""
    poly = data_polygon(frame, grid.epsg) if grid.epsg != frame.epsg else None
    a, _, c, _, e, f = grid.transform
    if poly is None:
        x0, y0, x1, y1 = frame.data_rect
        bx0, by0, bx1, by1 = (
            x0 + frame.origin[0],
            y0 + frame.origin[1],
            x1 + frame.origin[0],
            y1 + frame.origin[1],
        )
    else:
        bx0, by0, bx1, by1 = poly.bounds
    c0 = max(0, math.floor((bx0 - c) / a - 0.5))
    c1 = min(grid.shape[1], math.ceil((bx1 - c) / a + 0.5))
    r0 = max(0, math.floor((by1 - f) / e - 0.5))
    r1 = min(grid.shape[0], math.ceil((by0 - f) / e + 0.5))
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, r1, c0, c1


# --- Sentinel-2 -----------------------------------------------------------------------------


@dataclass(frozen=True)
class S2Tile:
    mgrs: str
    epsg: int
    x0: float  # upper-left corner
    y1: float
    size: float = S2_TILE_M

    def grid(self, res: int) -> RasterGrid:
        n = int(round(self.size / res))
        return RasterGrid(self.epsg, (float(res), 0.0, self.x0, 0.0, -float(res), self.y1), (n, n))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y1 - self.size, self.x0 + self.size, self.y1)


def lat_band(lat: float) -> str:
    return _LAT_BANDS[min(19, max(0, int(math.floor((lat + 80.0) / 8.0))))]


def _zone_overlap(epsg: int, bounds: tuple[float, float, float, float]) -> bool:
    """Whether a box in zone ``epsg`` reaches into that zone's longitudes."""
    x0, y0, x1, y1 = bounds
    lon, _ = transformer(epsg, 4326).transform([x0, x1, x0, x1], [y0, y0, y1, y1])
    w, e = zone_lon_range(epsg)
    return bool(max(lon) > w and min(lon) < e)


def s2_tiles(frame: Frame, size: float = S2_TILE_M, lattice: float = S2_LATTICE_M) -> list[S2Tile]:
    """Tiles of every zone the region touches: ``size`` m squares whose upper-left corner is
    20 m west and north of a ``lattice`` node (as real MGRS tiles: 109.8 km on 100 km), so
    each overlaps its east and south neighbours by ``size - lattice`` m."""
    out = []
    for epsg in frame.utm_epsgs:
        poly = data_polygon(frame, epsg)
        ex0, ey0, ex1, ey1 = poly.bounds
        for i in range(
            math.floor((ex0 - size + 20) / lattice), math.floor((ex1 + 20) / lattice) + 1
        ):
            for j in range(
                math.floor((ey0 - 20) / lattice) - 1, math.floor((ey1 - 20 + size) / lattice) + 1
            ):
                x0 = lattice * i - 20.0
                y1 = lattice * (j + 1) + 20.0
                # a tile exists where its nominal lattice square (its "core") meets the data
                # inside its own zone: cores partition the plane, so every data point is in
                # some tile, and tiles holding only overlap slivers of a neighbour are skipped
                core = (lattice * i, lattice * j, lattice * (i + 1), lattice * (j + 1))
                if poly.intersection(box(*core)).area <= 0.0 or not _zone_overlap(epsg, core):
                    continue
                lon, lat = transformer(epsg, 4326).transform(x0 + size / 2, y1 - size / 2)
                mgrs = f"{epsg % 100:02d}{lat_band(lat)}{_MGRS_COLS[i % 24]}{_MGRS_ROWS[j % 20]}"
                out.append(S2Tile(mgrs, epsg, x0, y1, size))
    return out


# --- LULC -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LulcTile:
    tile_id: str
    epsg: int
    grid: RasterGrid
    clip_to_zone: bool  # the zone boundary crosses the tile: data only on its own side


def lulc_tiles(frame: Frame, size: float = LULC_TILE_M) -> list[LulcTile]:
    out = []
    n = int(size / 10)
    for epsg in frame.utm_epsgs:
        poly = data_polygon(frame, epsg)
        ex0, ey0, ex1, ey1 = poly.bounds
        ox, oy = LULC_OFFSET
        for i in range(math.floor((ex0 - ox) / size), math.floor((ex1 - ox) / size) + 1):
            for j in range(math.floor((ey0 - oy) / size), math.floor((ey1 - oy) / size) + 1):
                x0 = ox + size * i
                y1 = oy + size * (j + 1)
                b = (x0, y1 - size, x0 + size, y1)
                if poly.intersection(box(*b)).area < 1e4 or not _zone_overlap(epsg, b):
                    continue
                lon, lat = transformer(epsg, 4326).transform(
                    [b[0], b[2], b[0], b[2]], [b[1], b[1], b[3], b[3]]
                )
                w, e = zone_lon_range(epsg)
                clip = bool(min(lon) < w or max(lon) > e)
                clon, clat = transformer(epsg, 4326).transform((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
                tile_id = f"{epsg % 100:02d}{lat_band(clat)}{i % 100:02d}{j % 100:02d}"
                grid = RasterGrid(epsg, (10.0, 0.0, x0, 0.0, -10.0, y1), (n, n))
                out.append(LulcTile(tile_id, epsg, grid, clip))
    return out


# --- DEM ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemTile:
    name: str
    ilon: int  # south-west corner in units of DEM_TILE_ARCSEC
    ilat: int

    @property
    def grid(self) -> RasterGrid:
        px = 1.0 / 3600.0
        lon0 = self.ilon * DEM_TILE_ARCSEC / 3600.0
        lat1 = (self.ilat + 1) * DEM_TILE_ARCSEC / 3600.0
        # pixel-is-point: centres on whole arc-seconds, the first on the west/north edge
        return RasterGrid(
            4326,
            (px, 0.0, lon0 - px / 2, 0.0, -px, lat1 + px / 2),
            (DEM_TILE_ARCSEC, DEM_TILE_ARCSEC),
        )

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.grid.transform
        return (c, f + e * DEM_TILE_ARCSEC, c + a * DEM_TILE_ARCSEC, f)


def _dms(value_arcsec: int, pos: str, neg: str, width: int) -> str:
    h = pos if value_arcsec >= 0 else neg
    v = abs(value_arcsec)
    return f"{h}{v // 3600:0{width}d}_{(v % 3600) // 60:02d}"


def dem_tiles(frame: Frame) -> list[DemTile]:
    w, s, e, n = frame.lonlat_envelope()
    step = DEM_TILE_ARCSEC / 3600.0
    out = []
    for ilat in range(math.floor(s / step), math.floor(n / step) + 1):
        for ilon in range(math.floor(w / step), math.floor(e / step) + 1):
            name = (
                "Copernicus_DSM_COG_10_"
                f"{_dms(ilat * DEM_TILE_ARCSEC, 'N', 'S', 2)}_{_dms(ilon * DEM_TILE_ARCSEC, 'E', 'W', 3)}_DEM"
            )
            out.append(DemTile(name, ilon, ilat))
    return out


# --- Sentinel-1 -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RadarGrid:
    """GRD pixel grid: corner of pixel (row r, col c) is ``o + c*10*u_rg + r*10*u_az`` in the
    frame; rows are azimuth lines in acquisition order, columns ground range (near -> far)."""

    orbit_state: str
    slice_index: int
    origin: tuple[float, float]
    u_rg: tuple[float, float]
    u_az: tuple[float, float]
    shape: tuple[int, int]
    spacing: float = 10.0

    def grid(self, r0: int = 0, r1: int | None = None, c0: int = 0, c1: int | None = None) -> Grid:
        r1 = self.shape[0] if r1 is None else r1
        c1 = self.shape[1] if c1 is None else c1
        s = self.spacing
        ox = self.origin[0] + (c0 + 0.5) * s * self.u_rg[0] + (r0 + 0.5) * s * self.u_az[0]
        oy = self.origin[1] + (c0 + 0.5) * s * self.u_rg[1] + (r0 + 0.5) * s * self.u_az[1]
        return Grid(
            (ox, oy),
            (s * self.u_rg[0], s * self.u_rg[1]),
            (s * self.u_az[0], s * self.u_az[1]),
            (r1 - r0, c1 - c0),
        )

    def corner_xy(self, line: np.ndarray, pixel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame coordinates of fractional (line, pixel) positions (corner convention)."""
        s = self.spacing
        x = self.origin[0] + pixel * s * self.u_rg[0] + line * s * self.u_az[0]
        y = self.origin[1] + pixel * s * self.u_rg[1] + line * s * self.u_az[1]
        return x, y

    def gcp_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """(line, pixel) of a dense GCP lattice including the image edges."""
        h, w = self.shape
        nl = max(11, math.ceil(h / 200) + 1)
        npx = max(11, math.ceil(w / 200) + 1)
        lines = np.linspace(0.0, float(h), nl)
        pixels = np.linspace(0.0, float(w), npx)
        ll, pp = np.meshgrid(lines, pixels, indexing="ij")
        return ll.ravel(), pp.ravel()


def radar_grids(frame: Frame, look: LookGeometry, orbit_state: str) -> list[RadarGrid]:
    """The GRD slices of one orbit covering the data rectangle."""
    xs, ys = frame.rect_polygon(2)
    u_rg, u_az = look.u_rg, look.u_az
    s = xs * u_rg[0] + ys * u_rg[1]
    line = xs * u_az[0] + ys * u_az[1]
    s0 = math.floor(s.min() / 10.0) * 10.0 - 10.0
    l0 = math.floor(line.min() / 10.0) * 10.0 - 10.0
    width = math.ceil((s.max() - s0) / 10.0) + 1
    height = math.ceil((line.max() - l0) / 10.0) + 1
    n_slices = max(1, math.ceil(height / S1_SLICE_LINES))
    per = math.ceil(height / n_slices)
    out = []
    for k in range(n_slices):
        lk = l0 + k * per * 10.0
        hk = min(per, height - k * per)
        origin = (s0 * u_rg[0] + lk * u_az[0], s0 * u_rg[1] + lk * u_az[1])
        out.append(RadarGrid(orbit_state, k, origin, u_rg, u_az, (hk, width)))
    return out


def rtc_grids(frame: Frame) -> list[RasterGrid]:
    """North-up UTM frames (frame zone) covering the data rectangle, cut into row slices.

    The same frames serve ascending and descending passes, so their latent landscape is
    computed once; the outer 30 m pad keeps frame edges off the S2 tile lattice."""
    ox, oy = frame.origin
    x0, y0, x1, y1 = frame.data_rect
    gx0 = x0 + ox - 30.0
    gy1 = y1 + oy + 30.0
    width = int(round((x1 - x0 + 60.0) / 10.0))
    height = int(round((y1 - y0 + 60.0) / 10.0))
    n = max(1, math.ceil(height / S1_SLICE_LINES))
    per = math.ceil(height / n)
    out = []
    for k in range(n):
        hk = min(per, height - k * per)
        out.append(
            RasterGrid(frame.epsg, (10.0, 0.0, gx0, 0.0, -10.0, gy1 - k * per * 10.0), (hk, width))
        )
    return out


def lonlat_footprint(
    frame: Frame, epsg: int, bounds: tuple[float, float, float, float], clip_to_data: bool = True
):
    """A product footprint in lon/lat: its box (in ``epsg``) clipped to the data rectangle."""
    b = box(*bounds)
    if clip_to_data:
        poly = data_polygon(frame, epsg) if epsg != 4326 else None
        if poly is not None:
            b = b.intersection(poly)
    if epsg == 4326:
        geom = b
    else:
        t = transformer(epsg, 4326)
        geom = shapely.transform(
            b.segmentize(max(1.0, (bounds[2] - bounds[0]) / 8)),
            lambda c: np.column_stack(t.transform(c[:, 0], c[:, 1])),
        )
    return shapely.set_precision(geom, 1e-7)
