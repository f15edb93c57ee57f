"""How source collections publish their values where the files alone do not say: fill
values, vertical datums, legends and asset keys per STAC collection (:class:`SourceConvention`),
and what Google Earth Engine serves in their place (:class:`EarthEngineConvention`,
:func:`ee_to_corpus`). Declared once, per collection, never sniffed from values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from terraloom.schemas.legends import ESA_WORLDCOVER_TO_LULC, LULC_CLASSES
from terraloom.schemas.reflectance import S2_DN_SCALE, s2_harmonise_params
from terraloom.schemas.registry import get_modality

__all__ = [
    "CONVENTIONS",
    "EARTH_ENGINE",
    "VERTICAL_DATUMS",
    "EarthEngineConvention",
    "SourceConvention",
    "ee_to_corpus",
    "source_convention",
]

#: Vertical datums heights may be given in -> EPSG code of their vertical CRS. "ellipsoidal"
#: (heights above the WGS 84 ellipsoid, a 3D CRS such as EPSG:4979) has none.
VERTICAL_DATUMS: dict[str, int | None] = {
    "EGM2008": 3855,
    "EGM96": 5773,
    "ellipsoidal": None,
}


@dataclass(frozen=True)
class SourceConvention:
    """How one source collection publishes its values, where the files alone do not say.

    Read by the sources (asset keys) and the build (fill values, legends, vertical datums);
    ``docs/pipeline.md`` ("Sources in the wild") lists them. Conventions are declared here
    once, per collection, never sniffed from values. Sentinel-2's offsets are the same for
    every S2 collection: :data:`S2_STORED_OFFSET_DN` and :func:`s2_harmonise_params`.
    """

    collection: str
    #: Registry modality the collection serves.
    modality: str
    #: Source values that are nodata whatever the file declares (S1 GRD: the zero fill
    #: along swath edges, in files that declare no nodata).
    fill_values: tuple[float, ...] = ()
    #: Vertical datum of the heights (a :data:`VERTICAL_DATUMS` key) when the file's CRS
    #: has no vertical part.
    vertical_datum: str | None = None
    #: Source class value -> registry legend value; every other value is nodata.
    class_map: tuple[tuple[int, int], ...] = ()
    #: Registry band -> asset key, where the collection's key is not the band's usual one.
    asset_keys: tuple[tuple[str, str], ...] = ()

    def class_lut(self) -> np.ndarray | None:
        """uint8 value -> legend value lookup (0 = nodata), or None without a class map."""
        if not self.class_map:
            return None
        lut = np.zeros(256, np.uint8)
        for src, dst in self.class_map:
            lut[src] = dst
        return lut


CONVENTIONS: tuple[SourceConvention, ...] = (
    SourceConvention("sentinel-1-grd", "S1GRD", fill_values=(0.0,)),
    SourceConvention("cop-dem-glo-30", "DEM", vertical_datum="EGM2008"),
    SourceConvention("cop-dem-glo-90", "DEM", vertical_datum="EGM2008"),
    SourceConvention("nasadem", "DEM", vertical_datum="EGM96"),
    SourceConvention(
        "esa-worldcover", "LULC", class_map=ESA_WORLDCOVER_TO_LULC, asset_keys=(("class", "map"),)
    ),
)
_CONVENTION_BY_COLLECTION = {c.collection: c for c in CONVENTIONS}


def source_convention(collection: str | None) -> SourceConvention | None:
    """The registry's conventions of a source collection, or None (none declared)."""
    return _CONVENTION_BY_COLLECTION.get(collection or "")


@dataclass(frozen=True)
class EarthEngineConvention:
    """What a modality's Google Earth Engine collection holds, next to the STAC collections
    of :attr:`Modality.collections`, and how its values map onto the corpus convention.

    Earth Engine serves its own renditions of the products: Sentinel-2 with the
    processing-baseline offset removed, Sentinel-1 GRD orthorectified and in dB, land cover
    in the legend of its publisher. The build asks Earth Engine for pixels on each sample's
    own grid (``ee.data.computePixels``) and turns the answer into corpus values with
    :func:`ee_to_corpus`, the one place these conventions are applied.
    """

    #: The STAC collection it stands in for (the plan's collection id; ``PlanConfig.collections``
    #: picks another one of a modality, e.g. ``LULC: esa-worldcover``).
    stac_collection: str
    modality: str
    #: Earth Engine ImageCollection id.
    collection: str
    #: (registry band, Earth Engine band id) pairs; S2L2A also maps its SCL band.
    bands: tuple[tuple[str, str], ...]
    #: What the collection's pixels are, in words (docs, corpus provenance).
    holds: str
    #: Sentinel-2: (scale, offset) of reflectance = DN * scale + offset as Earth Engine
    #: serves the DN (harmonised collections: offset already removed, so 0 for every baseline).
    s2_reflectance: tuple[float, float] | None = None
    #: SAR bands are served in dB; the build asks Earth Engine for ``10 ** (dB / 10)`` before
    #: resampling, so its answers are linear power (resampled as power, like every source).
    db: bool = False
    #: Value Earth Engine fills masked pixels with (``unmask``); read back as nodata.
    fill: float = 0.0
    #: (source class, registry class) pairs for a land-cover legend; empty: identical legend.
    legend: tuple[tuple[int, int], ...] = ()
    #: Image property holding the scene cloud cover in percent, if any.
    cloud_property: str | None = None
    #: Vertical datum of heights (a :data:`VERTICAL_DATUMS` key), as :class:`SourceConvention`.
    vertical_datum: str | None = None


#: (registry band, Earth Engine band id) of Sentinel-2: B01 -> B1, ..., B8A stays B8A.
_EE_S2_BANDS = tuple(
    (b, "B" + b[1:].lstrip("0") if b != "B8A" else "B8A") for b in get_modality("S2L1C").band_names
)

#: Earth Engine conventions per STAC collection (the collections ``plan --source ee`` uses).
EARTH_ENGINE: dict[str, EarthEngineConvention] = {
    c.stac_collection: c
    for c in (
        EarthEngineConvention(
            "sentinel-2-l2a",
            "S2L2A",
            "COPERNICUS/S2_SR_HARMONIZED",
            (*(p for p in _EE_S2_BANDS if p[0] != "B10"), ("SCL", "SCL")),
            "Sentinel-2 L2A surface reflectance DN with the baseline-04.00 offset removed "
            "(reflectance = DN / 10000 for every baseline); stored +1000 DN, the corpus convention",
            s2_reflectance=(1 / S2_DN_SCALE, 0.0),
            cloud_property="CLOUDY_PIXEL_PERCENTAGE",
        ),
        EarthEngineConvention(
            "sentinel-2-l1c",
            "S2L1C",
            "COPERNICUS/S2_HARMONIZED",
            _EE_S2_BANDS,
            "Sentinel-2 L1C top-of-atmosphere reflectance DN with the baseline-04.00 offset "
            "removed; stored +1000 DN, the corpus convention",
            s2_reflectance=(1 / S2_DN_SCALE, 0.0),
            cloud_property="CLOUDY_PIXEL_PERCENTAGE",
        ),
        EarthEngineConvention(
            "sentinel-1-grd",
            "S1GRD",
            "COPERNICUS/S1_GRD",
            (("VV", "VV"), ("VH", "VH")),
            "Sentinel-1 GRD sigma0 in dB, thermal-noise removed, radiometrically calibrated and "
            "orthorectified (terrain-corrected geometry, not terrain-flattened) in UTM: the "
            "product TerraMesh's S1GRD (SSL4EO-S12) was made from, so it stays S1GRD, not S1RTC",
            db=True,
        ),
        EarthEngineConvention(
            "cop-dem-glo-30",
            "DEM",
            "COPERNICUS/DEM/GLO30",
            (("elevation", "DEM"),),
            "Copernicus DEM GLO-30 elevation in metres (EGM2008), the same tiles as cop-dem-glo-30",
            fill=-32768.0,
            vertical_datum="EGM2008",
        ),
        EarthEngineConvention(
            "io-lulc-9-class",
            "LULC",
            "projects/sat-io/open-datasets/landcover/ESRI_Global-LULC_10m_TS",
            (("class", "b1"),),
            "Esri 10 m annual land use / land cover (community catalog), the io-lulc-9-class "
            "legend: 1 water, 2 trees, 4 flooded vegetation, 5 crops, 7 built area, "
            "8 bare ground, 9 snow/ice, 10 clouds, 11 rangeland; 0 nodata",
            legend=tuple((v, v) for v in LULC_CLASSES),
        ),
        EarthEngineConvention(
            "esa-worldcover",
            "LULC",
            "ESA/WorldCover/v200",
            (("class", "Map"),),
            "ESA WorldCover 10 m 2021 (v200), its 11-class legend mapped onto the registry's "
            "(ESA_WORLDCOVER_TO_LULC, as for the STAC esa-worldcover collection)",
            legend=ESA_WORLDCOVER_TO_LULC,
        ),
    )
}


def ee_to_corpus(convention: EarthEngineConvention, band: str, values: np.ndarray) -> np.ndarray:
    """Pixels of one band as Earth Engine answered -> float32 corpus values, NaN for nodata.

    Sentinel-2 DN move onto :data:`S2_CONVENTION` (Earth Engine's harmonised DN + 1000, via
    :func:`s2_harmonise_params`); SAR answers are linear power (see ``db``), the domain the
    build mosaics SAR in, and non-positive power is nodata; a land-cover legend is mapped
    onto the registry's classes (unknown values become nodata); ``fill`` is nodata.
    """
    m = get_modality(convention.modality)
    raw = np.asarray(values)
    out = raw.astype(np.float32, copy=True)
    fill = np.float32(convention.fill)
    nodata = ~np.isfinite(out) | (out == fill)
    if m.nodata is not None and not (isinstance(m.nodata, float) and np.isnan(m.nodata)):
        nodata |= out == np.float32(m.nodata)
    if convention.s2_reflectance is not None and band != "SCL":
        gain, bias = s2_harmonise_params(*convention.s2_reflectance, None)
        out = out * np.float32(gain) + np.float32(bias)
    if convention.db:
        nodata |= out <= 0
    if convention.legend and m.classes:
        lut = np.zeros(65536, np.float32)
        for src, dst in convention.legend:
            lut[int(src)] = float(dst)
        ok = ~nodata & (out >= 0) & (out < lut.size)
        mapped = np.zeros(out.shape, np.float32)
        mapped[ok] = lut[out[ok].astype(np.int64)]
        nodata |= mapped == 0
        out = mapped
    out[nodata] = np.nan
    return out
