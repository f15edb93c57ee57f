"""Arrow schemas of the three tables every stage exchanges, plus GeoParquet helpers.

``plan.parquet`` says which scene each modality of a candidate sample comes from;
``index.parquet`` describes each accepted sample; ``rejects.parquet`` says why each
other candidate was dropped (accepted + rejected = planned, always). Geometry columns
are WKB polygons in EPSG:4326 carrying GeoParquet 1.1 ``geo`` metadata, so geopandas,
duckdb and QGIS read them as geo tables.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PLAN_VERSION = 1
INDEX_VERSION = 1
GEOPARQUET_VERSION = "1.1.0"
GEOMETRY_COLUMN = "geometry"


class RejectReason(enum.StrEnum):
    """Why a planned sample did not make it into the corpus (one code per reject row)."""

    NO_MATCH = "no_match"  # plan: no scene of a required modality in the window
    NO_COVERAGE = "no_coverage"  # plan: scenes exist but do not cover the footprint
    NODATA = "nodata"  # nodata fraction over threshold in a required modality
    CLOUDY = "cloudy"  # cloud + shadow fraction over threshold
    NAN_INF = "nan_inf"  # non-finite values where data is expected
    CONSTANT = "constant"  # a constant image (dead sensor, fill)
    S1_S2_DELTA = "s1_s2_delta"  # S1 acquisition too far in time from S2
    UNREADABLE_ASSET = "unreadable_asset"  # file exists but cannot be decoded
    UNREACHABLE_ASSET = "unreachable_asset"  # missing file, HTTP error, timeout
    CRS_MISMATCH = "crs_mismatch"  # asset georeferencing disagrees with item proj:*
    HREF_NOT_ALLOWED = "href_not_allowed"  # href refused by the href policy, never opened
    AMBIGUOUS_BAND = "ambiguous_band"  # multi-band file, nothing says which band is wanted
    VERTICAL_DATUM = "vertical_datum"  # heights in a datum that cannot be converted here
    INTERNAL_ERROR = "internal_error"  # a bug: kept as a row so nothing is lost


TIMESTAMP = pa.timestamp("us", tz="UTC")
# Affine transforms and shapes are plain (variable-size) lists, not fixed-size lists:
# pyarrow writes a null fixed-size list (the missing proj:transform of a GRD asset) but
# cannot read it back (apache/arrow#35692). ``conform`` checks their lengths instead.

ASSET = pa.struct(
    [
        ("key", pa.string()),  # asset key in the item
        ("band", pa.string()),  # canonical band name from the registry (B04, VV, ...)
        ("href", pa.string()),  # absolute/resolvable href (file://, https://, s3://)
        ("epsg", pa.int32()),  # proj:epsg / proj:code of the asset, null if none (GRD)
        ("transform", pa.list_(pa.float64())),  # proj:transform (a, b, c, d, e, f)
        ("shape", pa.list_(pa.int32())),  # proj:shape (rows, cols)
        ("nodata", pa.float64()),
        ("scale", pa.float64()),  # raster:bands scale (DN -> physical)
        ("offset", pa.float64()),  # raster:bands offset (S2: what the published DN means)
        ("band_index", pa.int32()),  # 1-based band in a multi-band file; null: the file tells
    ]
)

SCENE = pa.struct(
    [
        ("modality", pa.string()),  # registry name (S2L2A, S1GRD, ...)
        ("collection", pa.string()),
        ("item_id", pa.string()),
        ("datetime", TIMESTAMP),
        ("platform", pa.string()),
        ("orbit_state", pa.string()),  # ascending / descending (S1)
        ("relative_orbit", pa.int32()),
        ("cloud_cover", pa.float64()),  # percent over the footprint (SCL) or item eo:cloud_cover
        ("epsg", pa.int32()),  # item-level proj, null for GRD
        ("needs_gcps", pa.bool_()),  # radar geometry: georeferenced only by GCPs
        ("processing_baseline", pa.string()),
        ("assets", pa.list_(ASSET)),
    ]
)

UNMATCHED = pa.struct(
    [("modality", pa.string()), ("reason", pa.string()), ("message", pa.string())]
)

_COMMON_SAMPLE_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),  # row in the split's corpus/token stores
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field(GEOMETRY_COLUMN, pa.binary(), nullable=False),  # WKB footprint, EPSG:4326
    pa.field("center_lon", pa.float64(), nullable=False),
    pa.field("center_lat", pa.float64(), nullable=False),
    pa.field("epsg", pa.int32(), nullable=False),  # UTM zone of the sample grid
    pa.field("transform", pa.list_(pa.float64()), nullable=False),  # affine (a..f), 6 values
]

PLAN_SCHEMA = pa.schema(
    [
        *_COMMON_SAMPLE_FIELDS,
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("scenes", pa.list_(SCENE), nullable=False),  # one entry per (modality, item)
        pa.field("unmatched", pa.list_(UNMATCHED), nullable=False),  # empty when fully matched
        pa.field("s1_s2_delta_days", pa.float64()),
    ],
    metadata={b"terraloom:table": b"plan", b"terraloom:version": str(PLAN_VERSION).encode()},
)

#: Modalities whose acquisition time is recorded in the index (``time_<name>`` columns).
TIMED_MODALITIES: tuple[str, ...] = ("S2L2A", "S2L1C", "S1GRD", "S1RTC", "LULC")

INDEX_SCHEMA = pa.schema(
    [
        *_COMMON_SAMPLE_FIELDS,
        *[pa.field(f"time_{m}", TIMESTAMP) for m in TIMED_MODALITIES],
        pa.field("cloud_fraction", pa.float32()),  # cloud + shadow fraction over the sample
        pa.field("s1_s2_delta_days", pa.float64()),
        pa.field("nodata_filled_px", pa.int32()),  # small gaps filled by nearest neighbour
        pa.field("quality", pa.map_(pa.string(), pa.float64())),  # named quality metrics
        # optional modalities the sample goes without: (modality, RejectReason code the
        # sample would have been rejected with were it required, message); empty: none
        # missing; null: the builder did not say
        pa.field("missing_modalities", pa.list_(UNMATCHED)),
        pa.field("caption", pa.string()),
        pa.field("checksums", pa.map_(pa.string(), pa.string())),  # array -> hex digest
        # the S2 DN convention of the stored S2 arrays (schemas.modalities.S2_CONVENTION);
        # null: no S2 in the sample
        pa.field("s2_convention", pa.string()),
        # vertical datum the DEM source's heights were given in (EGM2008, EGM96,
        # ellipsoidal; stored heights are always the registry's datum); null: no DEM
        pa.field("dem_vertical_datum", pa.string()),
    ],
    metadata={b"terraloom:table": b"index", b"terraloom:version": str(INDEX_VERSION).encode()},
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("cell_id", pa.string(), nullable=False),
        pa.field(GEOMETRY_COLUMN, pa.binary(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # a RejectReason value
        pa.field("modality", pa.string()),  # the modality at fault, if any
        pa.field("message", pa.string(), nullable=False),
    ],
    metadata={b"terraloom:table": b"rejects", b"terraloom:version": str(INDEX_VERSION).encode()},
)

TABLES: dict[str, pa.Schema] = {
    "plan": PLAN_SCHEMA,
    "index": INDEX_SCHEMA,
    "rejects": REJECTS_SCHEMA,
}


def geo_metadata(table: pa.Table) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata for the WKB geometry column (CRS: OGC:CRS84)."""
    import shapely

    col = table.column(GEOMETRY_COLUMN).to_pylist() if table.num_rows else []
    bbox: list[float] = []
    types: set[str] = set()
    if col:
        geoms = shapely.from_wkb(col)
        xmin, ymin, xmax, ymax = shapely.total_bounds(geoms)
        bbox = [float(xmin), float(ymin), float(xmax), float(ymax)]
        types = {str(t) for t in shapely.get_type_id(geoms)}
        names = {"0": "Point", "1": "LineString", "3": "Polygon", "6": "MultiPolygon"}
        types = {names.get(t, "Unknown") for t in types}
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": sorted(types)}
    if bbox:
        column["bbox"] = bbox
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": GEOMETRY_COLUMN,
        "columns": {GEOMETRY_COLUMN: column},
    }


def empty_table(name: str) -> pa.Table:
    return TABLES[name].empty_table()


def from_rows(name: str, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Build a table of the named schema from row dicts (missing nullable fields -> null)."""
    schema = TABLES[name]
    return pa.Table.from_pylist(list(rows), schema=schema)


def conform(name: str, table: pa.Table) -> pa.Table:
    """Check a table against the named schema (names, types, order) and attach metadata."""
    schema = TABLES[name]
    if table.schema.names != schema.names:
        missing = set(schema.names) - set(table.schema.names)
        extra = set(table.schema.names) - set(schema.names)
        raise ValueError(
            f"{name} table columns differ from the schema: missing {sorted(missing)}, extra {sorted(extra)}"
        )
    table = table.cast(schema)
    _check_list_lengths(name, table)
    return table


def _check_list_lengths(name: str, table: pa.Table) -> None:
    """Affine transforms hold 6 numbers, shapes 2 (nulls allowed where the type is nullable)."""
    import pyarrow.compute as pc

    if "transform" in table.schema.names and table.num_rows:
        lengths = pc.list_value_length(table.column("transform"))
        if pc.any(pc.not_equal(lengths, 6)).as_py():
            raise ValueError(
                f"{name} table: every 'transform' must hold 6 values (a, b, c, d, e, f)"
            )


def _remote(path: Any) -> bool:
    """A storage ``Location`` off the local disk (duck-typed, like ``layouts._as_path``:
    schemas import no storage code, but the tables they describe may live on object stores)."""
    return hasattr(path, "arrow_filesystem") and not getattr(path, "is_local", True)


def write_geoparquet(name: str, table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write a plan/index/rejects table atomically (tmp file + rename) with ``geo`` metadata.

    Extra ``terraloom:*`` schema metadata of ``table`` is kept (a plan's href scope). A
    remote ``Location`` gets the file as one PUT (whole or absent, like the rename) and is
    returned as given.
    """
    extra = {k: v for k, v in (table.schema.metadata or {}).items() if k.startswith(b"terraloom:")}
    table = conform(name, table)
    meta = {**extra, **dict(table.schema.metadata or {})}
    meta[b"geo"] = json.dumps(geo_metadata(table)).encode()
    table = table.replace_schema_metadata(meta)
    if _remote(path):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        path.write_bytes(sink.getvalue().to_pybytes())  # type: ignore[union-attr]
        return path  # type: ignore[return-value]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


#: Nullable columns added after a table's version was fixed: a table written before them
#: reads with the column all null ("not recorded") instead of failing.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "index": ("missing_modalities", "s2_convention", "dem_vertical_datum")
}


def read_table(name: str, path: str | os.PathLike[str]) -> pa.Table:
    """Read a table and check it is the named kind of terraloom table (a local path or a
    storage ``Location``)."""
    if _remote(path):
        fs, key = path.arrow_filesystem()  # type: ignore[union-attr]
        table = pq.read_table(key, filesystem=fs)
    else:
        table = pq.read_table(os.fspath(path) if hasattr(path, "arrow_filesystem") else path)
    kind = (table.schema.metadata or {}).get(b"terraloom:table", b"").decode()
    if kind and kind != name:
        raise ValueError(f"{path} is a {kind!r} table, expected {name!r}")
    for col in ADDED_COLUMNS.get(name, ()):
        if col not in table.schema.names:
            field = TABLES[name].field(col)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return conform(name, table.select(TABLES[name].names))
