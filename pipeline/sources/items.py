"""The item model every source maps to: :class:`SourceItem` with its :class:`SourceAsset` per
band, and the errors and skip records of sources.

STAC APIs, static catalogs and Earth Engine describe the same scenes with different keys;
each source maps its items once to a :class:`SourceItem` whose ``assets`` are keyed by the
registry's canonical band names, so matching and the build never care where they came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any

from shapely.geometry.base import BaseGeometry

from terraloom.schemas.modalities import (
    Modality,
    get_modality,
)

TimeRange = tuple[datetime, datetime]
DateTime = datetime  # for annotations inside SourceItem, whose field ``datetime`` shadows the type

#: Auxiliary band stored with S2L2A (scene classification, used for cloud masks).
SCL_BAND = "SCL"


class SourceError(RuntimeError):
    """A source cannot be used (bad URL, no credentials, API failure after retries).

    The CLI reports it as a message with exit code 2, never as a traceback.
    """


#: Why a catalog item was skipped (``ItemError.reason``, ``SkippedItem.reason``).
ITEM_REASONS = (
    "bad_json",  # the item's file is not JSON
    "not_an_item",  # JSON, but not an object with an id (a string, a list, a number...)
    "no_collection",
    "bad_datetime",  # no datetime / start_datetime / end_datetime, or an unreadable one
    "no_geometry",  # geometry null and no bbox: the item is nowhere
    "bad_geometry",
    "bad_assets",  # assets not an object, an asset without a string href
    "unreadable",  # the item's file cannot be opened (a dangling link)
    "malformed",  # anything else a third-party catalog can get wrong
)


class ItemError(SourceError):
    """One catalog item is malformed. Sources skip it and record a :class:`SkippedItem`:
    a catalog of millions of items must not stop a plan for one bad record."""

    def __init__(
        self,
        reason: str,
        message: str,
        item_id: str | None = None,
        location: str | None = None,
    ) -> None:
        if reason not in ITEM_REASONS:
            raise ValueError(f"unknown item reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.item_id = item_id
        #: where the item was (its file), when the source knows better than the caller
        self.location = location


@dataclass(frozen=True)
class SkippedItem:
    """A malformed item a source left out: where it was, and why (for the plan report)."""

    reason: str
    message: str
    location: str
    collection: str | None = None
    item_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "collection": self.collection,
            "item_id": self.item_id,
            "location": self.location,
            "message": self.message,
        }


@dataclass(frozen=True)
class SourceAsset:
    """One band's file: the plan's ASSET struct (see ``schemas.tables.ASSET``).

    ``band_index`` is the band's 1-based index in a multi-band file (from the order of the
    asset's ``eo:bands`` / ``raster:bands`` / ``bands`` list, or set explicitly by a source);
    None: the file itself must tell (one band, or band descriptions naming it), else the
    build rejects the sample (``ambiguous_band``) rather than guess band 1.
    """

    key: str
    href: str
    band: str
    epsg: int | None = None
    transform: tuple[float, ...] | None = None
    shape: tuple[int, int] | None = None
    nodata: float | None = None
    scale: float | None = None
    offset: float | None = None
    band_index: int | None = None

    def to_struct(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "band": self.band,
            "href": self.href,
            "epsg": self.epsg,
            "transform": list(self.transform) if self.transform else None,
            "shape": list(self.shape) if self.shape else None,
            "nodata": self.nodata,
            "scale": self.scale,
            "offset": self.offset,
            "band_index": self.band_index,
        }


@dataclass(frozen=True)
class SourceItem:
    """A scene as matching sees it, whatever the source. Identity is (collection, id)."""

    collection: str
    id: str
    datetime: datetime
    geometry: BaseGeometry = field(compare=False, repr=False)
    bbox: tuple[float, float, float, float] = field(compare=False, repr=False)
    modality: str | None = None
    start_datetime: DateTime | None = field(default=None, compare=False)
    end_datetime: DateTime | None = field(default=None, compare=False)
    cloud_cover: float | None = field(default=None, compare=False)
    platform: str | None = field(default=None, compare=False)
    orbit_state: str | None = field(default=None, compare=False)
    relative_orbit: int | None = field(default=None, compare=False)
    epsg: int | None = field(default=None, compare=False)
    needs_gcps: bool = field(default=False, compare=False)
    processing_baseline: str | None = field(default=None, compare=False)
    mgrs_tile: str | None = field(default=None, compare=False)
    polarizations: tuple[str, ...] = field(default=(), compare=False)
    #: canonical band name (registry ``Band.name``, plus ``SCL``) -> asset
    assets: Mapping[str, SourceAsset] = field(default_factory=dict, compare=False, repr=False)
    self_href: str | None = field(default=None, compare=False, repr=False)
    #: the source's raw properties (STAC ``properties`` / Earth Engine image properties)
    properties: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "assets", MappingProxyType(dict(self.assets)))
        object.__setattr__(self, "properties", MappingProxyType(dict(self.properties)))

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickle as plain dicts (mappingproxy is not picklable): items travel to Beam/Dask workers."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["assets"] = dict(self.assets)
        state["properties"] = dict(self.properties)
        return (_rebuild_item, (state,))

    @property
    def year(self) -> int:
        """Year a (possibly annual) product describes: its start, else its datetime."""
        return (self.start_datetime or self.datetime).year

    def missing_bands(
        self, modality: str | Modality, bands: Sequence[str] | None = None
    ) -> tuple[str, ...]:
        """Bands of ``modality`` (only ``bands`` of it, when given) this item has no asset for."""
        m = get_modality(modality)
        return tuple(b for b in (bands or m.band_names) if b not in self.assets)

    def to_scene(
        self, modality: str | Modality, cloud_cover: float | None = None
    ) -> dict[str, Any]:
        """The plan's SCENE struct; ``cloud_cover`` overrides the item's (footprint value)."""
        m = get_modality(modality)
        wanted = [*m.band_names, SCL_BAND] if m.name == "S2L2A" else list(m.band_names)
        assets = [self.assets[b].to_struct() for b in wanted if b in self.assets]
        return {
            "modality": m.name,
            "collection": self.collection,
            "item_id": self.id,
            "datetime": self.datetime,
            "platform": self.platform,
            "orbit_state": self.orbit_state,
            "relative_orbit": self.relative_orbit,
            "cloud_cover": self.cloud_cover if cloud_cover is None else cloud_cover,
            "epsg": self.epsg,
            "needs_gcps": self.needs_gcps,
            "processing_baseline": self.processing_baseline,
            "assets": assets,
        }


def _rebuild_item(state: dict[str, Any]) -> SourceItem:
    return SourceItem(**state)
