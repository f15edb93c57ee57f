"""JSON Schema exports of the table schemas and store layouts, generated from the code.

Users outside Python (a Rust loader, a dataset card, a validation step in another
pipeline) get the contracts as plain JSON; ``tests/schemas/test_jsonschema.py`` fails when
the committed files drift from the code, and ``terraloom-schemas export`` regenerates them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from terraloom.schemas.layouts import (
    CORPUS_FORMAT_VERSION,
    TOKENS_FORMAT_VERSION,
    StoreLayout,
    corpus_layout,
    token_layout,
)
from terraloom.schemas.modalities import (
    CONVENTIONS,
    REGISTRY,
    S2_CONVENTION,
    S2_STORED_OFFSET_DN,
    VERTICAL_DATUMS,
)
from terraloom.schemas.tables import TABLES, RejectReason

JSON_DIR = Path(__file__).parent / "json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def arrow_type_schema(t: pa.DataType) -> dict[str, Any]:
    """JSON Schema of one Arrow type (as a value in a row dict from ``Table.to_pylist``)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return {"type": "string"}
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return {"type": "string", "contentEncoding": "base64", "description": "WKB geometry"}
    if pa.types.is_boolean(t):
        return {"type": "boolean"}
    if pa.types.is_integer(t):
        return {"type": "integer", "x-arrow-type": str(t)}
    if pa.types.is_floating(t):
        return {"type": "number", "x-arrow-type": str(t)}
    if pa.types.is_timestamp(t):
        return {"type": "string", "format": "date-time", "x-arrow-type": str(t)}
    if pa.types.is_fixed_size_list(t):
        return {
            "type": "array",
            "items": arrow_type_schema(t.value_type),
            "minItems": t.list_size,
            "maxItems": t.list_size,
        }
    if pa.types.is_map(t):
        return {"type": "object", "additionalProperties": arrow_type_schema(t.item_type)}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"type": "array", "items": arrow_type_schema(t.value_type)}
    if pa.types.is_struct(t):
        return struct_schema(list(t))
    raise TypeError(f"no JSON Schema mapping for Arrow type {t}")


def _nullable(schema: dict[str, Any], nullable: bool) -> dict[str, Any]:
    if not nullable:
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def struct_schema(fields: list[pa.Field]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: _nullable(arrow_type_schema(f.type), f.nullable) for f in fields},
        "required": [f.name for f in fields],
        "additionalProperties": False,
    }


def table_json_schema(name: str) -> dict[str, Any]:
    schema = TABLES[name]
    out = {
        "$schema": DRAFT,
        "$id": f"terraloom/{name}.schema.json",
        "title": f"terraloom {name} row",
        **struct_schema(list(schema)),
    }
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    out["x-terraloom"] = meta
    if name == "rejects":
        out["properties"]["reason"] = {"enum": [r.value for r in RejectReason]}
    return out


def layout_json(layout: StoreLayout, n_samples_symbol: str = "n_samples") -> dict[str, Any]:
    """A store layout as JSON; the sample axis is symbolic so the file is size-independent."""
    arrays = []
    for a in layout.arrays:
        arrays.append(
            {
                "name": a.name,
                "shape": [n_samples_symbol, *a.shape[1:]],
                "dtype": a.dtype,
                "chunks": list(a.chunks),
                "shards": list(a.shards) if a.shards else None,
                "fill_value": None
                if isinstance(a.fill_value, float) and a.fill_value != a.fill_value
                else a.fill_value,
                "dimension_names": list(a.dims),
                "compressed": a.compressed,
            }
        )
    attrs = {k: v for k, v in layout.attrs.items() if k not in ("n_samples", "n_shards")}
    coords = [
        {
            "name": c.name,
            "dtype": c.dtype,
            "dimension_names": list(c.dims),
            "values": list(c.values or ()),
        }
        for c in layout.coords
    ]
    return {
        "format": layout.format,
        "format_version": layout.version,
        "required_attrs": list(layout.required_attrs),
        "attrs": attrs,
        "arrays": arrays,
        **({"coords": coords} if coords else {}),
    }


def registry_json() -> list[dict[str, Any]]:
    out = []
    for m in REGISTRY:
        out.append(
            {
                "name": m.name,
                "collections": list(m.collections),
                "bands": [b.name for b in m.bands],
                "dtype": m.dtype,
                "nodata": None
                if isinstance(m.nodata, float) and m.nodata != m.nodata
                else m.nodata,
                "resampling": m.resampling.value,
                "pixels": m.has_pixels,
                "tokens": m.has_tokens,
                "tokenizer": m.tokenizer.value if m.tokenizer else None,
                "vocab_size": m.vocab_size,
                "vertical_datum": m.vertical_datum,
            }
        )
    return out


def conventions_json() -> dict[str, Any]:
    """The per-collection source conventions and the S2 DN convention of the registry."""
    return {
        "s2_convention": S2_CONVENTION,
        "s2_stored_offset_dn": S2_STORED_OFFSET_DN,
        "vertical_datums": dict(VERTICAL_DATUMS),
        "collections": [
            {
                "collection": c.collection,
                "modality": c.modality,
                "fill_values": list(c.fill_values),
                "vertical_datum": c.vertical_datum,
                "class_map": {str(k): v for k, v in c.class_map},
                "asset_keys": dict(c.asset_keys),
            }
            for c in CONVENTIONS
        ],
    }


def all_exports() -> dict[str, Any]:
    """File name -> JSON document, everything ``export`` writes."""
    docs: dict[str, Any] = {f"{name}.schema.json": table_json_schema(name) for name in TABLES}
    docs["corpus.layout.json"] = layout_json(corpus_layout(0, 32))
    docs["tokens.layout.json"] = layout_json(token_layout(0, 4, shard_samples=32))
    docs["modalities.json"] = {
        "corpus_format_version": CORPUS_FORMAT_VERSION,
        "tokens_format_version": TOKENS_FORMAT_VERSION,
        "modalities": registry_json(),
        "conventions": conventions_json(),
    }
    return docs


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def export(out_dir: Path = JSON_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, doc in all_exports().items():
        path = out_dir / fname
        path.write_text(dumps(doc))
        written.append(path)
    return written


def out_of_sync(out_dir: Path = JSON_DIR) -> list[str]:
    """Names of exported files that are missing or differ from what the code generates."""
    stale = []
    for fname, doc in all_exports().items():
        path = out_dir / fname
        if not path.exists() or path.read_text() != dumps(doc):
            stale.append(fname)
    return stale
