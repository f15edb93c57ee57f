"""Who made the data a corpus is derived from, under which licence, and how to credit them.

One entry per source collection of the modality registry (Planetary Computer ids). A
published corpus is a derived product: the STAC collection lists these as providers and
licence links, the dataset card repeats the attribution each source requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from terraloom.schemas.modalities import get_modality


@dataclass(frozen=True)
class SourceCollection:
    """A source collection: its licence (SPDX id or 'other'), providers and required credit."""

    id: str
    title: str
    license: str
    license_url: str
    providers: tuple[tuple[str, str, str], ...]  # (name, roles joined by ',', url)
    attribution: str
    url: str


_COPERNICUS_TERMS = (
    "https://sentinels.copernicus.eu/documents/247904/690755/Sentinel_Data_Legal_Notice"
)
_SENTINEL_CREDIT = "Contains modified Copernicus Sentinel data [{year}], processed by terraloom."
_PC_DATASET = "https://planetarycomputer.microsoft.com/dataset/"


def _esa(mission: int) -> tuple[str, str, str]:
    """ESA, producer and licensor of every Sentinel-``mission`` product."""
    return (
        "ESA",
        "producer,licensor",
        f"https://sentinel.esa.int/web/sentinel/missions/sentinel-{mission}",
    )


def _sentinel(id: str, title: str, mission: int) -> SourceCollection:
    """An ESA Sentinel product as Copernicus publishes it: the Sentinel data legal notice
    and its credit line (the Planetary Computer only hosts it)."""
    return SourceCollection(
        id,
        title,
        "other",
        _COPERNICUS_TERMS,
        (_esa(mission),),
        _SENTINEL_CREDIT,
        _PC_DATASET + id,
    )


SOURCES: dict[str, SourceCollection] = {
    s.id: s
    for s in (
        _sentinel("sentinel-2-l1c", "Sentinel-2 Level-1C", 2),
        _sentinel("sentinel-2-l2a", "Sentinel-2 Level-2A", 2),
        _sentinel("sentinel-1-grd", "Sentinel-1 Level-1 GRD", 1),
        SourceCollection(
            "sentinel-1-rtc",
            "Sentinel-1 Radiometrically Terrain Corrected (RTC)",
            "CC-BY-4.0",
            "https://creativecommons.org/licenses/by/4.0/",
            (
                _esa(1),
                ("Microsoft", "processor,host", "https://planetarycomputer.microsoft.com"),
            ),
            _SENTINEL_CREDIT
            + " RTC processing by Microsoft Planetary Computer (CC BY 4.0); terrain correction uses"
            " the Copernicus DEM GLO-30.",
            _PC_DATASET + "sentinel-1-rtc",
        ),
        SourceCollection(
            "cop-dem-glo-30",
            "Copernicus DEM GLO-30",
            "other",
            "https://spacedata.copernicus.eu/documents/20123/121286/CSCDA_ESA_Mission-specific+Annex_31_Oct_22.pdf",
            (
                ("European Space Agency", "licensor", "https://www.esa.int"),
                ("Airbus", "producer", "https://www.airbus.com"),
            ),
            "Produced using Copernicus WorldDEM-30 (c) DLR e.V. 2010-2014 and (c) Airbus Defence "
            "and Space GmbH 2014-2018 provided under COPERNICUS by the European Union and ESA; "
            "all rights reserved.",
            _PC_DATASET + "cop-dem-glo-30",
        ),
        SourceCollection(
            "io-lulc-9-class",
            "Esri 10-Meter Land Use/Land Cover (9-class)",
            "CC-BY-4.0",
            "https://creativecommons.org/licenses/by/4.0/",
            (
                ("Esri", "licensor", "https://www.esri.com"),
                ("Impact Observatory", "producer,licensor", "https://www.impactobservatory.com"),
                ("Microsoft", "host", "https://planetarycomputer.microsoft.com"),
            ),
            "Land cover: Esri / Impact Observatory 10 m Annual Land Use Land Cover (9-class), "
            "CC BY 4.0 (Karra et al., 2021, 'Global land use / land cover with Sentinel 2 and "
            "deep learning').",
            _PC_DATASET + "io-lulc-9-class",
        ),
    )
}


def source_collections(modality_names: tuple[str, ...] | list[str]) -> list[SourceCollection]:
    """The source collections the given modalities are read from, in registry order."""
    seen: dict[str, SourceCollection] = {}
    for name in modality_names:
        for cid in get_modality(name).collections:
            if cid in SOURCES and cid not in seen:
                seen[cid] = SOURCES[cid]
    return list(seen.values())
