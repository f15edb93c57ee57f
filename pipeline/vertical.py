"""Vertical datums of height sources: which datum a DEM's heights are in, and the shift
onto the registry's datum (EGM2008 for the DEM modality) through PROJ.

A source's datum is the vertical part of its file's CRS (a compound CRS such as EPSG:9707,
WGS 84 + EGM96 height; a 3D CRS such as EPSG:4979: ellipsoidal heights), else the datum its
collection declares in the registry (``schemas.modalities.SourceConvention``), else
``unknown``. Heights in another datum are converted with PROJ when the geoid grids of both
datums are found (pyproj's data directory, ``$PROJ_DATA`` / ``$PROJ_LIB``, Debian's
``proj-data`` in ``/usr/share/proj``; PROJ's network access stays off, so a build never
downloads grids behind a user's back); without them the sample is rejected with a
``vertical_datum`` reason rather than stored in the wrong datum. PROJ's "ballpark"
fallback (a zero shift) is never accepted as a conversion.

A geoid-to-geoid shift varies over tens of kilometres, so it is computed at the pixel
centres of the sample grid and added to the warped heights.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from terraloom.schemas.modalities import VERTICAL_DATUMS

__all__ = [
    "ELLIPSOIDAL",
    "SYSTEM_GRID_DIRS",
    "UNKNOWN",
    "VerticalDatumError",
    "VerticalShift",
    "clear_cache",
    "datum_name",
    "grid_dirs",
    "height_shift",
    "source_datum",
]

ELLIPSOIDAL = "ellipsoidal"
UNKNOWN = "unknown"
#: Where distributions install PROJ's grids (Debian/Ubuntu ``proj-data``: ``egm96_15.gtx``).
SYSTEM_GRID_DIRS: tuple[str, ...] = ("/usr/share/proj", "/usr/local/share/proj")
#: ``pipeline.readers.AssetInfo.vertical_wkt`` of a 3D CRS.
_ELLIPSOIDAL_WKT = "ELLIPSOIDAL"


def datum_name(vertical_wkt: str) -> str:
    """A :data:`~schemas.modalities.VERTICAL_DATUMS` key for a vertical CRS (its EPSG code),
    ``ellipsoidal`` for a 3D CRS, else the vertical CRS's own name."""
    if vertical_wkt == _ELLIPSOIDAL_WKT:
        return ELLIPSOIDAL
    from pyproj import CRS

    crs = CRS.from_wkt(vertical_wkt)
    code = crs.to_epsg()
    for name, epsg in VERTICAL_DATUMS.items():
        if epsg is not None and epsg == code:
            return name
    return crs.name


def source_datum(vertical_wkt: str | None, declared: str | None) -> str:
    """The datum a source's heights are in: its file's vertical CRS, else the datum its
    collection declares, else ``unknown``."""
    if vertical_wkt:
        return datum_name(vertical_wkt)
    return declared or UNKNOWN


def grid_dirs() -> tuple[str, ...]:
    """Existing directories, beyond pyproj's own, where geoid grids are looked for."""
    dirs: list[str] = []
    for var in ("PROJ_DATA", "PROJ_LIB"):
        dirs += [d for d in os.environ.get(var, "").split(os.pathsep) if d]
    dirs += list(SYSTEM_GRID_DIRS)
    return tuple(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


_LOCK = threading.Lock()  # pyproj transformers are not thread-safe; io_threads share them


def _register(dirs: tuple[str, ...]) -> None:
    import pyproj.datadir

    have = set(pyproj.datadir.get_data_dir().split(os.pathsep))
    for d in dirs:
        if d not in have:
            pyproj.datadir.append_data_dir(d)


def _crs(datum: str, vertical_wkt: str | None):  # type: ignore[no-untyped-def]
    from pyproj import CRS
    from pyproj.crs import CompoundCRS

    if datum == ELLIPSOIDAL:
        return CRS.from_epsg(4979)
    code = VERTICAL_DATUMS.get(datum)
    vert = CRS.from_epsg(code) if code is not None else CRS.from_wkt(str(vertical_wkt))
    return CompoundCRS(f"WGS 84 + {vert.name}", [CRS.from_epsg(4326), vert])


@dataclass(frozen=True)
class VerticalShift:
    """A usable conversion between two datums (``transformer`` None: the same datum)."""

    source: str
    target: str
    transformer: object | None

    def shift(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Metres to add to heights in ``source`` to express them in ``target``."""
        if self.transformer is None:
            return np.zeros(np.shape(lon), np.float32)
        zero = np.zeros(np.shape(lon), np.float64)
        with _LOCK:
            _, _, z = self.transformer.transform(lon, lat, zero)  # type: ignore[attr-defined]
        return np.asarray(z, np.float32)


class VerticalDatumError(ValueError):
    """Heights in a datum PROJ cannot convert here (no grid); carries a one-line message."""


@lru_cache(maxsize=32)
def _shift(
    source: str, target: str, vertical_wkt: str | None, dirs: tuple[str, ...]
) -> VerticalShift:
    from pyproj.transformer import TransformerGroup

    _register(dirs)
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "best transformation not available"
        group = TransformerGroup(
            _crs(source, vertical_wkt), _crs(target, None), always_xy=True, allow_ballpark=False
        )
    usable = [t for t in group.transformers if "ballpark" not in t.description.lower()]
    if not usable or not group.best_available:
        missing = sorted(
            {
                g.short_name
                for op in group.unavailable_operations
                for g in op.grids
                if not g.available
            }
        )
        need = f" (missing grid: {', '.join(missing)})" if missing else ""
        raise VerticalDatumError(
            f"heights in {source} cannot be converted to {target}: PROJ has no usable "
            f"transformation{need}; install the geoid grids (e.g. apt-get install proj-data) "
            f"in a PROJ data directory or $PROJ_DATA"
        )
    return VerticalShift(source, target, usable[0])


def height_shift(source: str, target: str, vertical_wkt: str | None = None) -> VerticalShift:
    """The conversion of heights from ``source`` to ``target`` datum; raises
    :class:`VerticalDatumError` when there is none (``unknown`` sources are not converted)."""
    if source in (target, UNKNOWN):
        return VerticalShift(source, target, None)
    return _shift(source, target, vertical_wkt, grid_dirs())


def clear_cache() -> None:
    """Forget the conversions found so far (after grids were installed or removed)."""
    _shift.cache_clear()
