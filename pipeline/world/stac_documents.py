"""The documents a STAC API answers with, and how it reads a search: shared by every STAC API
terraloom serves on 127.0.0.1 (the synthetic global API of :mod:`.stac_server`, the small
item-dict APIs of the source tests), so they page, filter and describe themselves alike.

Pure functions: parameters in (GET query strings and POST bodies alike), JSON-ready dicts out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from terraloom.pipeline.sources.base import parse_datetime

CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
]
GEOJSON = "application/geo+json"


@dataclass(frozen=True)
class SearchParams:
    """A ``/search`` request, read: ``None`` where the request leaves it open."""

    collections: tuple[str, ...] | None
    #: ``bbox`` as a box, or ``intersects`` (lon/lat)
    geometry: BaseGeometry | None
    start: datetime | None
    end: datetime | None
    #: the ``query`` extension's conditions (``sources.base.matches_query``)
    query: Mapping[str, Any] | None


def parse_search(params: Mapping[str, Any]) -> SearchParams:
    """Read ``collections``, ``bbox`` / ``intersects``, ``datetime`` (an interval with ``..``
    open ends, or one instant) and ``query`` from a GET query (strings) or a POST body."""
    colls = params.get("collections")
    if isinstance(colls, str):
        colls = colls.split(",")
    geometry: BaseGeometry | None = None
    if params.get("bbox"):
        bb = params["bbox"]
        geometry = box(*[float(x) for x in (bb.split(",") if isinstance(bb, str) else bb)][:4])
    elif params.get("intersects"):
        g = params["intersects"]
        geometry = shape(json.loads(g) if isinstance(g, str) else g)
    start = end = None
    if params.get("datetime"):
        text = str(params["datetime"])
        a, _, b = text.partition("/") if "/" in text else (text, "", text)
        start = parse_datetime(a) if a not in ("", "..") else None
        end = parse_datetime(b) if b not in ("", "..") else None
    query = params.get("query")
    if isinstance(query, str):
        query = json.loads(query)
    return SearchParams(tuple(colls) if colls else None, geometry, start, end, query)


def search_page(
    hits: Sequence[dict[str, Any]], params: Mapping[str, Any], method: str, url: str, limit: int
) -> dict[str, Any]:
    """One page of ``hits`` from the request's ``token`` (an offset), with the ``next`` link
    a client follows: a GET URL with the new token, or a POST body carrying it."""
    token = int(params.get("token") or 0)
    links: list[dict[str, Any]] = []
    if token + limit < len(hits):
        if method == "GET":
            q = {k: v for k, v in params.items() if k != "token"}
            q["token"] = token + limit
            links.append({"rel": "next", "href": f"{url}/search?{urlencode(q)}", "method": "GET"})
        else:
            links.append(
                {
                    "rel": "next",
                    "href": f"{url}/search",
                    "method": "POST",
                    "body": {**params, "token": token + limit},
                }
            )
    return {
        "type": "FeatureCollection",
        "features": list(hits[token : token + limit]),
        "links": links,
        "numberMatched": len(hits),
    }


def collection_doc(cid: str, description: str, start: str | None = None) -> dict[str, Any]:
    """A minimal global collection document (extent: the whole globe, from ``start`` on)."""
    return {
        "type": "Collection",
        "id": cid,
        "stac_version": "1.0.0",
        "description": description,
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [[start, None]]},
        },
        "links": [],
    }


def landing_doc(url: str, catalog_id: str, description: str) -> dict[str, Any]:
    """The landing page: conformance classes and the links a client discovers search by."""
    return {
        "type": "Catalog",
        "id": catalog_id,
        "stac_version": "1.0.0",
        "description": description,
        "conformsTo": CONFORMANCE,
        "links": [
            {"rel": "self", "href": f"{url}/", "type": "application/json"},
            {"rel": "root", "href": f"{url}/", "type": "application/json"},
            {"rel": "conformance", "href": f"{url}/conformance"},
            {"rel": "data", "href": f"{url}/collections"},
            {"rel": "search", "href": f"{url}/search", "method": "GET", "type": GEOJSON},
            {"rel": "search", "href": f"{url}/search", "method": "POST", "type": GEOJSON},
        ],
    }
