"""Static STAC catalogs and ItemCollection files (the embedded world, recorded fixtures).

Everything is read once with pystac and indexed per collection in an STRtree, so a plan of
thousands of samples searches in memory. Relative asset hrefs become absolute ``file://``
URIs against each item's own location, so the plan can be read from any working directory.
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pystac
import shapely
from shapely.geometry.base import BaseGeometry

from pipeline.sources.base import (
    Source,
    SourceError,
    SourceItem,
    TimeRange,
    in_time_range,
    item_from_stac,
    matches_query,
)


def _expand(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        text = os.fspath(p)
        if any(ch in text for ch in "*?["):
            hits = sorted(glob.glob(text))
            if not hits:
                raise SourceError(f"no files match {text!r}")
            out.extend(Path(h) for h in hits)
            continue
        path = Path(text)
        if path.is_dir():
            for name in ("catalog.json", "collection.json"):
                if (path / name).is_file():
                    out.append(path / name)
                    break
            else:
                found = sorted(path.glob("*.json"))
                if not found:
                    raise SourceError(f"{path} holds no catalog.json, collection.json or *.json")
                out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise SourceError(f"static catalog {path} does not exist")
    return out


def _read_file(path: Path) -> Iterable[tuple[pystac.Item | Mapping[str, Any], str]]:
    """Items of one JSON file with the href their relative assets resolve against."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SourceError(f"cannot read STAC file {path}: {err}") from None
    kind = doc.get("type")
    base = str(path.resolve())
    if kind in ("Catalog", "Collection"):
        cat = pystac.read_file(base)
        assert isinstance(cat, pystac.Catalog)
        for item in cat.get_items(recursive=True):
            yield item, item.get_self_href() or base
    elif kind == "FeatureCollection":
        for d in doc.get("features", []):
            yield d, base
    elif kind == "Feature":
        yield doc, base
    else:
        raise SourceError(f"{path} is not a STAC Catalog, Collection, Item or ItemCollection")


class StaticSource(Source):
    """Items from static catalogs / ItemCollection files / directories / globs of them."""

    name = "catalog"

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        rewrite_s3: bool = True,
    ) -> None:
        self.paths = _expand(paths)
        self._items: dict[str, list[SourceItem]] = defaultdict(list)
        # The same id may come from two providers (Earth Search and PC DEM tiles): keep both,
        # but drop an item a catalog links twice.
        seen: set[tuple[str, str, str]] = set()
        for path in self.paths:
            for raw, base in _read_file(path):
                it = item_from_stac(raw, base_href=base, rewrite_s3=rewrite_s3)
                if (it.collection, it.id, base) in seen:
                    continue
                seen.add((it.collection, it.id, base))
                self._items[it.collection].append(it)
        self._trees = {
            c: shapely.STRtree([it.geometry for it in items]) for c, items in self._items.items()
        }

    def collections(self) -> list[str]:
        return sorted(self._items)

    def items(self, collection: str | None = None) -> list[SourceItem]:
        if collection is None:
            return [it for c in sorted(self._items) for it in self._items[c]]
        return list(self._items.get(collection, []))

    def search(
        self,
        collection: str,
        geometry: BaseGeometry,
        time_range: TimeRange | None,
        query: Mapping[str, Any] | None = None,
    ) -> list[SourceItem]:
        items = self._items.get(collection)
        if not items:
            return []
        idx = self._trees[collection].query(geometry, predicate="intersects")
        out = [items[i] for i in sorted(idx)]
        return [
            it
            for it in out
            if in_time_range(it, time_range) and matches_query(it.properties, query)
        ]
