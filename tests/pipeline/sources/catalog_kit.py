"""Catalog items written by tests: a DEM tile over a test region, and one item file per
malformed kind a third-party catalog can hold (shared by the static, STAC API and CLI tests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from terraloom.pipeline.grid import Region
from terraloom.pipeline.plan import PlanConfig

DEM = "cop-dem-glo-30"
PERIOD = (datetime(2023, 8, 1, tzinfo=UTC), datetime(2023, 8, 31, 23, 59, 59, tzinfo=UTC))
REGION = Region.from_bbox(15.2, 45.98, 15.4, 46.08)
CONFIG = PlanConfig(modalities=("DEM",), val_fraction=0.0)


def dem_item(item_id: str, href: str | None = None, **override: Any) -> dict[str, Any]:
    """A DEM tile over the whole region (planning reads no pixels, so no file is needed)."""
    d: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": DEM,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[15, 45], [16, 45], [16, 47], [15, 47], [15, 45]]],
        },
        "bbox": [15, 45, 16, 47],
        "properties": {"datetime": "2021-04-22T00:00:00Z"},
        "assets": {"data": {"href": href or f"./{item_id}.tif", "type": "image/tiff"}},
        "links": [],
    }
    d.update(override)
    return d


#: file name -> text of the item files of the malformed catalog, and the reason each gets
MALFORMED = {
    "bad_json.json": ('{"type": "Feature", "id": "bad_json", "geometry": ', "bad_json"),
    "null_geometry.json": (
        json.dumps(dem_item("null_geometry", geometry=None, bbox=None)),
        "no_geometry",
    ),
    "oops_assets.json": (json.dumps(dem_item("oops_assets", assets="oops")), "bad_assets"),
}


def write_catalog(root: Path) -> Path:
    """catalog.json linking one good item file and one file per malformed kind."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "good.json").write_text(json.dumps(dem_item("good")))
    for name, (text, _) in MALFORMED.items():
        (root / name).write_text(text)
    links = [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
    links += [
        {"rel": "item", "href": f"./{name}", "type": "application/geo+json"}
        for name in ["good.json", *MALFORMED]
    ]
    cat = {
        "type": "Catalog",
        "id": "malformed",
        "stac_version": "1.0.0",
        "description": "one good item, one of each malformed kind",
        "links": links,
    }
    (root / "catalog.json").write_text(json.dumps(cat))
    return root / "catalog.json"
