"""STAC documents of the world, shaped like Planetary Computer's.

Items are written as plain dicts (fast, byte-stable) and checked with pystac in the tests.
Collection ids, asset keys, properties and extensions follow the real collections:
``sentinel-2-l2a`` / ``sentinel-2-l1c`` (B01..B12, B8A, SCL; ``s2:*``, ``eo``, ``proj``,
``raster`` with the baseline >= 04.00 offset), ``sentinel-1-rtc`` (``vv``/``vh`` float32
gamma0, UTM ``proj``), ``sentinel-1-grd`` (``vv``/``vh``, GCPs only, no ``proj``),
``cop-dem-glo-30`` (``data``, EPSG:4326, pixel-is-point) and ``io-lulc-9-class`` (``data``).
Hrefs are relative, so the catalog can be moved. Items validate offline against pystac's
bundled core schemas plus the extension schemas found in ``TERRALOOM_STAC_SCHEMAS`` (a folder of
``<extension>-<version>.json`` files, e.g. downloaded once from stac-extensions.github.io) or,
without it, against terraloom's own subset schemas of the extension fields the world writes
(see :func:`offline_validator`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

STAC_VERSION = "1.1.0"
EXT = {
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
}
COG = "image/tiff; application=geotiff; profile=cloud-optimized"

_NUM = {"type": "number"}
_INT = {"type": "integer"}


def _fields_schema(
    fields: dict[str, Any], on_assets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON Schema checking the types of extension fields on an item and its assets."""
    props = {"type": "object", "properties": fields}
    schema: dict[str, Any] = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "required": ["properties"],
        "properties": {"properties": props},
    }
    if on_assets is not None:
        schema["properties"]["assets"] = {
            "type": "object",
            "additionalProperties": {"type": "object", "properties": on_assets},
        }
    return schema


_PROJ = {
    "proj:code": {"type": ["string", "null"]},
    "proj:epsg": {"type": ["integer", "null"]},
    "proj:transform": {"type": "array", "items": _NUM, "minItems": 6, "maxItems": 9},
    "proj:shape": {"type": "array", "items": _INT, "minItems": 2, "maxItems": 2},
    "proj:bbox": {"type": "array", "items": _NUM, "minItems": 4},
}
#: terraloom's own subset schemas of the extension fields the world writes (types and
#: ranges), used when the official extension schemas are not available offline.
SUBSET_SCHEMAS: dict[str, dict[str, Any]] = {
    "eo": _fields_schema(
        {"eo:cloud_cover": {"type": "number", "minimum": 0, "maximum": 100}},
        {"eo:bands": {"type": "array", "items": {"type": "object"}}},
    ),
    "proj": _fields_schema(_PROJ, _PROJ),
    "raster": _fields_schema(
        {},
        {
            "raster:bands": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "nodata": {"type": ["number", "string"]},
                        "scale": _NUM,
                        "offset": _NUM,
                        "data_type": {"type": "string"},
                    },
                },
            }
        },
    ),
    "sar": _fields_schema(
        {
            "sar:polarizations": {"type": "array", "items": {"enum": ["HH", "VV", "HV", "VH"]}},
            "sar:instrument_mode": {"type": "string"},
            "sar:frequency_band": {"type": "string"},
        }
    ),
    "sat": _fields_schema(
        {
            "sat:orbit_state": {"enum": ["ascending", "descending", "geostationary"]},
            "sat:relative_orbit": {"type": "integer", "minimum": 1},
        }
    ),
}

#: The collections the world (and the synthetic global STAC API) serve, in catalog order.
COLLECTION_ORDER = (
    "sentinel-2-l2a",
    "sentinel-2-l1c",
    "sentinel-1-grd",
    "sentinel-1-rtc",
    "cop-dem-glo-30",
    "io-lulc-9-class",
)
COLLECTIONS: dict[str, dict[str, Any]] = {
    "sentinel-2-l2a": {
        "title": "Sentinel-2 Level-2A (terraloom synthetic world)",
        "description": "Synthetic Sentinel-2 L2A surface reflectance in MGRS-like UTM tiles; DN = reflectance * 10000 + 1000 (processing baseline >= 04.00); SCL scene classification.",
        "extensions": ["eo", "proj", "raster", "sat"],
    },
    "sentinel-2-l1c": {
        "title": "Sentinel-2 Level-1C (terraloom synthetic world)",
        "description": "Synthetic Sentinel-2 L1C top-of-atmosphere reflectance, 13 bands including B10 (cirrus), same tiles as L2A.",
        "extensions": ["eo", "proj", "raster", "sat"],
    },
    "sentinel-1-rtc": {
        "title": "Sentinel-1 Radiometrically Terrain Corrected (terraloom synthetic world)",
        "description": "Synthetic terrain-flattened gamma0 backscatter (linear power, float32) in UTM at 10 m.",
        "extensions": ["sar", "sat", "proj", "raster"],
    },
    "sentinel-1-grd": {
        "title": "Sentinel-1 Level-1 GRD (terraloom synthetic world)",
        "description": "Synthetic ellipsoid sigma0 backscatter (linear power, float32, not terrain flattened) in radar geometry, georeferenced only by GCPs.",
        "extensions": ["sar", "sat", "raster"],
    },
    "cop-dem-glo-30": {
        "title": "Copernicus DEM GLO-30 (terraloom synthetic world)",
        "description": "Synthetic elevation (m, float32) on 1 arc-second pixel-is-point geographic tiles of 3 arc-minutes.",
        "extensions": ["proj", "raster"],
    },
    "io-lulc-9-class": {
        "title": "Esri 10m Land Use/Land Cover 9-class (terraloom synthetic world)",
        "description": "Synthetic 9-class land cover (Esri legend, uint8, nodata 0) in UTM tiles.",
        "extensions": ["proj", "raster"],
    },
}


def extensions(*names: str) -> list[str]:
    return [EXT[n] for n in names]


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def geojson(geom: Any) -> dict[str, Any]:
    """shapely geometry -> GeoJSON dict with coordinates as lists (stable JSON)."""
    import shapely

    return json.loads(shapely.to_geojson(geom))


def item_dict(
    item_id: str,
    collection: str,
    geometry: Any,
    properties: dict[str, Any],
    assets: dict[str, dict[str, Any]],
    ext: Sequence[str],
) -> dict[str, Any]:
    geo = geojson(geometry)
    b = geometry.bounds
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": extensions(*ext),
        "id": item_id,
        "geometry": geo,
        "bbox": [round(v, 7) for v in b],
        "properties": properties,
        "links": [
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        ],
        "assets": assets,
        "collection": collection,
    }


def write_json(path: str | os.PathLike[str], doc: dict[str, Any]) -> int:
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    Path(path).write_text(text)
    return len(text.encode())


def collection_dict(
    cid: str,
    items: Sequence[dict[str, Any]],
    summaries: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = COLLECTIONS[cid]
    boxes = [it["bbox"] for it in items]
    bbox = [
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    ]
    times = []
    for it in items:
        p = it["properties"]
        for k in ("datetime", "start_datetime", "end_datetime"):
            if p.get(k):
                times.append(p[k])
    interval = [min(times), max(times)] if times else [None, None]
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
    ]
    links += [
        {"rel": "item", "href": f"./{it['id']}/{it['id']}.json", "type": "application/geo+json"}
        for it in sorted(items, key=lambda i: i["id"])
    ]
    return {
        "type": "Collection",
        "id": cid,
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "title": spec["title"],
        "description": spec["description"],
        "license": "CC0-1.0",
        "keywords": ["terraloom", "synthetic"],
        "providers": [{"name": "terraloom synthetic world", "roles": ["producer", "processor"]}],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
        "summaries": summaries or {},
        "links": links,
    }


def catalog_dict(collections: Iterable[str], description: str) -> dict[str, Any]:
    return {
        "type": "Catalog",
        "id": "terraloom-world",
        "stac_version": STAC_VERSION,
        "description": description,
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
        + [
            {"rel": "child", "href": f"./{c}/collection.json", "type": "application/json"}
            for c in collections
        ],
    }


# --- offline validation ----------------------------------------------------------------------


def offline_validator(schema_dir: str | os.PathLike[str] | None = None) -> Any:
    """A pystac validator that needs no network: core schemas ship with pystac; extension
    schemas come from ``schema_dir`` / ``TERRALOOM_STAC_SCHEMAS`` when present there, else
    from :data:`SUBSET_SCHEMAS`."""
    from pystac.validation import JsonSchemaSTACValidator

    folder = schema_dir or os.environ.get("TERRALOOM_STAC_SCHEMAS")
    v = JsonSchemaSTACValidator()
    for key, uri in EXT.items():
        name = uri.split("/")[3] + "-" + uri.split("/")[4] + ".json"
        path = Path(folder) / name if folder else None
        if path is not None and path.is_file():
            v.schema_cache[uri] = json.loads(path.read_text())
        else:
            v.schema_cache[uri] = SUBSET_SCHEMAS[key]
    return v


def validate_item_file(path: str | os.PathLike[str], validator: Any | None = None) -> list[str]:
    """Validate one item JSON (core + extensions) offline; returns the schema URIs checked."""
    import pystac

    item = pystac.Item.from_file(str(path))
    return list(item.validate(validator=validator or offline_validator()))
