"""TerraMesh-layout WebDataset shards: export a corpus, and ingest such a dataset back.

TerraMesh (TerraMind's corpus) is published as ``{split}/{MODALITY}/<name>_shard_<k>.tar``
WebDataset tars of at most 10,240 samples, every modality's tar holding the same sample
keys in the same order, each sample a ``<key>.zarr.zip``: a Zarr v2 store with
consolidated metadata holding ``bands`` (time, band, y, x), the ``band``/``time``/``x``/
``y`` coordinates, a CF ``spatial_ref``, scalar ``center_lat``/``center_lon`` and, for
optical modalities, the S2 ``cloud_mask`` (time, y, x); ``time`` is int64 nanoseconds
since 1970 (0 where a modality has no acquisition time, like the DEM). A
``{split}_metadata.parquet`` lists the samples. Code written for TerraMesh (its
``terramesh.py`` loader: webdataset + an fsspec zip mapper + ``zarr.open_consolidated``)
therefore reads a published terraloom corpus unchanged; captions, which TerraMesh does not
ship, go in a ``CAPTION`` tar of ``<key>.txt`` entries.

The zips and tars are written byte-deterministically (fixed timestamps, sorted members),
so publishing the same corpus twice gives the same digests.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from terraloom.pipeline.publish.files import VersionFiles
from terraloom.schemas.modalities import SAMPLE_PX, Layout, get_modality
from terraloom.storage.location import Location

SHARD_PREFIX = "terraloom"
ZIP_EXT = "zarr.zip"
#: Modalities that carry the S2 cloud mask in their zips (TerraMesh: the optical ones).
CLOUD_MASK_MODALITIES = ("S2L1C", "S2L2A", "S2RGB")
#: Index time column giving each modality's acquisition time (derived ones use their source).
TIME_SOURCE = {
    "S2L1C": "S2L1C",
    "S2L2A": "S2L2A",
    "S2RGB": "S2L2A",
    "NDVI": "S2L2A",
    "S1GRD": "S1GRD",
    "S1RTC": "S1RTC",
    "LULC": "LULC",
}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class TerraMeshFormatError(ValueError):
    """A dataset that is not in the TerraMesh layout (or not readable as one)."""


def shard_name(k: int) -> str:
    return f"{SHARD_PREFIX}_shard_{k:06d}.tar"


def _ns(t: datetime | None) -> int:
    if t is None:
        return 0
    return int(round(t.astimezone(UTC).timestamp() * 1e6)) * 1000


# --------------------------------------------------------------------------- one sample


#: The compressor of every array in a sample zip: Blosc lz4, byte shuffle (zarr v2's default,
#: what TerraMesh's zips and zarr-python write).
_BLOSC = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}


def _json(doc: Any) -> bytes:
    """Compact JSON: ``indent`` would switch ``json`` to its pure-Python encoder, the
    slowest part of a zip (a zip holds ~20 documents, a publish thousands of zips)."""
    return json.dumps(doc, separators=(",", ":")).encode()


def _fill_json(x: np.ndarray) -> Any:
    """The ``fill_value`` of a v2 ``.zarray`` (JSON has no NaN: v2 spells it "NaN")."""
    if x.dtype.kind == "f":
        return "NaN"
    return "" if x.dtype.kind == "U" else 0


def _store_bytes(
    arrays: dict[str, tuple[np.ndarray, list[str], dict[str, Any]]], attrs: dict[str, Any]
) -> bytes:
    """A Zarr v2 group with consolidated metadata, as deterministic zip bytes.

    Written directly (JSON documents and one Blosc-compressed chunk per array) rather than
    through zarr-python, whose per-array machinery cost ~0.1 s a zip: thousands of zips per
    publish. The store is what zarr-python writes for the same arrays (``.zgroup``,
    ``.zattrs``, ``<name>/.zarray``, ``<name>/.zattrs``, chunk ``<name>/0.0...``,
    ``.zmetadata``), read back by ``zarr.open_consolidated`` in the tests.
    """
    from numcodecs import Blosc

    codec = Blosc(cname=_BLOSC["cname"], clevel=_BLOSC["clevel"], shuffle=_BLOSC["shuffle"])
    meta: dict[str, Any] = {".zgroup": {"zarr_format": 2}, ".zattrs": attrs}
    files: dict[str, bytes] = {}
    for name, (x, dims, a) in arrays.items():
        x = np.asarray(x)
        if not x.flags.c_contiguous:  # (np.ascontiguousarray would make a scalar 1-d)
            x = x.copy(order="C")
        meta[f"{name}/.zarray"] = {
            "shape": list(x.shape),
            "chunks": list(x.shape),
            "dtype": x.dtype.str,
            "fill_value": _fill_json(x),
            "order": "C",
            "filters": None,
            "dimension_separator": ".",
            "compressor": dict(_BLOSC),
            "zarr_format": 2,
        }
        meta[f"{name}/.zattrs"] = {"_ARRAY_DIMENSIONS": dims, **a}
        key = ".".join("0" for _ in x.shape) or "0"
        files[f"{name}/{key}"] = bytes(codec.encode(x))
    for k, doc in meta.items():
        files[k] = _json(doc)
    files[".zmetadata"] = _json({"metadata": meta, "zarr_consolidated_format": 1})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(files):
            info = zipfile.ZipInfo(key, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[key])
    return buf.getvalue()


@functools.cache
def _crs_cf(epsg: int) -> tuple[tuple[str, Any], ...]:
    """CF grid-mapping attributes of an EPSG code (pyproj is slow; a corpus has few zones)."""
    from pyproj import CRS

    crs = CRS.from_epsg(int(epsg))
    attrs = crs.to_cf()
    attrs["spatial_ref"] = crs.to_wkt()
    return tuple((k, v if isinstance(v, str | int | float) else str(v)) for k, v in attrs.items())


def _crs_attrs(epsg: int, transform: Sequence[float]) -> dict[str, Any]:
    a, b, c, d, e, f = (float(v) for v in transform)
    attrs = dict(_crs_cf(int(epsg)))
    attrs["GeoTransform"] = f"{c} {a} {b} {f} {d} {e}"
    return attrs


def sample_zip(
    name: str,
    value: np.ndarray,
    *,
    epsg: int,
    transform: Sequence[float],
    center: tuple[float, float],
    time_ns: int,
    cloud_mask: np.ndarray | None,
    sample_id: str,
    band_names: Sequence[str] | None = None,
) -> bytes:
    """The ``<key>.zarr.zip`` of one image modality of one sample (``band_names`` overrides
    the registry's, e.g. TerraMesh's lower-case ``vv``/``vh``)."""
    m = get_modality(name)
    names = list(band_names or m.band_names)
    a, _, c, _, e, f = (float(v) for v in transform)
    h, w = value.shape[-2:]
    arrays: dict[str, tuple[np.ndarray, list[str], dict[str, Any]]] = {
        "bands": (
            np.ascontiguousarray(value[None]),
            ["time", "band", "y", "x"],
            {"grid_mapping": "spatial_ref", "modality": m.name},
        ),
        "band": (np.array(names, dtype=f"<U{max(len(b) for b in names)}"), ["band"], {}),
        "time": (
            np.array([time_ns], np.int64),
            ["time"],
            {"units": "nanoseconds since 1970-01-01", "calendar": "proleptic_gregorian"},
        ),
        "x": (
            c + a * (np.arange(w) + 0.5),
            ["x"],
            {"standard_name": "projection_x_coordinate", "units": "m"},
        ),
        "y": (
            f + e * (np.arange(h) + 0.5),
            ["y"],
            {"standard_name": "projection_y_coordinate", "units": "m"},
        ),
        "spatial_ref": (np.array(0, np.int64), [], _crs_attrs(epsg, transform)),
        "center_lon": (np.array(center[0], np.float64), [], {"units": "degrees_east"}),
        "center_lat": (np.array(center[1], np.float64), [], {"units": "degrees_north"}),
    }
    if cloud_mask is not None:
        arrays["cloud_mask"] = (
            np.ascontiguousarray(cloud_mask[None]).astype(np.uint8),
            ["time", "y", "x"],
            {"flag_values": "0 1 2 255", "flag_meanings": "clear cloud shadow nodata"},
        )
    return _store_bytes(
        arrays, {"sample": sample_id, "modality": m.name, "crs": f"EPSG:{int(epsg)}"}
    )


def read_sample_zip(data: bytes) -> dict[str, Any]:
    """Every array of a sample zip, read the way TerraMesh's loader does (fsspec zip + zarr)."""
    import fsspec
    import zarr

    mapper = fsspec.filesystem("zip", fo=io.BytesIO(data), block_size=None).get_mapper("")
    group = zarr.open_consolidated(mapper, mode="r")
    out: dict[str, Any] = {k: np.asarray(zarr_read(group, k)) for k in group.array_keys()}
    out["attrs"] = dict(group.attrs)
    out["spatial_ref_attrs"] = dict(group["spatial_ref"].attrs) if "spatial_ref" in out else {}
    return out


def zarr_read(group: Any, name: str) -> Any:
    """The whole value of one array of a group (scalars included)."""
    arr: Any = group[name]
    return arr[...]


# --------------------------------------------------------------------------- tar writing


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class ShardExport:
    """What the export wrote: tar paths relative to its root, samples per split."""

    tars: tuple[str, ...]
    samples: dict[str, int]
    metadata: tuple[str, ...]


def export_webdataset(
    corpus: str | os.PathLike[str] | Location,
    index_rows: Sequence[dict[str, Any]],
    modality_names: Sequence[str],
    files: VersionFiles,
    shard_samples: int = 10240,
) -> ShardExport:
    """Write ``{split}/{MOD}/terraloom_shard_<k>.tar`` and ``{split}_metadata.parquet`` through
    ``files`` (any location: every tar is one stream, written front to back)."""
    import zarr

    corpus = Location.parse(corpus)
    image = [n for n in modality_names if get_modality(n).layout is Layout.IMAGE]
    text = "CAPTION" in modality_names
    tars: list[str] = []
    metadata: list[str] = []
    samples: dict[str, int] = {}
    by_split: dict[str, list[dict[str, Any]]] = {}
    for r in index_rows:
        by_split.setdefault(r["split"], []).append(r)
    for split, rows in by_split.items():
        rows = sorted(rows, key=lambda r: int(r["row"]))
        store = (corpus / f"{split}.zarr").zarr_store(read_only=True)
        group = zarr.open_group(store, mode="r")
        meta_rows = []
        for k, a in enumerate(range(0, len(rows), shard_samples), start=1):
            chunk = rows[a : a + shard_samples]
            name = shard_name(k)
            with contextlib.ExitStack() as stack:
                writers = {}
                for mod in [*image, *(["CAPTION"] if text else [])]:
                    rel = f"{split}/{mod}/{name}"
                    stream = stack.enter_context(files.open(rel))
                    writers[mod] = stack.enter_context(
                        tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT)  # type: ignore[call-overload]
                    )
                    tars.append(rel)
                for r in chunk:
                    _write_sample(group, r, image, text, writers)
                    meta_rows.append(_metadata_row(r, name))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(meta_rows, schema=METADATA_SCHEMA), buf)
        files.write_bytes(f"{split}_metadata.parquet", buf.getvalue())
        metadata.append(f"{split}_metadata.parquet")
        samples[split] = len(rows)
    return ShardExport(tuple(tars), samples, tuple(metadata))


def _write_sample(
    group: Any,
    r: dict[str, Any],
    image: Sequence[str],
    text: bool,
    writers: dict[str, tarfile.TarFile],
) -> None:
    """Append one sample's zips (and caption) to each modality's open tar."""
    row, key = int(r["row"]), r["sample_id"]
    if "." in key:
        raise ValueError(f"sample id {key!r} has a '.', not a WebDataset key")
    cm = np.asarray(group["cloud_mask"][row]) if "cloud_mask" in group else None
    for mod in image:
        t = r.get(f"time_{TIME_SOURCE.get(mod, '')}")
        data = sample_zip(
            mod,
            np.asarray(group[mod][row]),
            epsg=int(r["epsg"]),
            transform=r["transform"],
            center=(float(r["center_lon"]), float(r["center_lat"])),
            time_ns=_ns(t),
            cloud_mask=cm if mod in CLOUD_MASK_MODALITIES else None,
            sample_id=key,
        )
        _tar_add(writers[mod], f"{key}.{ZIP_EXT}", data)
    if text:
        _tar_add(writers["CAPTION"], f"{key}.txt", (r.get("caption") or "").encode())


_TS = pa.timestamp("ns", tz="UTC")
METADATA_SCHEMA = pa.schema(
    [
        ("__key__", pa.string()),
        ("shard", pa.string()),
        ("split", pa.string()),
        ("row", pa.int64()),
        ("cell_id", pa.string()),
        ("center_lon", pa.float64()),
        ("center_lat", pa.float64()),
        ("crs", pa.string()),
        ("time_S2L2A", _TS),
        ("time_S2L1C", _TS),
        ("time_S1GRD", _TS),
        ("time_S1RTC", _TS),
        ("time_LULC", _TS),
        ("cloud_fraction", pa.float32()),
        ("s1_s2_delta_days", pa.float64()),
        ("caption", pa.string()),
    ]
)


def _metadata_row(r: dict[str, Any], shard: str) -> dict[str, Any]:
    return {
        "__key__": r["sample_id"],
        "shard": shard,
        "split": r["split"],
        "row": int(r["row"]),
        "cell_id": r["cell_id"],
        "center_lon": r["center_lon"],
        "center_lat": r["center_lat"],
        "crs": f"EPSG:{int(r['epsg'])}",
        **{f"time_{m}": r.get(f"time_{m}") for m in ("S2L2A", "S2L1C", "S1GRD", "S1RTC", "LULC")},
        "cloud_fraction": r.get("cloud_fraction"),
        "s1_s2_delta_days": r.get("s1_s2_delta_days"),
        "caption": r.get("caption"),
    }


# --------------------------------------------------------------------------- ingest


def iter_tar(path: str | os.PathLike[str]) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of each member, WebDataset's key rule (split at the first dot)."""
    with tarfile.open(path, "r") as tf:
        for member in tf:
            if not member.isfile():
                continue
            base = os.path.basename(member.name)
            key, _, ext = base.partition(".")
            f = tf.extractfile(member)
            if f is not None:
                yield key, ext, f.read()


@dataclass(frozen=True)
class IngestSummary:
    out: Path
    samples: dict[str, int]
    modalities: tuple[str, ...]


def _epsg_of(attrs: dict[str, Any]) -> int:
    from pyproj import CRS

    wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
    if not wkt:
        raise TerraMeshFormatError("spatial_ref has no crs_wkt")
    epsg = CRS.from_wkt(wkt).to_epsg()
    if epsg is None:
        raise TerraMeshFormatError("spatial_ref is not an EPSG CRS")
    return int(epsg)


def _transform_of(x: np.ndarray, y: np.ndarray) -> list[float]:
    a = float(x[1] - x[0])
    e = float(y[1] - y[0])
    return [a, 0.0, float(x[0] - a / 2), 0.0, e, float(y[0] - e / 2)]


def ingest_terramesh(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    shard_samples: int = 32,
) -> IngestSummary:
    """Read a TerraMesh-layout dataset into a terraloom corpus (split stores + index.parquet).

    Modalities are the registry names among the split's folders; a sample missing from a
    modality's tars keeps that array's fill value. Of a multi-temporal zip the first time
    step is taken. Band names must match the registry (case-insensitive).
    """
    from terraloom.pipeline.corpus_writer import canonical_modalities, checksum, write_json_atomic
    from terraloom.pipeline.grid import GRID, SampleGrid
    from terraloom.schemas.layouts import create_corpus_store
    from terraloom.schemas.modalities import MODALITY_NAMES
    from terraloom.schemas.tables import empty_table, from_rows, write_geoparquet

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise TerraMeshFormatError(f"{src}: not a directory")
    found = sorted(p.name for p in src.iterdir() if p.is_dir() and any(p.iterdir()))
    splits = list(splits) if splits else found
    if not splits:
        raise TerraMeshFormatError(f"{src}: no split folders (train/, val/, ...)")
    index_rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    all_mods: set[str] = set()
    for split in splits:
        sdir = src / split
        mods = [
            p.name
            for p in sorted(sdir.iterdir())
            if p.is_dir() and p.name.upper() in MODALITY_NAMES
        ]
        if not mods:
            raise TerraMeshFormatError(f"{sdir}: no modality folders ({', '.join(MODALITY_NAMES)})")
        samples: dict[str, dict[str, Any]] = {}
        for mod_dir in mods:
            mod = get_modality(mod_dir).name
            for tar in sorted((sdir / mod_dir).glob("*.tar")):
                for key, ext, data in iter_tar(tar):
                    s = samples.setdefault(key, {})
                    if ext == ZIP_EXT:
                        s[mod] = read_sample_zip(data)
                    elif ext == "txt" and mod == "CAPTION":
                        s["CAPTION"] = data.decode("utf-8", errors="replace")
        if not samples:
            raise TerraMeshFormatError(f"{sdir}: no samples in the tars")
        names = {m for s in samples.values() for m in s}
        stored = canonical_modalities(
            names | {"GEO"} | ({"CAPTION"} if "CAPTION" in names else set())
        )
        all_mods |= set(stored)
        keys = sorted(samples)
        group = create_corpus_store(out / f"{split}.zarr", len(keys), shard_samples, split, stored)
        for row, key in enumerate(keys):
            s = samples[key]
            first = next(v for k, v in s.items() if k != "CAPTION")
            epsg = _epsg_of(first["spatial_ref_attrs"])
            transform = _transform_of(first["x"], first["y"])
            lon, lat = float(first["center_lon"]), float(first["center_lat"])
            values: dict[str, np.ndarray] = {}
            times: dict[str, datetime | None] = {}
            for mod, z in s.items():
                if mod == "CAPTION":
                    continue
                m = get_modality(mod)
                bands = [str(b).upper() for b in z["band"]]
                want = [b.upper() for b in m.band_names]
                if bands != want:
                    raise TerraMeshFormatError(
                        f"{split}/{mod}/{key}: bands {bands} != registry {want}"
                    )
                x = np.asarray(z["bands"])
                x = x[0] if x.ndim == 4 else x
                if x.shape != (m.n_bands, SAMPLE_PX, SAMPLE_PX):
                    raise TerraMeshFormatError(f"{split}/{mod}/{key}: bands shape {x.shape}")
                values[mod] = x.astype(m.np_dtype)
                t = int(np.asarray(z["time"]).reshape(-1)[0])
                times[mod] = datetime.fromtimestamp(t / 1e9, UTC) if t > 1_000_000 else None
                if "cloud_mask" in z and "cloud_mask" not in values:
                    cm = np.asarray(z["cloud_mask"])
                    values["cloud_mask"] = (cm[0] if cm.ndim == 3 else cm).astype(np.uint8)
            values["GEO"] = np.array([lat, lon], np.float64)
            if "CAPTION" in stored:
                raw = s.get("CAPTION", "").encode()[: get_modality("CAPTION").length or 512]
                cap = np.zeros(get_modality("CAPTION").length or 512, np.uint8)
                cap[: len(raw)] = np.frombuffer(raw, np.uint8)
                values["CAPTION"] = cap
            values["valid"] = np.array(True)
            values["epsg"] = np.array(epsg, np.int32)
            values["transform"] = np.array(transform, np.float64)
            sums = {}
            for name, v in values.items():
                group[name][row] = v
                sums[name] = checksum(np.asarray(group[name][row]))
            cell = str(GRID.cell_of(lon, lat))
            grid = SampleGrid(key, cell, 0, 0, epsg, tuple(transform))  # type: ignore[arg-type]
            index_rows.append(
                {
                    "sample_id": key,
                    "split": split,
                    "row": row,
                    "cell_id": cell,
                    "geometry": grid.footprint.wkb,
                    "center_lon": lon,
                    "center_lat": lat,
                    "epsg": epsg,
                    "transform": transform,
                    **{
                        f"time_{m}": times.get(m)
                        for m in ("S2L2A", "S2L1C", "S1GRD", "S1RTC", "LULC")
                    },
                    "caption": s.get("CAPTION"),
                    "checksums": sorted(sums.items()),
                }
            )
        if "sample_id" in group.array_keys():  # corpus format 2: rows labelled by their key
            group["sample_id"][:] = np.array(keys, dtype=object)
        counts[split] = len(keys)
    write_geoparquet("index", from_rows("index", index_rows), out / "index.parquet")
    write_geoparquet("rejects", empty_table("rejects"), out / "rejects.parquet")
    write_json_atomic(
        out / "_build" / "ingest.json",
        {"format": "terraloom-ingest", "source": "terramesh-layout", "splits": counts},
    )
    return IngestSummary(out, counts, canonical_modalities(all_mods))
