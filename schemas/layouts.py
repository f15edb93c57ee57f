"""Zarr v3 layouts of the corpus and the token store, as code.

A layout is a pure description (array names, shapes as functions of the sample count,
dtypes, chunk and shard shapes, fill values, dimension names, required attributes) so
that writers create stores *template-first* from it and validators check any store
against it. Chunk = one sample for the corpus (random access by row); shard = a fixed
block of samples, the unit a worker writes and commits, so workers never coordinate.

The token store keeps uncompressed chunks of whole shards of rows (``bytes`` codec
only): small, and each chunk file is the raw little-endian C-order array, which readers
may memory-map.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terraloom.schemas.modalities import (
    CROP_PX,
    PATCH_PX,
    SAMPLE_PX,
    Layout,
    Modality,
    get_modality,
    modalities,
)

CORPUS_FORMAT = "terraloom-corpus"
#: 2: coordinate arrays (``sample_id``, band names, the affine labels) and a CF
#: ``coordinates`` attribute, so ``xarray.open_zarr`` labels what it opens. Version-1
#: corpora (no coordinates) stay readable: layouts are built for the version a store records.
CORPUS_FORMAT_VERSION = 2
CORPUS_FORMAT_VERSIONS = (1, 2)
TOKENS_FORMAT = "terraloom-tokens"
TOKENS_FORMAT_VERSION = 1
DEFAULT_SHARD_SAMPLES = 32
SPLITS = ("train", "val", "test")

#: Stored modalities of the corpus, in registry order (every modality is stored).
CORPUS_MODALITIES: tuple[str, ...] = tuple(m.name for m in modalities())
#: Modalities in the token store: every registry entry with a tokenizer.
TOKEN_MODALITIES: tuple[str, ...] = tuple(m.name for m in modalities(tokens=True))
#: Max tokens of a caption sequence in the token store (padded, with lengths).
CAPTION_MAX_TOKENS = 64


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store: everything needed to create it or check it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    fill_value: Any
    dims: tuple[str, ...]
    compressed: bool = True
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    #: Constant values written when the store is created (coordinate labels), else None.
    values: tuple[Any, ...] | None = None


#: ``dtype`` of a variable-length UTF-8 string array (Zarr v3 ``string``, numpy StringDType).
STRING_DTYPE = "string"


def np_dtype(dtype: str) -> np.dtype[Any]:
    """The numpy dtype of a spec's ``dtype`` (``string`` is numpy's variable-width StringDType)."""
    return np.dtype("T") if dtype == STRING_DTYPE else np.dtype(dtype)


@dataclass(frozen=True)
class StoreLayout:
    """All arrays plus the group attributes a store must carry."""

    format: str
    version: int
    arrays: tuple[ArraySpec, ...]
    attrs: dict[str, Any]
    required_attrs: tuple[str, ...]
    #: Coordinate-label arrays (not per sample): each is named after the one dimension it
    #: labels, so xarray makes it that dimension's index; written once, with the template.
    coords: tuple[ArraySpec, ...] = ()

    def array(self, name: str) -> ArraySpec:
        for a in self.arrays + self.coords:
            if a.name == name:
                return a
        raise KeyError(
            f"no array {name!r} in the {self.format} layout; arrays: {[a.name for a in self.arrays]}"
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arrays)


def _fill(m: Modality) -> Any:
    if m.nodata is None:
        return 0
    return m.nodata


def corpus_layout(
    n_samples: int,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    modality_names: tuple[str, ...] = CORPUS_MODALITIES,
    split: str = "train",
    version: int = CORPUS_FORMAT_VERSION,
) -> StoreLayout:
    """Layout of one split of the corpus (``<split>.zarr``) for ``n_samples`` rows.

    Image modalities: (sample, band, y, x), chunk (1, band, 264, 264), shard
    (shard_samples, band, 264, 264). GEO: (sample, 2) float64. CAPTION: (sample, 512)
    uint8 utf-8 bytes, zero padded. ``valid`` (sample,) bool marks rows that hold data;
    ``cloud_mask`` (sample, y, x) uint8 (0 clear, 1 cloud, 2 shadow, 255 nodata);
    ``epsg`` and ``transform`` (affine a, b, c, d, e, f) locate each row's grid.

    Version 2 adds what makes ``xarray.open_zarr`` label the corpus: ``sample_id``
    (sample,) string, written with each block from the plan (rejected rows keep their
    planned id; ``valid`` says which rows hold data); one label array per band dimension
    (``s2l2a_band`` = B01..B12, ``geo_value`` = lat, lon, ``affine`` = a..f), written with
    the template; and on every per-sample array the CF ``coordinates`` attribute naming
    ``sample_id epsg transform``, so xarray opens these as coordinates (``sample_id`` and
    ``epsg`` travel with every modality's DataArray; ``transform`` needs the ``affine``
    dimension, so it stays on the Dataset). ``version=1`` gives
    the layout older corpora were written with, to read and validate them.
    """
    if n_samples < 0 or shard_samples < 1:
        raise ValueError("n_samples must be >= 0 and shard_samples >= 1")
    if version not in CORPUS_FORMAT_VERSIONS:
        raise ValueError(
            f"corpus format version {version!r} is not supported (known: {CORPUS_FORMAT_VERSIONS})"
        )
    n = n_samples
    s = shard_samples
    arrays: list[ArraySpec] = []
    for name in modality_names:
        m = get_modality(name)
        if m.layout is Layout.IMAGE:
            b = m.n_bands
            arrays.append(
                ArraySpec(
                    m.name,
                    (n, b, SAMPLE_PX, SAMPLE_PX),
                    m.dtype,
                    (1, b, SAMPLE_PX, SAMPLE_PX),
                    (s, b, SAMPLE_PX, SAMPLE_PX),
                    _fill(m),
                    ("sample", f"{m.name.lower()}_band", "y", "x"),
                    attrs={"bands": list(m.band_names)},
                )
            )
        else:
            length = int(m.length or 1)
            arrays.append(
                ArraySpec(
                    m.name,
                    (n, length),
                    m.dtype,
                    (1, length),
                    (s, length),
                    _fill(m),
                    (
                        "sample",
                        f"{m.name.lower()}_{'byte' if m.layout is Layout.TEXT else 'value'}",
                    ),
                    attrs={"bands": list(m.band_names)},
                )
            )
    arrays += [
        ArraySpec(
            "cloud_mask",
            (n, SAMPLE_PX, SAMPLE_PX),
            "uint8",
            (1, SAMPLE_PX, SAMPLE_PX),
            (s, SAMPLE_PX, SAMPLE_PX),
            255,
            ("sample", "y", "x"),
        ),
        ArraySpec("valid", (n,), "bool", (s,), None, False, ("sample",)),
        ArraySpec("epsg", (n,), "int32", (s,), None, 0, ("sample",)),
        ArraySpec("transform", (n, 6), "float64", (s, 6), None, float("nan"), ("sample", "affine")),
    ]
    coords: list[ArraySpec] = []
    if version >= 2:
        arrays = [_with_coordinates_attr(a) for a in arrays]
        arrays.append(
            ArraySpec(
                "sample_id", (n,), STRING_DTYPE, (s,), None, "", ("sample",), compressed=False
            )
        )
        labels: dict[str, tuple[str, ...]] = {}
        for a in arrays:
            if (
                len(a.dims) > 1
                and a.dims[1] not in labels
                and a.attrs.get("bands")
                and get_modality(a.name).layout is not Layout.TEXT
            ):
                labels[a.dims[1]] = tuple(a.attrs["bands"])
        labels["affine"] = AFFINE_FIELDS
        coords = [
            ArraySpec(dim, (len(v),), STRING_DTYPE, (len(v),), None, "", (dim,), False, values=v)
            for dim, v in labels.items()
        ]
    attrs = {
        "format": CORPUS_FORMAT,
        "format_version": version,
        "split": split,
        "n_samples": n,
        "shard_samples": s,
        "n_shards": -(-n // s) if n else 0,
        "sample_px": SAMPLE_PX,
        "resolution_m": 10.0,
        "modalities": list(modality_names),
    }
    return StoreLayout(CORPUS_FORMAT, version, tuple(arrays), attrs, tuple(attrs), tuple(coords))


#: Labels of the ``affine`` dimension of ``transform``: rasterio/affine order, so
#: ``x = a*col + b*row + c`` and ``y = d*col + e*row + f`` at a pixel's corner.
AFFINE_FIELDS = ("a", "b", "c", "d", "e", "f")
#: Per-sample coordinates every other per-sample array names in its ``coordinates`` attribute.
SAMPLE_COORDINATES = ("sample_id", "epsg", "transform")


def _with_coordinates_attr(spec: ArraySpec) -> ArraySpec:
    if spec.name in SAMPLE_COORDINATES:
        return spec
    attrs = {**spec.attrs, "coordinates": " ".join(SAMPLE_COORDINATES)}
    return ArraySpec(
        spec.name,
        spec.shape,
        spec.dtype,
        spec.chunks,
        spec.shards,
        spec.fill_value,
        spec.dims,
        spec.compressed,
        attrs,
    )


def n_image_tokens(crop_px: int = CROP_PX, patch_px: int = PATCH_PX) -> int:
    if crop_px % patch_px:
        raise ValueError(f"crop size {crop_px} is not divisible by the patch size {patch_px}")
    return (crop_px // patch_px) ** 2


def token_layout(
    n_samples: int,
    n_crops: int,
    crop_px: int = CROP_PX,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    modality_names: tuple[str, ...] = TOKEN_MODALITIES,
    split: str = "train",
) -> StoreLayout:
    """Layout of one split of the token store for ``n_samples`` rows x ``n_crops`` crops.

    Image modalities: (sample, crop, (crop_px/16)^2) uint16 codes. GEO: (sample, crop, 2).
    CAPTION: (sample, crop, 64) uint16 padded, with ``CAPTION_len`` (sample, crop) uint16.
    ``crops`` (sample, crop, 5) int32 = top, left, h, w, flip. Rows align with the corpus.
    """
    n, k, s = n_samples, n_crops, shard_samples
    if n < 0 or k < 1 or s < 1:
        raise ValueError("need n_samples >= 0, n_crops >= 1, shard_samples >= 1")
    t_img = n_image_tokens(crop_px)
    arrays: list[ArraySpec] = []
    for name in modality_names:
        m = get_modality(name)
        if m.layout is Layout.IMAGE:
            length = t_img
        elif m.layout is Layout.VECTOR:
            length = int(m.length or 1)
        else:
            length = CAPTION_MAX_TOKENS
        arrays.append(
            ArraySpec(
                m.name,
                (n, k, length),
                "uint16",
                (s, k, length),
                None,
                0,
                ("sample", "crop", f"{m.name.lower()}_token"),
                compressed=False,
                attrs={"vocab_size": m.vocab_size},
            )
        )
        if m.layout is Layout.TEXT:
            arrays.append(
                ArraySpec(
                    f"{m.name}_len",
                    (n, k),
                    "uint16",
                    (s, k),
                    None,
                    0,
                    ("sample", "crop"),
                    compressed=False,
                )
            )
    arrays += [
        ArraySpec(
            "crops",
            (n, k, 5),
            "int32",
            (s, k, 5),
            None,
            0,
            ("sample", "crop", "crop_field"),
            compressed=False,
            attrs={"fields": ["top", "left", "h", "w", "flip"]},
        ),
        ArraySpec("valid", (n,), "bool", (s,), None, False, ("sample",), compressed=False),
    ]
    attrs = {
        "format": TOKENS_FORMAT,
        "format_version": TOKENS_FORMAT_VERSION,
        "split": split,
        "n_samples": n,
        "n_crops": k,
        "crop_px": crop_px,
        "shard_samples": s,
        "modalities": list(modality_names),
        "tokenizers": {},  # modality -> {"id", "version", "sha256"} filled by the encoder
    }
    return StoreLayout(TOKENS_FORMAT, TOKENS_FORMAT_VERSION, tuple(arrays), attrs, tuple(attrs))


# --------------------------------------------------------------------------- creation


#: zstd level of every compressed array (Blosc, byte shuffle). Level 1, not 3: much
#: faster to write and read for somewhat larger files (figures: docs/bench.md), and a
#: corpus is written once and read by every training epoch. Stores record their codec,
#: so readers need not know.
ZSTD_LEVEL = 1


def _codecs(spec: ArraySpec) -> dict[str, Any]:
    """Keyword arguments of ``zarr.create_array`` for a spec."""
    from zarr.codecs import BloscCodec, BloscShuffle

    kwargs: dict[str, Any] = {"chunks": spec.chunks, "dimension_names": spec.dims}
    if spec.shards is not None:
        kwargs["shards"] = spec.shards
    if spec.compressed:
        kwargs["compressors"] = [
            BloscCodec(cname="zstd", clevel=ZSTD_LEVEL, shuffle=BloscShuffle.shuffle)
        ]
    else:
        kwargs["compressors"] = None
    kwargs["filters"] = None
    return kwargs


def _as_path(path: Any) -> Any:
    """A local path as a ``Path``; a storage ``Location`` (anything with ``zarr_store``, e.g.
    ``s3://...``) as itself. Duck-typed: schemas import no storage code, but the stores they
    describe may live on object stores."""
    return path if hasattr(path, "zarr_store") else Path(path)


def _zarr_target(path: Any, read_only: bool = False) -> Any:
    return path.zarr_store(read_only=read_only) if hasattr(path, "zarr_store") else str(path)


def create_store(
    path: str | os.PathLike[str], layout: StoreLayout, attrs: dict[str, Any] | None = None
) -> Any:
    """Create a store template-first: group, all arrays' metadata, attributes; no data.

    Idempotent: if a store with the same layout exists it is opened and returned
    unchanged, so a resumed job never clobbers written shards. A store whose layout
    differs raises ``ValueError`` with the findings.
    """
    import zarr

    root = _as_path(path)
    if (root / "zarr.json").exists():
        findings = validate_store(root, layout)
        if findings:
            raise ValueError(
                f"existing store {root} does not match the requested layout: " + "; ".join(findings)
            )
        return zarr.open_group(_zarr_target(root), mode="r+")
    if hasattr(root, "zarr_store"):  # a location: the template in memory, then one upload
        from zarr.storage import MemoryStore

        template = MemoryStore()
        _write_template(zarr.open_group(template, mode="w", zarr_format=3), layout, attrs)
        _upload_template(template, root.zarr_store())
        return zarr.open_group(root.zarr_store(), mode="r+", zarr_format=3)
    group = zarr.open_group(_zarr_target(root), mode="w", zarr_format=3)
    _write_template(group, layout, attrs)
    return group


def _write_template(group: Any, layout: StoreLayout, attrs: dict[str, Any] | None) -> None:
    """Every array's metadata, the coordinate labels' values and the group attributes."""
    for spec in layout.arrays + layout.coords:
        arr = group.create_array(
            spec.name,
            shape=spec.shape,
            dtype=np_dtype(spec.dtype),
            fill_value=spec.fill_value,
            **_codecs(spec),
        )
        if spec.attrs:
            arr.attrs.update(spec.attrs)
        if spec.values is not None:
            arr[...] = np.asarray(spec.values, dtype=np_dtype(spec.dtype))
    group.attrs.update({**layout.attrs, **(attrs or {})})


def _upload_template(source: Any, target: Any) -> None:
    """Copy every object of a template to ``target`` concurrently, the root ``zarr.json``
    last: it is what says a store exists (``create_store`` reopens a store that has one), so
    an upload killed midway is redone, never taken for a finished template. Creating ~25
    arrays one by one on an object store costs ~300 requests in turn (existence checks,
    listings, rewrites of the group metadata); this is one PUT per object, overlapped."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    async def upload() -> None:
        await target.delete_dir("")  # what a killed upload left, as mode="w" would
        keys = [k async for k in source.list()]
        proto = default_buffer_prototype()

        async def copy(key: str) -> None:
            value = await source.get(key, proto)
            assert value is not None
            await target.set(key, value)

        await asyncio.gather(*(copy(k) for k in keys if k != "zarr.json"))
        await copy("zarr.json")

    sync(upload())


def create_corpus_store(
    path: str | os.PathLike[str],
    n_samples: int,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    split: str = "train",
    modality_names: tuple[str, ...] = CORPUS_MODALITIES,
    attrs: dict[str, Any] | None = None,
) -> Any:
    return create_store(path, corpus_layout(n_samples, shard_samples, modality_names, split), attrs)


def create_token_store(
    path: str | os.PathLike[str],
    n_samples: int,
    n_crops: int,
    crop_px: int = CROP_PX,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    split: str = "train",
    modality_names: tuple[str, ...] = TOKEN_MODALITIES,
    attrs: dict[str, Any] | None = None,
) -> Any:
    return create_store(
        path, token_layout(n_samples, n_crops, crop_px, shard_samples, modality_names, split), attrs
    )


# --------------------------------------------------------------------------- validation


def _shard_shape(arr: Any) -> tuple[int, ...] | None:
    shards = getattr(arr, "shards", None)
    return tuple(shards) if shards is not None else None


def validate_store(
    path: str | os.PathLike[str], layout: StoreLayout, *, check_attrs: bool = True
) -> list[str]:
    """Check a store against a layout; return findings (empty list when valid)."""
    import zarr

    root = _as_path(path)
    if not (root / "zarr.json").exists():
        return [f"{root}: not a Zarr v3 group (no zarr.json)"]
    try:
        group = zarr.open_group(_zarr_target(root, read_only=True), mode="r", zarr_format=3)
    except Exception as exc:  # a corrupt root is a finding, not a crash
        return [f"{root}: cannot open as a Zarr group: {exc}"]
    return validate_group(group, layout, check_attrs=check_attrs)


def validate_group(group: Any, layout: StoreLayout, *, check_attrs: bool = True) -> list[str]:
    """:func:`validate_store` of a group already open: a zarr group, or anything that answers
    ``attrs``, ``array_keys()`` and ``group[name]`` the same way (a writer's handle whose
    metadata was read once, so validating costs no further request)."""
    findings: list[str] = []
    attrs = dict(group.attrs)
    if check_attrs:
        for key in layout.required_attrs:
            if key not in attrs:
                findings.append(f"missing group attribute {key!r}")
        if attrs.get("format") not in (None, layout.format):
            findings.append(f"format is {attrs.get('format')!r}, expected {layout.format!r}")
        if attrs.get("format_version") not in (None, layout.version):
            findings.append(
                f"format_version is {attrs.get('format_version')!r}, expected {layout.version}"
            )
    present = set(group.array_keys())
    for spec in layout.arrays + layout.coords:
        if spec.name not in present:
            findings.append(f"missing array {spec.name!r}")
            continue
        arr: Any = group[spec.name]
        if tuple(arr.shape) != spec.shape:
            findings.append(f"{spec.name}: shape {tuple(arr.shape)} != {spec.shape}")
        if np.dtype(arr.dtype) != np_dtype(spec.dtype):
            findings.append(f"{spec.name}: dtype {np.dtype(arr.dtype)} != {np_dtype(spec.dtype)}")
        if tuple(arr.chunks) != spec.chunks:
            findings.append(f"{spec.name}: chunks {tuple(arr.chunks)} != {spec.chunks}")
        shards = _shard_shape(arr)
        if shards != spec.shards:
            findings.append(f"{spec.name}: shards {shards} != {spec.shards}")
        dims = tuple(arr.metadata.dimension_names or ())
        if dims != spec.dims:
            findings.append(f"{spec.name}: dimension names {dims} != {spec.dims}")
        if spec.values is not None and tuple(str(v) for v in arr[...]) != spec.values:
            findings.append(f"{spec.name}: labels {list(arr[...])} != {list(spec.values)}")
    return findings


def _layout_from_attrs(path: Any, kind: str) -> tuple[StoreLayout | None, list[str]]:
    import zarr

    if not (path / "zarr.json").exists():
        return None, [f"{path}: not a Zarr v3 group (no zarr.json)"]
    try:
        attrs: dict[str, Any] = dict(
            zarr.open_group(_zarr_target(path, read_only=True), mode="r").attrs
        )
    except Exception as exc:
        return None, [f"{path}: cannot open as a Zarr group: {exc}"]
    try:
        if kind == "corpus":
            return corpus_layout(
                int(attrs["n_samples"]),
                int(attrs["shard_samples"]),
                tuple(attrs["modalities"]),
                str(attrs["split"]),
                int(attrs.get("format_version", 1)),
            ), []
        return token_layout(
            int(attrs["n_samples"]),
            int(attrs["n_crops"]),
            int(attrs["crop_px"]),
            int(attrs["shard_samples"]),
            tuple(attrs["modalities"]),
            str(attrs["split"]),
        ), []
    except (KeyError, ValueError, TypeError) as exc:
        return None, [f"{path}: group attributes do not describe a {kind} store: {exc!r}"]


def validate_corpus(path: str | os.PathLike[str]) -> list[str]:
    """Findings of a corpus split store (``<split>.zarr``) against its layout."""
    layout, findings = _layout_from_attrs(_as_path(path), "corpus")
    return findings if layout is None else validate_store(path, layout)


def validate_tokens(path: str | os.PathLike[str]) -> list[str]:
    """Findings of a token split store against its layout."""
    layout, findings = _layout_from_attrs(_as_path(path), "tokens")
    return findings if layout is None else validate_store(path, layout)
