from __future__ import annotations

import json
import math

import pytest
import shapely
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from terraloom.pipeline.grid import (
    GRID,
    CellId,
    GridError,
    MajorTomGrid,
    Region,
    footprint_in_cell,
    parse_sample_id,
    sample_grid,
    samples_for_cell,
    sub_position,
    utm_epsg,
)

lons = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False, exclude_max=True)
lats = st.floats(min_value=-85.0, max_value=85.0, allow_nan=False)


def _containing(lon: float, lat: float) -> list[CellId]:
    """Brute force: every cell of the three rows around the point that contains it."""
    r = GRID.row_of(lat)
    hits = []
    for row in (r - 1, r, r + 1):
        m = GRID.n_cols(row)
        c = GRID.col_of(row, lon)
        for col in {c - 1, c, c + 1}:
            lo, hi = GRID.col_range(row)
            col = lo + (col - lo) % m  # neighbours wrap around the antimeridian
            cell = CellId(row, col)
            if GRID.bounds(cell).contains(lon, lat):
                hits.append(cell)
    return hits


@settings(max_examples=300, deadline=None)
@given(lons, lats)
def test_every_point_is_in_exactly_one_cell(lon: float, lat: float) -> None:
    cell = GRID.cell_of(lon, lat)
    assert _containing(lon, lat) == [cell]


@settings(max_examples=300, deadline=None)
@given(lons, lats)
@example(-180.0, 46.5)  # -1381 * (360 / 2762) is a hair below -180: the edge must be exact
def test_cell_ids_round_trip(lon: float, lat: float) -> None:
    cell = GRID.cell_of(lon, lat)
    text = str(cell)
    assert GRID.cell(text) == cell
    assert str(CellId.parse(text)) == text
    b = GRID.bounds(cell)
    # The id names the south-west corner: the corner itself maps back to the cell.
    assert GRID.cell_of(b.west if b.west < 180 else b.west - 360, b.south) == cell


@settings(max_examples=40, deadline=None)
@given(lons, lats, st.sampled_from([1, 4, 9]))
def test_footprints_lie_inside_their_cell(lon: float, lat: float, n: int) -> None:
    cell = GRID.cell_of(lon, lat)
    samples = samples_for_cell(cell, n)
    assert len(samples) == n
    assert len({s.sample_id for s in samples}) == n
    for s in samples:
        assert footprint_in_cell(s), s.sample_id
        assert s.width == s.height == 264
        a, b, c, d, e, f = s.transform
        assert (a, b, d, e) == (10.0, 0.0, 0.0, -10.0)
        assert c % 10 == 0 and f % 10 == 0  # snapped to the zone's 10 m lattice
        nominal = sub_position(cell, s.i, s.j, math.isqrt(n))
        assert s.epsg == utm_epsg(*nominal)  # the zone of the sample's own centre
        x, y = Transformer.from_crs(4326, s.epsg, always_xy=True).transform(*nominal)
        assert abs(x - (c + 1320)) <= 5 and abs(y - (f - 1320)) <= 5
    polys = [s.footprint for s in samples]
    for i in range(n):
        for j in range(i + 1, n):
            assert polys[i].intersection(polys[j]).area == 0


def test_major_tom_constants_and_known_cells() -> None:
    assert GRID.n_rows == math.ceil(math.pi * 6378.137 / 10) == 2004
    assert GRID.n_cols(0) == math.ceil(2 * math.pi * 6378.137 / 10)
    # Rows are named from the equator, columns from Greenwich, by the south-west corner.
    assert str(GRID.cell_of(0.001, 0.001)) == "0U_0R"
    assert str(GRID.cell_of(-0.001, -0.001)) == "1D_1L"
    b = GRID.bounds("0U_0R")
    assert (b.west, b.south) == (0.0, 0.0)
    # Major TOM Core-S2L2A holds cell 451U_946L, a Sentinel-2 tile 12TVK scene in EPSG:32612.
    cell = GRID.cell_of(-111.70, 40.55)
    assert str(cell) == "451U_946L"
    assert {s.epsg for s in samples_for_cell(cell, 9)} == {32612}
    # Columns per row shrink with the cosine of the row's southern edge.
    assert GRID.n_cols(900) < GRID.n_cols(0)
    assert GRID.n_cols(-5) == GRID.n_cols(4)  # row 5D's southern edge is row 4U's, mirrored


def test_bad_cell_ids() -> None:
    for bad in ["451X_946L", "0D_3R", "3U_0L", "", "451U946L", "99999U_1R"]:
        with pytest.raises(GridError):
            GRID.cell(bad)
    with pytest.raises(GridError):
        GRID.cell(f"0U_{GRID.n_cols(0)}R")


def test_antimeridian_column_of_odd_rows() -> None:
    row = next(r for r in range(100, 200) if GRID.n_cols(r) % 2 == 1)
    lat = GRID.row_south(row) + GRID.lat_step / 2
    east = GRID.cell_of(179.9999, lat)
    west = GRID.cell_of(-179.9999, lat)
    assert east == west  # one cell straddles the antimeridian
    assert GRID.bounds(east).east > 180
    cells = GRID.cells_in_bbox(179.5, lat - 0.01, -179.5, lat + 0.01)
    assert east in cells
    assert any(GRID.bounds(c).west < -179 for c in cells)
    assert any(0 < GRID.bounds(c).west < 179.9 for c in cells)
    # Its middle sample sits on the antimeridian: a small continuous footprint, not a band
    # around the globe.
    mid = samples_for_cell(east, 9)[4]
    w, _, e, _ = mid.footprint.bounds
    assert 0 < e - w < 0.1 and footprint_in_cell(mid)


def test_utm_zones_with_exceptions() -> None:
    assert utm_epsg(-4.0, 48.0) == 32630
    assert utm_epsg(19.7, -34.0) == 32734
    assert utm_epsg(-174.34, -1.0) == 32701
    assert utm_epsg(175.7, -36.0) == 32760
    assert utm_epsg(5.0, 60.0) == 32632  # Norway
    assert utm_epsg(13.0, 78.0) == 32633  # Svalbard
    assert utm_epsg(179.99, 10.0) == 32660


def test_cell_on_a_zone_boundary_yields_samples_in_both_zones() -> None:
    lat = 45.5
    row = GRID.row_of(lat)
    col = GRID.col_of(row, 18.0)
    cell = CellId(row, col)
    b = GRID.bounds(cell)
    assert b.west < 18.0 < b.east
    samples = samples_for_cell(cell, 9)
    assert {s.epsg for s in samples} == {32633, 32634}
    for s in samples:
        # Each grid is exact in its own zone: the corner is on that zone's 10 m lattice.
        x, y = Transformer.from_crs(4326, s.epsg, always_xy=True).transform(*s.center)
        assert abs(x - (s.transform[2] + 1320)) < 1e-3 and abs(y - (s.transform[5] - 1320)) < 1e-3
        assert footprint_in_cell(s)


def test_sample_ids_are_deterministic() -> None:
    cell = GRID.cell_of(15.3, 45.6)
    a = samples_for_cell(cell, 4)
    b = samples_for_cell(str(cell), 4)
    assert a == b
    assert [s.sample_id for s in a] == [f"{cell}_{i}_{j}" for i in range(2) for j in range(2)]
    # i counts sub-rows from the north, j sub-columns from the west.
    assert a[0].center[1] > a[2].center[1] and a[0].center[0] < a[1].center[0]
    assert parse_sample_id(a[3].sample_id) == (cell, 1, 1)
    assert sample_grid(a[3].sample_id, 4) == a[3]
    with pytest.raises(GridError):
        sample_grid(f"{cell}_2_0", 4)
    with pytest.raises(GridError):
        samples_for_cell(cell, 5)


def test_regions(tmp_path) -> None:
    bbox = Region.parse("15.0,45.5,15.3,45.7")
    cells = bbox.cell_ids()
    assert cells and all(
        shapely.box(15.0, 45.5, 15.3, 45.7).intersects(GRID.bounds(c).polygon) for c in cells
    )
    # A region's samples are those centred inside it.
    assert all(
        shapely.box(15.0, 45.5, 15.3, 45.7).covers(shapely.Point(*s.center))
        for s in bbox.samples(4)
    )
    # Exactly the cells with area inside the box: a box on cell edges takes no neighbours.
    b = GRID.bounds("500U_100R")
    edge = Region.from_bbox(b.west, b.south, b.east, b.north)
    assert [str(c) for c in edge.cell_ids()] == ["500U_100R"]

    gj = tmp_path / "r.geojson"
    poly = {
        "type": "Polygon",
        "coordinates": [[[15.0, 45.5], [15.3, 45.5], [15.0, 45.7], [15.0, 45.5]]],
    }
    gj.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {}, "geometry": poly}],
            }
        )
    )
    tri = Region.parse(str(gj))
    assert set(tri.cell_ids()) < set(cells)

    listed = Region.parse("451U_946L,452U_946L")
    assert [str(c) for c in listed.cell_ids()] == ["451U_946L", "452U_946L"]
    assert len(listed.samples(9)) == 18
    txt = tmp_path / "cells.txt"
    txt.write_text("451U_946L\n452U_946L\n")
    assert Region.parse(str(txt)).cell_ids() == listed.cell_ids()

    for bad in ["1,2,3", "15,46,16,45", "nope_cell", str(tmp_path / "missing.geojson")]:
        with pytest.raises(GridError):
            Region.parse(bad).cell_ids()


def test_other_cell_sizes_keep_the_one_cell_rule() -> None:
    g = MajorTomGrid(dist_km=100.0)
    assert g.n_rows == math.ceil(math.pi * 6378.137 / 100)
    for lon, lat in [(0.0, 0.0), (-179.99, -84.0), (179.99, 84.9), (12.3, -45.6)]:
        cell = g.cell_of(lon, lat)
        assert g.bounds(cell).contains(lon, lat)
