"""Major TOM-compatible global grid, UTM zones and the 264 x 264 px sample grids of a cell.

The grid is the published Major TOM construction (Francis & Czerkawski, 2024): rows of equal
latitude spacing ``180 / ceil(pi R / d)`` degrees (R = 6378.137 km, d = 10 km), and in each row
``ceil(2 pi R cos(lat_row) / d)`` columns of equal longitude spacing, where ``lat_row`` is the
row's southern edge. Rows are counted from the equator (``U`` north, ``D`` south), columns from
the prime meridian (``R`` east, ``L`` west), and a cell is named by its south-west corner,
e.g. ``451U_946L``. Cells are half-open ``[west, east) x [south, north)`` so every point belongs
to exactly one cell; in rows with an odd number of columns the last column straddles the
antimeridian (its ``east`` is > 180).

A sample is 264 x 264 px at 10 m in the UTM zone of the *sample centre* (not of the cell:
cells on a zone boundary yield samples in both zones, each in its own zone, so no sample is
ever projected outside its zone), its origin snapped to the 10 m lattice of that zone. A cell
yields ``k x k`` samples (``samples_per_cell`` in {1, 4, 9}) at fixed sub-positions; sample ids
are ``"{cell}_{i}_{j}"`` with ``i`` the sub-row counted from the north and ``j`` the sub-column
from the west, so every stage can recompute and join them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import shapely
from pyproj import Transformer
from shapely.geometry import Polygon, box, shape
from shapely.geometry.base import BaseGeometry
from shapely.prepared import prep

from terraloom.schemas.modalities import RESOLUTION_M, SAMPLE_PX

EARTH_RADIUS_KM = 6378.137
GRID_DIST_KM = 10.0
SUBGRID_SIDES = {1: 1, 4: 2, 9: 3}
"""Allowed samples per cell and the side of their sub-position lattice (a 10 km cell fits at
most 3 x 3 non-overlapping 2.64 km samples)."""

_CELL_RE = re.compile(r"^(\d+)([UD])_(\d+)([RL])$")


class GridError(ValueError):
    """Bad cell id, region or sample layout (user input, reported without a traceback)."""


@dataclass(frozen=True, order=True)
class CellId:
    """A grid cell: signed row (north positive) and signed column (east positive)."""

    row: int
    col: int

    def __str__(self) -> str:
        r = f"{self.row}U" if self.row >= 0 else f"{-self.row}D"
        c = f"{self.col}R" if self.col >= 0 else f"{-self.col}L"
        return f"{r}_{c}"

    @classmethod
    def parse(cls, text: str) -> CellId:
        m = _CELL_RE.match(text.strip())
        if not m:
            raise GridError(f"bad cell id {text!r}: expected e.g. '451U_946L'")
        row = int(m.group(1)) * (1 if m.group(2) == "U" else -1)
        col = int(m.group(3)) * (1 if m.group(4) == "R" else -1)
        if (m.group(2) == "D" and row == 0) or (m.group(4) == "L" and col == 0):
            raise GridError(f"bad cell id {text!r}: row/column 0 is written 0U / 0R")
        return cls(row, col)


@dataclass(frozen=True)
class CellBounds:
    """Geographic bounds of a cell; ``east`` may exceed 180 for the antimeridian column."""

    west: float
    south: float
    east: float
    north: float

    def contains(self, lon: float, lat: float) -> bool:
        """Half-open containment, the same rule ``MajorTomGrid.cell_of`` uses."""
        lon = _wrap_lon(lon)
        if lon < self.west:
            lon += 360.0
        return self.west <= lon < self.east and self.south <= lat < self.north

    @property
    def polygon(self) -> Polygon:
        return box(self.west, self.south, self.east, self.north)


def _wrap_lon(lon: float) -> float:
    """Longitude in [-180, 180) (untouched when already there: wrapping rounds)."""
    if -180.0 <= lon < 180.0:
        return lon
    return ((lon + 180.0) % 360.0) - 180.0


def _col_edge(m: int, c: int) -> float:
    """West edge of column ``c`` of a row with ``m`` columns, rounded once (``c * 360 / m``,
    not ``c * (360 / m)``), so the -180 edge is exactly -180 and ``col_of`` and ``bounds``
    agree on every edge."""
    return c * 360.0 / m


@dataclass(frozen=True)
class MajorTomGrid:
    """The Major TOM grid for a cell size ``dist_km`` (10 km for terraloom)."""

    dist_km: float = GRID_DIST_KM
    radius_km: float = EARTH_RADIUS_KM

    @cached_property
    def n_rows(self) -> int:
        return math.ceil(math.pi * self.radius_km / self.dist_km)

    @cached_property
    def lat_step(self) -> float:
        return 180.0 / self.n_rows

    @cached_property
    def row_range(self) -> tuple[int, int]:
        """Smallest and largest signed row index (rows ``j`` with -90 <= j * step < 90)."""
        return -(self.n_rows // 2), (self.n_rows - 1) // 2

    def row_south(self, row: int) -> float:
        return row * self.lat_step

    def n_cols(self, row: int) -> int:
        return _n_cols(self.radius_km, self.dist_km, self.row_south(row))

    def col_range(self, row: int) -> tuple[int, int]:
        m = self.n_cols(row)
        return -(m // 2), (m - 1) // 2

    def _check(self, cell: CellId) -> None:
        lo, hi = self.row_range
        if not lo <= cell.row <= hi:
            raise GridError(f"cell {cell}: row outside the grid ({lo}..{hi})")
        clo, chi = self.col_range(cell.row)
        if not clo <= cell.col <= chi:
            raise GridError(f"cell {cell}: column outside its row ({clo}..{chi})")

    def cell(self, cell_id: str | CellId) -> CellId:
        """Parse and validate a cell id against this grid."""
        c = cell_id if isinstance(cell_id, CellId) else CellId.parse(cell_id)
        self._check(c)
        return c

    def row_of(self, lat: float) -> int:
        if not -90.0 <= lat <= 90.0:
            raise GridError(f"latitude {lat} outside [-90, 90]")
        step = self.lat_step
        r = math.floor(lat / step)
        # Make the float rule identical to the bounds we report.
        if r * step > lat:
            r -= 1
        elif (r + 1) * step <= lat:
            r += 1
        lo, hi = self.row_range
        return min(max(r, lo), hi)

    def col_of(self, row: int, lon: float) -> int:
        m = self.n_cols(row)
        x = _wrap_lon(lon)
        c = math.floor(x * m / 360.0)
        if _col_edge(m, c) > x:
            c -= 1
        elif _col_edge(m, c + 1) <= x:
            c += 1
        if c < -(m // 2):
            c += m  # the antimeridian column of an odd row
        return c

    def cell_of(self, lon: float, lat: float) -> CellId:
        """The cell holding a point (half-open cells, so exactly one)."""
        r = self.row_of(lat)
        return CellId(r, self.col_of(r, lon))

    def bounds(self, cell: str | CellId) -> CellBounds:
        c = self.cell(cell)
        m = self.n_cols(c.row)
        south = self.row_south(c.row)
        north = min(self.row_south(c.row + 1), 90.0)
        return CellBounds(_col_edge(m, c.col), south, _col_edge(m, c.col + 1), north)

    def cells_in_bbox(self, west: float, south: float, east: float, north: float) -> list[CellId]:
        """Cells whose area intersects a lon/lat box (``west > east`` crosses the antimeridian)."""
        if west > east:
            return sorted(
                set(self.cells_in_bbox(west, south, 180.0, north))
                | set(self.cells_in_bbox(-180.0, south, east, north))
            )
        if not (-90 <= south <= north <= 90) or not (-180 <= west <= east <= 180):
            raise GridError(f"bad bbox {(west, south, east, north)}")
        out: list[CellId] = []
        for r in range(self.row_of(south), self.row_of(north) + 1):
            m = self.n_cols(r)
            c0 = self.col_of(r, west)
            c1 = self.col_of(r, min(east, math.nextafter(180.0, 0.0)))
            cols = list(range(c0, c1 + 1)) if c0 <= c1 else [*range(-(m // 2), c1 + 1), c0]
            for c in cols:
                cb = self.bounds(CellId(r, c))
                # Drop cells that only touch the box along an edge.
                if _overlap_1d(cb.south, cb.north, south, north) and _lon_overlap(cb, west, east):
                    out.append(CellId(r, c))
        return out

    def cells_in_geometry(self, geom: BaseGeometry) -> list[CellId]:
        """Cells whose area intersects a lon/lat geometry (positive-area intersection).

        Parts of a multi-geometry are handled one by one, so two small regions far apart
        cost what they cover, not the box around both.
        """
        if geom.is_empty:
            return []
        parts = list(getattr(geom, "geoms", [geom]))
        if len(parts) > 1:
            return sorted({c for part in parts for c in self.cells_in_geometry(part)})
        w, s, e, n = geom.bounds
        cands = self.cells_in_bbox(max(w, -180.0), max(s, -90.0), min(e, 180.0), min(n, 90.0))
        if not cands or geom.equals(box(w, s, e, n)):
            return cands
        bounds = [self.bounds(c) for c in cands]
        polys = shapely.box(
            [b.west for b in bounds],
            [b.south for b in bounds],
            [b.east for b in bounds],
            [b.north for b in bounds],
        )
        if geom.geom_type in ("Point", "LineString", "LinearRing"):
            keep = shapely.intersects(polys, geom)
        else:
            keep = shapely.area(shapely.intersection(polys, geom)) > 0
        return [c for c, k in zip(cands, keep) if k]


@lru_cache(maxsize=8192)
def _n_cols(radius_km: float, dist_km: float, lat: float) -> int:
    circumference = 2.0 * math.pi * radius_km * math.cos(math.radians(lat))
    return max(1, math.ceil(circumference / dist_km))


def _overlap_1d(a0: float, a1: float, b0: float, b1: float) -> bool:
    if b0 == b1:
        return a0 <= b0 < a1
    return a0 < b1 and b0 < a1


def _lon_overlap(cb: CellBounds, west: float, east: float) -> bool:
    if _overlap_1d(cb.west, cb.east, west, east):
        return True
    return cb.east > 180.0 and _overlap_1d(cb.west - 360.0, cb.east - 360.0, west, east)


GRID = MajorTomGrid()
"""The terraloom grid (10 km Major TOM)."""


# --- UTM --------------------------------------------------------------------------------------


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone holding a point (326xx north, 327xx south).

    Includes the Norway (32V) and Svalbard (31X-37X) exceptions, as Sentinel-2 tiling does.
    """
    lon = _wrap_lon(lon)
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat < 84.0 and 0.0 <= lon < 42.0:
        zone = 31 if lon < 9.0 else 33 if lon < 21.0 else 35 if lon < 33.0 else 37
    return (32600 if lat >= 0 else 32700) + zone


def cell_epsg(cell: str | CellId, grid: MajorTomGrid = GRID) -> int:
    """UTM zone of a cell's centre (samples use the zone of their own centre, see module doc)."""
    b = grid.bounds(cell)
    return utm_epsg((b.west + b.east) / 2.0, (b.south + b.north) / 2.0)


@lru_cache(maxsize=256)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


@lru_cache(maxsize=256)
def _from_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


# --- samples ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleGrid:
    """One sample: its id, cell, sub-position and pixel grid (UTM, 10 m, north-up)."""

    sample_id: str
    cell_id: str
    i: int
    j: int
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    width: int = SAMPLE_PX
    height: int = SAMPLE_PX

    @property
    def res(self) -> float:
        return self.transform[0]

    @property
    def bounds_utm(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform
        return c, f + e * self.height, c + a * self.width, f

    @cached_property
    def footprint(self) -> Polygon:
        """Footprint in EPSG:4326 (the UTM square's corners; its edges bend < 1 m)."""
        x0, y0, x1, y1 = self.bounds_utm
        xs = [x0, x1, x1, x0, x0]
        ys = [y1, y1, y0, y0, y1]
        lon, lat = _from_utm(self.epsg).transform(xs, ys)
        # Keep longitudes continuous across the antimeridian (they may pass +-180).
        lon = [
            x - 360.0 if x - lon[0] > 180 else x + 360.0 if x - lon[0] < -180 else x for x in lon
        ]
        return Polygon(list(zip(lon, lat)))

    @cached_property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bounds_utm
        lon, lat = _from_utm(self.epsg).transform((x0 + x1) / 2.0, (y0 + y1) / 2.0)
        return float(lon), float(lat)

    def coarse(
        self, res_m: float
    ) -> tuple[tuple[float, float, float, float, float, float], int, int]:
        """Transform and shape of the same footprint at a coarser resolution (cloud checks)."""
        a, b, c, d, e, f = self.transform
        n_x = max(1, math.ceil(self.width * a / res_m))
        n_y = max(1, math.ceil(self.height * -e / res_m))
        return (res_m, 0.0, c, 0.0, -res_m, f), n_x, n_y


def sample_id(cell: str | CellId, i: int, j: int) -> str:
    return f"{cell}_{i}_{j}"


def parse_sample_id(text: str) -> tuple[CellId, int, int]:
    parts = text.rsplit("_", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise GridError(f"bad sample id {text!r}: expected e.g. '451U_946L_0_1'")
    return CellId.parse(parts[0]), int(parts[1]), int(parts[2])


def sub_position(
    cell: str | CellId, i: int, j: int, k: int, grid: MajorTomGrid = GRID
) -> tuple[float, float]:
    """Nominal (lon, lat) centre of sub-position (i, j) of a k x k cell layout.

    The sample's UTM zone is the zone of this point; the snapped grid's centre is within
    5 m of it (so within 5 m of a zone edge it may sit just across).
    """
    b = grid.bounds(cell)
    lat = b.north - (i + 0.5) * (b.north - b.south) / k
    lon = b.west + (j + 0.5) * (b.east - b.west) / k
    return _wrap_lon(lon), lat


def samples_for_cell(
    cell: str | CellId,
    samples_per_cell: int = 1,
    grid: MajorTomGrid = GRID,
    px: int = SAMPLE_PX,
    res_m: float = RESOLUTION_M,
) -> list[SampleGrid]:
    """The ``samples_per_cell`` sample grids of a cell, row-major from the north-west."""
    if samples_per_cell not in SUBGRID_SIDES:
        raise GridError(
            f"samples_per_cell must be one of {sorted(SUBGRID_SIDES)}, got {samples_per_cell}"
        )
    k = SUBGRID_SIDES[samples_per_cell]
    c = grid.cell(cell)
    half = px * res_m / 2.0
    out = []
    for i in range(k):
        for j in range(k):
            lon, lat = sub_position(c, i, j, k, grid)
            epsg = utm_epsg(lon, lat)
            x, y = _to_utm(epsg).transform(_wrap_lon(lon), lat)
            x0 = round((x - half) / res_m) * res_m
            y1 = round((y + half) / res_m) * res_m
            out.append(
                SampleGrid(
                    sample_id=sample_id(c, i, j),
                    cell_id=str(c),
                    i=i,
                    j=j,
                    epsg=epsg,
                    transform=(res_m, 0.0, float(x0), 0.0, -res_m, float(y1)),
                    width=px,
                    height=px,
                )
            )
    return out


def sample_grid(sample: str, samples_per_cell: int, grid: MajorTomGrid = GRID) -> SampleGrid:
    """Recompute one sample's grid from its id (ids are deterministic)."""
    cell, i, j = parse_sample_id(sample)
    k = SUBGRID_SIDES.get(samples_per_cell, 0)
    if not (0 <= i < k and 0 <= j < k):
        raise GridError(
            f"sample {sample!r} does not exist with {samples_per_cell} samples per cell"
        )
    return samples_for_cell(cell, samples_per_cell, grid)[i * k + j]


def footprint_in_cell(sample: SampleGrid, grid: MajorTomGrid = GRID) -> bool:
    """Whether a sample's footprint lies inside its cell (checked on the lon/lat polygon)."""
    b = grid.bounds(sample.cell_id)
    coords = list(sample.footprint.exterior.coords)
    fixed = [(x + 360.0 if x < b.west - 180.0 else x, y) for x, y in coords]
    return b.polygon.contains(Polygon(fixed))


# --- regions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """Where to plan: a lon/lat geometry, or an explicit list of cells (then all their samples)."""

    geometry: BaseGeometry | None = None
    cells: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.geometry is None) == (not self.cells):
            raise GridError("a region is either a geometry or a list of cell ids")

    @classmethod
    def from_bbox(cls, west: float, south: float, east: float, north: float) -> Region:
        if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90):
            raise GridError(f"bad bbox {west},{south},{east},{north}: need W,S,E,N in degrees")
        if west > east:
            return cls(
                geometry=shapely.MultiPolygon(
                    [box(west, south, 180, north), box(-180, south, east, north)]
                )
            )
        return cls(geometry=box(west, south, east, north))

    @classmethod
    def from_geojson(cls, path: str | os.PathLike[str]) -> Region:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise GridError(f"cannot read GeoJSON region {path}: {err}") from None
        return cls(geometry=geojson_geometry(doc))

    @classmethod
    def from_cells(cls, cells: Iterable[str | CellId], grid: MajorTomGrid = GRID) -> Region:
        ids = tuple(str(grid.cell(c)) for c in cells)
        if not ids:
            raise GridError("empty list of cell ids")
        return cls(cells=ids)

    @classmethod
    def parse(cls, text: str) -> Region:
        """CLI syntax: ``W,S,E,N`` | a GeoJSON file | a text file of cell ids | ``ID,ID,...``."""
        text = text.strip()
        parts = [p.strip() for p in text.split(",")]
        if len(parts) == 4:
            try:
                return cls.from_bbox(*(float(p) for p in parts))
            except ValueError as err:
                if isinstance(err, GridError):
                    raise
        p = Path(text)
        if p.suffix.lower() in (".geojson", ".json"):
            return cls.from_geojson(p)
        if p.suffix.lower() in (".txt", ".csv"):
            try:
                lines = p.read_text().split()
            except OSError as err:
                raise GridError(f"cannot read cell list {p}: {err}") from None
            return cls.from_cells([x.strip(",") for x in lines if x.strip(",")])
        return cls.from_cells(parts)

    def cell_ids(self, grid: MajorTomGrid = GRID) -> list[CellId]:
        if self.cells:
            return sorted({grid.cell(c) for c in self.cells})
        assert self.geometry is not None
        return sorted(set(grid.cells_in_geometry(self.geometry)))

    def samples(self, samples_per_cell: int = 1, grid: MajorTomGrid = GRID) -> list[SampleGrid]:
        """Samples of the region: all of listed cells; for a geometry, those centred inside it."""
        out: list[SampleGrid] = []
        prepared = prep(self.geometry) if self.geometry is not None else None
        for c in self.cell_ids(grid):
            for s in samples_for_cell(c, samples_per_cell, grid):
                if prepared is None or prepared.covers(shapely.Point(*s.center)):
                    out.append(s)
        return out

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        if self.geometry is not None:
            return tuple(self.geometry.bounds)  # type: ignore[return-value]
        geoms = [GRID.bounds(c).polygon for c in self.cells]
        return tuple(shapely.union_all(geoms).bounds)  # type: ignore[return-value]


def geojson_geometry(doc: dict) -> BaseGeometry:
    """Union of a GeoJSON geometry / Feature / FeatureCollection (lon/lat)."""
    kind = doc.get("type")
    if kind == "FeatureCollection":
        geoms = [geojson_geometry(f) for f in doc.get("features", [])]
        if not geoms:
            raise GridError("GeoJSON FeatureCollection has no features")
        return shapely.union_all(geoms)
    if kind == "Feature":
        if not doc.get("geometry"):
            raise GridError("GeoJSON Feature without geometry")
        return geojson_geometry(doc["geometry"])
    try:
        return shape(doc)
    except Exception as err:  # shapely raises several types for bad GeoJSON
        raise GridError(f"bad GeoJSON geometry: {err}") from None
