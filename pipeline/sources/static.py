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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pystac
import shapely

from terraloom.pipeline.sources.base import Search, Source
from terraloom.pipeline.sources.filtering import in_time_range, matches_query
from terraloom.pipeline.sources.items import ItemError, SkippedItem, SourceError, SourceItem
from terraloom.pipeline.sources.stac_items import item_from_stac


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


#: A raw item (a pystac Item, or whatever a FeatureCollection holds: maybe not even an object)
#: and the href its relative assets resolve against.
RawItem = tuple[pystac.Item | Any, str]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"cannot read STAC file {path}: {err}") from None


def _link_failure(link: pystac.Link, err: Exception) -> ItemError:
    """Why an item link could not be read, as a reason code. pystac wraps what went wrong
    (``STACError: does not resolve to a STAC object``), so the file is read again here and
    the item model names the precise reason."""
    href = link.get_absolute_href() or link.href
    try:
        doc = json.loads(Path(urlparse(href).path).read_text())
    except json.JSONDecodeError as bad:
        return ItemError("bad_json", f"{href} is not JSON: {bad}")
    except (OSError, UnicodeDecodeError) as gone:
        return ItemError("unreadable", f"cannot read {href}: {gone}")
    try:
        item_from_stac(doc, base_href=href)
    except ItemError as precise:
        return precise
    return ItemError("malformed", f"pystac cannot read {href}: {type(err).__name__}: {err}")


def _catalog_items(cat: pystac.Catalog, base: str) -> Iterator[RawItem | ItemError]:
    """Items of a catalog and its children, one link at a time, so a bad item file is one
    skipped item (pystac's ``get_items`` stops the whole walk at the first one). A child
    catalog that cannot be read is an error of the source, not of an item."""
    root = cat.get_root()
    for link in list(cat.links):
        if link.rel != "item":
            continue
        try:
            target = link.resolve_stac_object(root=root).target
        except Exception as err:  # JSON, I/O and pystac's own errors for malformed dicts
            failure = _link_failure(link, err)
            failure.location = link.get_absolute_href() or link.href
            yield failure
            continue
        if not isinstance(target, pystac.Item):
            yield ItemError(
                "not_an_item",
                f"item link {link.href} is a {type(target).__name__}",
                location=link.get_absolute_href() or link.href,
            )
            continue
        yield target, target.get_self_href() or base
    for link in list(cat.links):
        if link.rel != "child":
            continue
        try:
            child = link.resolve_stac_object(root=root).target
        except Exception as err:
            raise SourceError(
                f"cannot read child catalog {link.get_absolute_href() or link.href}: {err}"
            ) from None
        if isinstance(child, pystac.Catalog):
            yield from _catalog_items(child, base)


def _read_file(path: Path, doc: Any) -> Iterator[RawItem | ItemError]:
    """Items of one parsed JSON file with the href their relative assets resolve against."""
    kind = doc.get("type") if isinstance(doc, dict) else None
    base = str(path.resolve())
    if kind in ("Catalog", "Collection"):
        try:
            cat = pystac.read_file(base)
        except Exception as err:
            raise SourceError(f"cannot read STAC catalog {path}: {err}") from None
        if not isinstance(cat, pystac.Catalog):
            raise SourceError(f"{path} is not a STAC Catalog or Collection")
        yield from _catalog_items(cat, base)
    elif kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise SourceError(f"{path}: a FeatureCollection needs a features list")
        for d in features:
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
        unreadable: list[SourceError] = []
        for path in self.paths:
            try:  # one file of a directory or glob that is not JSON is one skipped item...
                doc = _load_json(path)
            except SourceError as err:
                unreadable.append(err)
                self._skip(SkippedItem("bad_json", str(err), str(path)))
                continue
            for entry in _read_file(path, doc):
                if isinstance(entry, ItemError):
                    location = entry.location or str(path)
                    self._skip(SkippedItem(entry.reason, str(entry), location, None, entry.item_id))
                    continue
                raw, base = entry
                try:
                    it = item_from_stac(raw, base_href=base, rewrite_s3=rewrite_s3)
                except ItemError as err:
                    collection = raw.get("collection") if isinstance(raw, dict) else None
                    self._skip(
                        SkippedItem(
                            err.reason,
                            str(err),
                            _location(raw, base),
                            collection if isinstance(collection, str) else None,
                            err.item_id,
                        )
                    )
                    continue
                if (it.collection, it.id, base) in seen:
                    continue
                seen.add((it.collection, it.id, base))
                self._items[it.collection].append(it)
        if len(unreadable) == len(self.paths):  # ...but a source with nothing readable is an error
            raise unreadable[0]
        self._trees = {
            c: shapely.STRtree([it.geometry for it in items]) for c, items in self._items.items()
        }

    def collections(self) -> list[str]:
        return sorted(self._items)

    def items(self, collection: str | None = None) -> list[SourceItem]:
        if collection is None:
            return [it for c in sorted(self._items) for it in self._items[c]]
        return list(self._items.get(collection, []))

    def _search(self, s: Search) -> list[SourceItem]:
        items = self._items.get(s.collection)
        if not items:
            return []
        idx = self._trees[s.collection].query(s.geometry, predicate="intersects")
        out = [items[i] for i in sorted(idx)]
        return [
            it
            for it in out
            if in_time_range(it, s.time_range) and matches_query(it.properties, s.query)
        ]


def _location(raw: Any, base: str) -> str:
    """Where a skipped item was: its own file, or its FeatureCollection file."""
    if isinstance(raw, pystac.Item):
        return raw.get_self_href() or base
    return base
