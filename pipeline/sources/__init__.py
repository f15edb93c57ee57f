"""Sources of scenes: one interface (``search``), three implementations, one item model.

``open_source`` turns the CLI's ``--source`` spec into a source (and, for the embedded
world, the world's own region and period as defaults):

- ``world:DIR``   the synthetic world's static catalog (``DIR/world.json`` + catalog)
- ``catalog:PATH`` a static catalog / collection / ItemCollection file, a directory or a glob
- ``stac:URL``    a STAC API (``stac:pc`` and ``stac:es`` name Planetary Computer / Earth Search)
- ``ee``          Google Earth Engine (needs credentials)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terraloom.pipeline.grid import Region
from terraloom.pipeline.sources.base import (
    Source,
    SourceAsset,
    SourceError,
    SourceItem,
    TimeRange,
    item_from_stac,
    modality_for_collection,
    parse_datetime,
    parse_time_range,
)
from terraloom.pipeline.sources.earthengine import EarthEngineSource, item_from_ee, pixel_grid
from terraloom.pipeline.sources.stac_api import EARTH_SEARCH, PLANETARY_COMPUTER, StacApiSource
from terraloom.pipeline.sources.static import StaticSource

STAC_ALIASES = {"pc": PLANETARY_COMPUTER, "es": EARTH_SEARCH}


@dataclass(frozen=True)
class OpenedSource:
    """A source plus the region / period it implies (the world's own), if any."""

    source: Source
    region: Region | None = None
    time_range: TimeRange | None = None


def _world_doc(directory: Path) -> dict[str, Any]:
    path = directory / "world.json"
    if not path.is_file():
        raise SourceError(
            f"{directory} is not an embedded world: no world.json (create one with `terraloom-pipeline world`)"
        )
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise SourceError(f"cannot read {path}: {err}") from None


def _period(doc: dict[str, Any]) -> TimeRange | None:
    p = doc.get("period")
    if p is None and doc.get("start") and doc.get("end"):
        p = [doc["start"], doc["end"]]
    if p is None:
        return None
    if isinstance(p, str):
        return parse_time_range(p)
    if isinstance(p, dict):
        p = [p.get("start"), p.get("end")]
    start, end = parse_datetime(p[0]), parse_datetime(p[1])
    if start is None or end is None:
        return None
    if isinstance(p[1], str) and len(p[1]) == 10:  # a bare date: include the whole day
        end = end.replace(hour=23, minute=59, second=59, microsecond=999999)
    return start, end


def world_defaults(
    directory: str | os.PathLike[str],
) -> tuple[Path, Region | None, TimeRange | None]:
    """(catalog path, region, period) of an embedded world directory, from ``world.json``."""
    d = Path(directory)
    doc = _world_doc(d)
    catalog = d / str(doc.get("catalog", "catalog.json"))
    if not catalog.exists():
        raise SourceError(f"world catalog {catalog} does not exist")
    regions = doc.get("regions") or []
    if isinstance(regions, dict):
        regions = [
            {"name": k, **(v if isinstance(v, dict) else {"bbox": v})} for k, v in regions.items()
        ]
    boxes = [r["bbox"] if isinstance(r, dict) else r for r in regions]
    if not boxes and doc.get("bbox"):
        boxes = [doc["bbox"]]
    region = None
    if boxes:
        from shapely import union_all
        from shapely.geometry import box

        region = Region(geometry=union_all([box(*b[:4]) for b in boxes]))
    period = _period(doc)
    if period is None:
        periods = [p for p in (_period(r) for r in regions if isinstance(r, dict)) if p is not None]
        if periods:
            period = (min(p[0] for p in periods), max(p[1] for p in periods))
    return catalog, region, period


def open_source(
    spec: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    sign: bool | None = None,
    ee_project: str | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    max_retries: int | None = None,
    rate_limit: float | None = None,
    page_size: int | None = None,
) -> OpenedSource:
    """Open a source from its CLI spec (see the module docstring). ``timeout`` (per HTTP
    request), ``deadline`` (per search), ``max_retries``, ``rate_limit`` (requests/s of this
    process) and ``page_size`` (items per page) apply to STAC APIs; None keeps
    :class:`StacApiSource`'s defaults."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "world":
        if not arg:
            raise SourceError("world source needs a directory: world:DIR")
        catalog, region, period = world_defaults(arg)
        return OpenedSource(StaticSource(catalog), region, period)
    if kind == "catalog":
        if not arg:
            raise SourceError("catalog source needs a path: catalog:PATH")
        return OpenedSource(StaticSource(arg))
    if kind == "stac":
        url = STAC_ALIASES.get(arg.lower(), arg)
        http: dict[str, Any] = {
            k: v
            for k, v in (
                ("timeout", timeout),
                ("deadline", deadline),
                ("max_retries", max_retries),
                ("rate_limit", rate_limit),
                ("limit", page_size),
            )
            if v is not None
        }
        return OpenedSource(
            StacApiSource(url, cache_dir=cache_dir, use_cache=use_cache, sign=sign, **http)
        )
    if kind == "ee":
        return OpenedSource(EarthEngineSource(project=ee_project or (arg or None)))
    raise SourceError(
        f"unknown source {spec!r}: use world:DIR, catalog:PATH, stac:URL (or stac:pc / stac:es) or ee"
    )


__all__ = [
    "EarthEngineSource",
    "OpenedSource",
    "Source",
    "SourceAsset",
    "SourceError",
    "SourceItem",
    "StacApiSource",
    "StaticSource",
    "TimeRange",
    "item_from_ee",
    "item_from_stac",
    "modality_for_collection",
    "open_source",
    "parse_time_range",
    "pixel_grid",
    "world_defaults",
]
