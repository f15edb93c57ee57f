"""Vertical datums (pipeline/vertical.py and the DEM path of pipeline/sample.py), issue 18.3.

The geoid grids are generated here, test-only: constant undulations N(EGM96) = 30 m and
N(EGM2008) = 28 m written as PROJ's GTX files under the names PROJ looks for
(``egm96_15.gtx``, ``egm08_25.gtx``), so a height h above EGM96 is h + 2 m above EGM2008
and an ellipsoidal height h is h - 28 m above EGM2008. No grid is downloaded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyproj.datadir
import pytest
from affine import Affine
from sample_kit import asset as plan_asset
from sample_kit import grid_transform, plan_row, scene, write_raster

from terraloom.pipeline import vertical
from terraloom.pipeline.readers import open_info
from terraloom.pipeline.sample import BuildConfig, build_block
from terraloom.schemas.modalities import get_modality
from terraloom.schemas.tables import RejectReason

LON0, LAT0 = 15.3, 45.5
EPSG = 32633
T = grid_transform(EPSG, LON0, LAT0)
RES = 1 / 3600
DEM_T = Affine(RES, 0, LON0 - 0.03, 0, -RES, LAT0 + 0.03)
SHAPE = (216, 216)
CFG = BuildConfig(modalities=("DEM",), required=("DEM",))


def _gtx(path: Path, undulation: float) -> None:
    """A global 1-degree GTX grid of one undulation (header: lat0, lon0, dlat, dlon, rows,
    cols big-endian; float32 rows from the south)."""
    rows, cols = 181, 361
    header = struct.pack(">4d2i", -90.0, -180.0, 1.0, 1.0, rows, cols)
    path.write_bytes(header + np.full((rows, cols), undulation, ">f4").tobytes())


@pytest.fixture
def proj_grids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PROJ sees the test-only grids in $PROJ_DATA (and no system grids) for one test."""
    grids = tmp_path / "grids"
    grids.mkdir()
    _gtx(grids / "egm96_15.gtx", 30.0)
    _gtx(grids / "egm08_25.gtx", 28.0)
    yield from _isolated(monkeypatch, grids)


@pytest.fixture
def no_grids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    yield from _isolated(monkeypatch, empty)


def _isolated(monkeypatch: pytest.MonkeyPatch, grids: Path) -> Iterator[Path]:
    saved = pyproj.datadir.get_data_dir()
    monkeypatch.setenv("PROJ_DATA", str(grids))
    monkeypatch.delenv("PROJ_LIB", raising=False)
    monkeypatch.setattr(vertical, "SYSTEM_GRID_DIRS", ())
    vertical.clear_cache()
    try:
        yield grids
    finally:
        vertical.clear_cache()
        pyproj.datadir.set_data_dir(saved)


def _heights() -> np.ndarray:
    rows, cols = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    return (150.0 + 0.5 * rows + 0.3 * cols).astype(np.float32)


def _dem_scene(tmp_path: Path, name: str, crs: int, collection: str = "dem") -> dict:
    href = write_raster(tmp_path / f"{name}.tif", _heights(), crs=crs, transform=DEM_T)
    a = plan_asset("elevation", href, epsg=crs, transform=DEM_T, shape=SHAPE, key="data")
    return scene("DEM", name, [a], epsg=crs, collection=collection)


def test_a_compound_crs_file_declares_its_vertical_datum(tmp_path: Path) -> None:
    href = write_raster(tmp_path / "c.tif", _heights(), crs=9707, transform=DEM_T)
    info = open_info(href)
    assert info.crs is not None and info.crs.to_epsg() == 4326  # geometry: the horizontal part
    assert info.vertical_wkt is not None
    assert vertical.source_datum(info.vertical_wkt, "EGM2008") == "EGM96"  # the file wins
    assert vertical.source_datum(None, "EGM2008") == "EGM2008"
    assert vertical.source_datum(None, None) == vertical.UNKNOWN


def test_egm96_heights_are_converted_with_the_geoid_grids(tmp_path: Path, proj_grids: Path) -> None:
    """The same heights in a GLO-30 tile (EGM2008), an EPSG:9707 file (WGS 84 + EGM96) and
    an EPSG:4979 file (ellipsoidal): stored 2 m higher from EGM96 (its geoid lies 2 m above
    EGM2008's here) and 28 m lower from the ellipsoid; each index row names its datum."""
    glo = _dem_scene(tmp_path, "glo30", 4326, "cop-dem-glo-30")
    egm96 = _dem_scene(tmp_path, "egm96", 9707)
    ell = _dem_scene(tmp_path, "ellipsoidal", 4979)
    r_glo, r96, r_ell = build_block(
        [plan_row(f"s{i}", EPSG, T, [sc], row=i) for i, sc in enumerate((glo, egm96, ell))], CFG
    )
    for r in (r_glo, r96, r_ell):
        assert r.reject is None, r.reject
        assert r.arrays is not None and r.index_row is not None
    a_glo, a96, a_ell = (r.arrays["DEM"][0] for r in (r_glo, r96, r_ell))  # type: ignore[index]
    np.testing.assert_allclose(a96 - a_glo, 2.0, atol=1e-3)
    np.testing.assert_allclose(a_ell - a_glo, -28.0, atol=1e-3)
    assert r_glo.index_row["dem_vertical_datum"] == "EGM2008"  # type: ignore[index]
    assert r96.index_row["dem_vertical_datum"] == "EGM96"  # type: ignore[index]
    assert r_ell.index_row["dem_vertical_datum"] == "ellipsoidal"  # type: ignore[index]
    assert r96.index_row["quality"]["dem_datum_shift_m"] == pytest.approx(2.0)  # type: ignore[index]
    assert "dem_datum_shift_m" not in r_glo.index_row["quality"]  # type: ignore[index]
    assert get_modality("DEM").vertical_datum == "EGM2008"


def test_without_the_grids_a_compound_crs_dem_is_a_vertical_datum_reject(
    tmp_path: Path, no_grids: Path
) -> None:
    egm96 = _dem_scene(tmp_path, "egm96", 9707)
    glo = _dem_scene(tmp_path, "glo30", 4326, "cop-dem-glo-30")
    r96, r_glo = build_block(
        [plan_row(f"s{i}", EPSG, T, [sc], row=i) for i, sc in enumerate((egm96, glo))], CFG
    )
    assert r96.reject is not None and r96.arrays is None
    assert r96.reject["reason"] == RejectReason.VERTICAL_DATUM.value
    assert r96.reject["modality"] == "DEM"
    assert "heights in EGM96 cannot be converted to EGM2008" in r96.reject["message"]
    assert r_glo.reject is None  # the registry's own datum needs no grid


def test_proj_ballpark_is_never_a_conversion(no_grids: Path) -> None:
    with pytest.raises(vertical.VerticalDatumError, match="no usable transformation"):
        vertical.height_shift("EGM96", "EGM2008")
    same = vertical.height_shift("EGM2008", "EGM2008")
    assert same.transformer is None
    assert same.shift(np.zeros(3), np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
