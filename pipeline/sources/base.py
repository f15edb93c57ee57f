"""The interface every source implements (:class:`Source`), and the one import path of the
item model and the STAC mapping sources share.

STAC APIs, static catalogs and Earth Engine describe the same scenes with different keys
(Planetary Computer ``B04``, Earth Search ``red``, Earth Engine ``B4``), projections in
``proj:epsg`` or ``proj:code`` at item or asset level, and hrefs that may be relative, signed
or ``s3://``. Matching and the build must not care, so each source maps its items once to a
:class:`SourceItem` whose ``assets`` are keyed by the registry's canonical band names.

The item model lives in :mod:`.items`, the STAC mapping in :mod:`.stac_items`, local
filtering in :mod:`.filtering`; their names are re-exported here.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shapely.geometry.base import BaseGeometry

from terraloom.pipeline.sources.filtering import filter_items, in_time_range, matches_query
from terraloom.pipeline.sources.items import (
    ITEM_REASONS,
    SCL_BAND,
    ItemError,
    SkippedItem,
    SourceAsset,
    SourceError,
    SourceItem,
    TimeRange,
)
from terraloom.pipeline.sources.stac_items import (
    COLLECTION_ALIASES,
    GCP_COLLECTIONS,
    S3_BUCKET_REGIONS,
    SAR_POLARIZATIONS,
    HrefRewriter,
    item_from_stac,
    modality_for_collection,
    parse_datetime,
    parse_epsg,
    parse_time_range,
    s3_to_https,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Search:
    """One search: every item of ``collection`` intersecting ``geometry`` (lon/lat) in
    ``time_range`` (``None``: any time, for DEMs), filtered by an optional STAC ``query``
    (``{"eo:cloud_cover": {"lt": 50}}``)."""

    collection: str
    geometry: BaseGeometry
    time_range: TimeRange | None
    query: Mapping[str, Any] | None = None


class Source(abc.ABC):
    """Where items come from: :meth:`search` is the one call planning makes; each source
    answers it in :meth:`_search`."""

    name: str = "source"

    def search(
        self,
        collection: str,
        geometry: BaseGeometry,
        time_range: TimeRange | None,
        query: Mapping[str, Any] | None = None,
    ) -> list[SourceItem]:
        """Every item of ``collection`` intersecting ``geometry`` in ``time_range`` that
        matches ``query`` (:class:`Search`)."""
        return self._search(Search(collection, geometry, time_range, query))

    @abc.abstractmethod
    def _search(self, s: Search) -> list[SourceItem]:
        """This source's items for one search."""

    def collections(self) -> list[str] | None:
        """Collections this source serves, when it knows (``None``: unknown, ask anyway)."""
        return None

    def skipped_items(self) -> list[SkippedItem]:
        """Malformed items this source has skipped so far, each once, in the order met."""
        return list(getattr(self, "_skipped", {}).values())

    def _skip(self, skipped: SkippedItem) -> None:
        """Record (and log, once) a skipped item; the same item met by two searches counts once."""
        seen: dict[tuple[Any, ...], SkippedItem] = self.__dict__.setdefault("_skipped", {})
        key = (skipped.reason, skipped.location, skipped.collection, skipped.item_id)
        if key not in seen:
            seen[key] = skipped
            logger.warning(
                "skipped STAC item %s at %s (%s): %s",
                skipped.item_id or "?",
                skipped.location,
                skipped.reason,
                skipped.message,
            )


__all__ = [
    "COLLECTION_ALIASES",
    "GCP_COLLECTIONS",
    "ITEM_REASONS",
    "S3_BUCKET_REGIONS",
    "SAR_POLARIZATIONS",
    "SCL_BAND",
    "HrefRewriter",
    "ItemError",
    "Search",
    "SkippedItem",
    "Source",
    "SourceAsset",
    "SourceError",
    "SourceItem",
    "TimeRange",
    "filter_items",
    "in_time_range",
    "item_from_stac",
    "matches_query",
    "modality_for_collection",
    "parse_datetime",
    "parse_epsg",
    "parse_time_range",
    "s3_to_https",
]
