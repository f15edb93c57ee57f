"""STAC for a published corpus: one Collection, one Item per sample, static and GeoParquet.

The collection says what the corpus is (extent, modalities and their bands with ``eo``/
``raster`` fields and the corpus statistics, splits, providers and licences of every
source collection, citation, version); each item says where one sample lies (footprint in
EPSG:4326, its UTM grid as ``proj:code``/``proj:transform``/``proj:shape``), when its
modalities were acquired, which source items it was built from (``derived_from`` links)
and where its arrays are in the published Zarr stores. Items are also written as
stac-geoparquet so the whole corpus can be searched with one file read.

Validation is offline: pystac ships the core schemas, and the three extension schemas
used here are shipped in ``stac_schemas/`` (from the stac-extensions repositories,
Apache-2.0), so ``validate_stac`` never touches the network.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from terraloom.pipeline.publish.config import CorpusFacts, PublishConfig
from terraloom.pipeline.publish.files import VersionFiles
from terraloom.pipeline.publish.provenance import source_collections
from terraloom.pipeline.publish.tokens import TOKENS_DIR, TokenFacts
from terraloom.schemas.modalities import RESOLUTION_M, SAMPLE_PX, Layout, get_modality
from terraloom.storage.location import Location

STAC_VERSION = "1.1.0"
EO = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v2.0.0/schema.json"
PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
EXTENSION_SCHEMAS = {
    EO: "eo-v2.0.0.json",
    RASTER: "raster-v2.0.0.json",
    PROJ: "projection-v2.0.0.json",
}
ZARR_MEDIA_TYPE = "application/vnd+zarr"
STAC_DIR = "stac"
COLLECTION_FILE = "collection.json"
ITEMS_PARQUET = "items.parquet"
#: Acquisition times that span an item's datetime range (LULC is an annual product, DEM timeless).
ACQUISITION_MODALITIES = ("S2L2A", "S2L1C", "S1GRD", "S1RTC")
#: The eo extension's common band names (radar polarisations are not among them).
EO_COMMON_NAMES = frozenset(
    [
        "pan",
        "coastal",
        "blue",
        "green",
        "green05",
        "yellow",
        "red",
        "rededge",
        "rededge071",
        "rededge075",
        "rededge078",
        "nir",
        "nir08",
        "nir09",
        "cirrus",
        "swir16",
        "swir22",
        "lwir",
        "lwir11",
        "lwir12",
    ]
)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _nodata(m: Any) -> Any:
    if m.nodata is None:
        return None
    if isinstance(m.nodata, float) and m.nodata != m.nodata:
        return "nan"
    return m.nodata


def band_objects(name: str, stats: dict[str, Any] | None) -> list[dict[str, Any]]:
    """STAC 1.1 ``bands`` of a modality with eo/raster fields and the corpus statistics."""
    m = get_modality(name)
    s = (stats or {}).get("modalities", {}).get(name)
    out = []
    for i, b in enumerate(m.bands):
        band: dict[str, Any] = {"name": b.name, "data_type": m.dtype}
        if b.common_name in EO_COMMON_NAMES:
            band["eo:common_name"] = b.common_name
        nd = _nodata(m)
        if nd is not None:
            band["nodata"] = nd
        if b.native_resolution_m:
            band["raster:spatial_resolution"] = b.native_resolution_m
        if s and s["count"][i]:
            band["statistics"] = {
                "mean": s["mean"][i],
                "stddev": s["std"][i],
                "minimum": s["min"][i],
                "maximum": s["max"][i],
            }
        out.append(band)
    return out


def modality_asset(name: str, stats: dict[str, Any] | None) -> dict[str, Any]:
    """The item-asset definition of one modality's array (no href)."""
    m = get_modality(name)
    asset: dict[str, Any] = {
        "title": name,
        "description": m.description,
        "type": ZARR_MEDIA_TYPE,
        "roles": ["data"],
    }
    if m.layout is Layout.IMAGE:
        asset["bands"] = band_objects(name, stats)
        asset["gsd"] = RESOLUTION_M
    return asset


def source_item_href(scene: dict[str, Any]) -> str:
    """Where a source item's STAC document is: beside its assets for a static catalog
    (``<collection>/<item>/<item>.json``, as in the embedded world), else its first asset."""
    hrefs = [a["href"] for a in scene.get("assets") or [] if a.get("href")]
    if not hrefs:
        return scene["item_id"]
    first = hrefs[0]
    u = urlparse(first)
    if u.scheme in ("", "file"):
        p = Path(u.path).parent / f"{scene['item_id']}.json"
        if p.is_file():
            return p.as_uri()
    return first


def _times(row: dict[str, Any]) -> list[datetime]:
    return [row[f"time_{m}"] for m in ACQUISITION_MODALITIES if row.get(f"time_{m}") is not None]


def build_item(
    row: dict[str, Any],
    facts: CorpusFacts,
    config: PublishConfig,
    stats: dict[str, Any] | None,
    quicklook: str | None,
) -> dict[str, Any]:
    """The STAC item of one accepted sample; hrefs relative to ``stac/items/<split>/``."""
    import shapely
    from shapely.geometry import mapping

    geom = shapely.from_wkb(row["geometry"])
    split, sid = row["split"], row["sample_id"]
    times = _times(row)
    props: dict[str, Any] = {
        "datetime": None,
        "start_datetime": _iso(min(times)) if times else None,
        "end_datetime": _iso(max(times)) if times else None,
        "proj:code": f"EPSG:{int(row['epsg'])}",
        "proj:transform": [float(v) for v in row["transform"]],
        "proj:shape": [SAMPLE_PX, SAMPLE_PX],
        "gsd": RESOLUTION_M,
        "terraloom:split": split,
        "terraloom:row": int(row["row"]),
        "terraloom:cell_id": row["cell_id"],
        "terraloom:center": [float(row["center_lon"]), float(row["center_lat"])],
    }
    if row.get("cloud_fraction") is not None:
        props["eo:cloud_cover"] = round(100.0 * float(row["cloud_fraction"]), 4)
    if row.get("s1_s2_delta_days") is not None:
        props["terraloom:s1_s2_delta_days"] = float(row["s1_s2_delta_days"])
    if row.get("caption"):
        props["description"] = row["caption"]
    for m in ACQUISITION_MODALITIES + ("LULC",):
        t = row.get(f"time_{m}")
        if t is not None:
            props[f"terraloom:datetime_{m}"] = _iso(t)
    if not times:  # STAC requires a datetime or a range
        props["datetime"] = props.pop("start_datetime") or _iso(datetime(1970, 1, 1, tzinfo=UTC))
        props.pop("end_datetime", None)
    store = f"../../../{split}.zarr"
    assets: dict[str, Any] = {}
    if "zarr" in config.formats:
        assets["store"] = {
            "href": store,
            "title": f"{split} split store (row {int(row['row'])})",
            "type": ZARR_MEDIA_TYPE,
            "roles": ["data"],
        }
        for name in facts.modalities:
            assets[name] = {"href": f"{store}/{name}", **modality_asset(name, stats)}
    if quicklook:
        assets["quicklook"] = {
            "href": quicklook,
            "title": "all modalities side by side",
            "type": "image/png",
            "roles": ["overview", "visual"],
        }
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": f"../../{COLLECTION_FILE}", "type": "application/json"},
        {"rel": "parent", "href": f"../../{COLLECTION_FILE}", "type": "application/json"},
        {"rel": "collection", "href": f"../../{COLLECTION_FILE}", "type": "application/json"},
        {"rel": "self", "href": f"./{sid}.json", "type": "application/geo+json"},
    ]
    for scene in facts.scenes.get(sid, []):
        links.append(
            {
                "rel": "derived_from",
                "href": source_item_href(scene),
                "type": "application/geo+json",
                "title": f"{scene['modality']}: {scene['collection']}/{scene['item_id']}",
            }
        )
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [EO, PROJ, RASTER],
        "id": sid,
        "collection": config.name,
        "geometry": mapping(geom),
        "bbox": [float(v) for v in geom.bounds],
        "properties": props,
        "links": links,
        "assets": assets,
    }


def build_collection(
    facts: CorpusFacts,
    config: PublishConfig,
    stats: dict[str, Any] | None,
    items: list[dict[str, Any]],
) -> dict[str, Any]:
    """The STAC collection of the corpus, linking every item."""
    bboxes = [it["bbox"] for it in items]
    bbox = (
        [
            min(b[0] for b in bboxes),
            min(b[1] for b in bboxes),
            max(b[2] for b in bboxes),
            max(b[3] for b in bboxes),
        ]
        if bboxes
        else [-180.0, -90.0, 180.0, 90.0]
    )
    starts = [
        it["properties"].get("start_datetime") or it["properties"]["datetime"] for it in items
    ]
    ends = [it["properties"].get("end_datetime") or it["properties"]["datetime"] for it in items]
    interval = [min(starts) if starts else None, max(ends) if ends else None]
    counts = {s: len(facts.accepted(s)) for s in facts.splits}
    imitated = source_collections(facts.modalities)
    # synthetic data (config.synthetic) has no third-party providers or licences to list
    sources = [] if config.synthetic else imitated
    providers: list[dict[str, Any]] = [
        {
            "name": "terraloom",
            "roles": ["producer", "processor"] if config.synthetic else ["processor"],
            "url": "https://github.com/terraloom",
        }
    ]
    for src in sources:
        for pname, roles, url in src.providers:
            providers.append(
                {
                    "name": pname,
                    "roles": roles.split(","),
                    "url": url,
                    "description": f"{src.title} ({src.id})",
                }
            )
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": f"./{COLLECTION_FILE}", "type": "application/json"},
        {"rel": "self", "href": f"./{COLLECTION_FILE}", "type": "application/json"},
        {"rel": "license", "href": _license_url(config.license), "title": config.license},
        {
            "rel": "describedby",
            "href": "../README.md",
            "type": "text/markdown",
            "title": "dataset card",
        },
    ]
    for src in sources:
        links.append(
            {"rel": "license", "href": src.license_url, "title": f"{src.id}: {src.license}"}
        )
        links.append({"rel": "via", "href": src.url, "title": f"source collection {src.id}"})
    for it in items:
        split = it["properties"]["terraloom:split"]
        links.append(
            {
                "rel": "item",
                "href": f"./items/{split}/{it['id']}.json",
                "type": "application/geo+json",
            }
        )
    epsgs = sorted({it["properties"]["proj:code"] for it in items})
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [EO, PROJ, RASTER],
        "id": config.name,
        "title": config.display_title,
        "description": config.description,
        "version": config.version,
        "license": config.license,
        "keywords": ["earth observation", "multimodal", "pretraining", "TerraMind", "terraloom"],
        "providers": providers,
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
        "summaries": {
            "gsd": [RESOLUTION_M],
            "proj:code": epsgs,
            "terraloom:modalities": list(facts.modalities),
            "terraloom:sample_px": [SAMPLE_PX],
            "terraloom:splits": list(counts),
            "terraloom:split_counts": [counts],
            "terraloom:source_collections": [s.id for s in imitated],
            "terraloom:synthetic": [config.synthetic],
        },
        "item_assets": {name: modality_asset(name, stats) for name in facts.modalities},
        "terraloom:citation": config.citation,
        "terraloom:format_versions": facts.format_versions,
        "links": links,
    }


def _license_url(spdx: str) -> str:
    return f"https://spdx.org/licenses/{spdx}.html"


def token_assets(tokens: TokenFacts | None) -> dict[str, Any]:
    """Collection assets of a published token store (hrefs relative to ``stac/``)."""
    if tokens is None:
        return {}
    out: dict[str, Any] = {}
    for split in tokens.splits:
        a = tokens.attrs[split]
        toks = a.get("tokenizers") or {}
        out[f"tokens-{split}"] = {
            "href": f"../{TOKENS_DIR}/{split}.zarr",
            "title": f"token store of the {split} split",
            "description": (
                f"uint16 tokenizer codes (sample, crop, token) of {', '.join(a.get('modalities', []))}; "
                f"{a.get('n_crops')} crops of {a.get('crop_px')} px per sample, rows aligned with "
                f"{split}.zarr; tokenizers: "
                + ", ".join(f"{m} {t.get('id')} v{t.get('version')}" for m, t in toks.items())
            ),
            "type": ZARR_MEDIA_TYPE,
            "roles": ["data", "tokens"],
        }
    return out


def write_stac(
    files: VersionFiles,
    facts: CorpusFacts,
    config: PublishConfig,
    stats: dict[str, Any] | None,
    quicklooks: dict[str, str],
    scratch: Path,
    *,
    tokens: TokenFacts | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write ``stac/collection.json``, ``stac/items/<split>/<id>.json`` and ``stac/items.parquet``.

    ``quicklooks`` maps sample ids to PNG paths relative to the published root; ``scratch``
    is a local folder for the GeoParquet file (its writer wants a path).
    """
    items = []
    for row in facts.index:
        ql = quicklooks.get(row["sample_id"])
        items.append(build_item(row, facts, config, stats, f"../../../{ql}" if ql else None))
    collection = build_collection(facts, config, stats, items)
    assets = token_assets(tokens)
    if assets:
        collection["assets"] = assets
    files.write_text(f"{STAC_DIR}/{COLLECTION_FILE}", json.dumps(collection, indent=1) + "\n")
    for it in items:
        rel = f"{STAC_DIR}/items/{it['properties']['terraloom:split']}/{it['id']}.json"
        files.write_text(rel, json.dumps(it, indent=1) + "\n")
    local = scratch / ITEMS_PARQUET
    write_geoparquet_items(items, local)
    files.add_local(local, f"{STAC_DIR}/{ITEMS_PARQUET}")
    return collection, items


def write_geoparquet_items(items: list[dict[str, Any]], path: Path) -> None:
    """stac-geoparquet of the items, for bulk search (one row per item)."""
    import stac_geoparquet.arrow as sga

    table = sga.parse_stac_items_to_arrow(items)
    sga.to_parquet(table, path)


def read_geoparquet_items(path: str | os.PathLike[str] | Location) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq
    import stac_geoparquet.arrow as sga

    fs, key = Location.parse(path).arrow_filesystem()
    return list(sga.stac_table_to_items(pq.read_table(key, filesystem=fs)))


# --------------------------------------------------------------------------- validation


def _validator() -> Any:
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    v = JsonSchemaSTACValidator()
    here = Path(__file__).parent / "stac_schemas"
    for uri, fname in EXTENSION_SCHEMAS.items():
        v.schema_cache[uri] = json.loads((here / fname).read_text())
    return v


def validate_stac(root: str | os.PathLike[str] | Location) -> list[str]:
    """Validate the collection and every item offline (core + eo/raster/proj schemas)."""
    import pystac
    from pystac.errors import STACValidationError

    root = Location.parse(root)
    v = _validator()
    findings: list[str] = []
    names = [COLLECTION_FILE] + [
        f"items/{rel}" for rel in (root / STAC_DIR / "items").walk_files() if rel.endswith(".json")
    ]
    for name in names:
        rel = f"{STAC_DIR}/{name}"
        try:
            d = json.loads((root / rel).read_bytes())
        except (OSError, ValueError) as exc:
            findings.append(f"{rel}: cannot read: {exc}")
            continue
        try:
            pystac.validation.validate_dict(d, validator=v)
        except STACValidationError as exc:
            msg = str(exc).splitlines()[0]
            findings.append(f"{rel}: invalid STAC: {msg}")
    return findings
