"""``croissant.json``: the published corpus described in MLCommons Croissant 1.1.

Croissant is what dataset search engines and ML loaders (TFDS, Hugging Face, PyTorch)
read to find a dataset's files and records. Files: the per-split ``{split}_metadata.parquet``
tables, the per-split, per-modality WebDataset tar sets and the Zarr split stores. One
record set per split: scalar fields from the metadata table and one array field per
modality (dtype, shape, band names); with a published token store, one file set per split
(``tokens/<split>.zarr``). The file digests are those taken while the files were written
(:mod:`.files`). Written and validated with ``mlcroissant``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from terraloom.pipeline.publish.config import CorpusFacts, PublishConfig
from terraloom.pipeline.publish.tokens import TokenFacts
from terraloom.schemas.modalities import SAMPLE_PX, Layout, get_modality
from terraloom.storage.location import Location

CROISSANT_FILE = "croissant.json"
CONFORMS_TO = "http://mlcommons.org/croissant/1.1"

_SCALARS = (
    ("__key__", "Text", "sample id (the WebDataset key)"),
    ("center_lat", "Float", "sample centre latitude (EPSG:4326)"),
    ("center_lon", "Float", "sample centre longitude (EPSG:4326)"),
    ("crs", "Text", "UTM zone of the sample grid"),
    ("cell_id", "Text", "Major TOM grid cell"),
    ("caption", "Text", "caption derived from land cover, elevation, NDVI and season"),
)


def _type(name: str) -> Any:
    """The mlcroissant data-type URI of a schema.org type name (Text, Float, Integer)."""
    import mlcroissant as mlc

    return getattr(mlc.DataType, name.upper())


def _dtype(m: Any) -> Any:
    return _type("Float" if m.np_dtype.kind == "f" else "Integer")


def build_croissant(
    digests: Mapping[str, str],
    facts: CorpusFacts,
    config: PublishConfig,
    tokens: TokenFacts | None = None,
) -> Any:
    """The Croissant metadata (an ``mlcroissant.Metadata``) of a published version whose
    files written so far have the given ``relative path -> sha256``."""
    import mlcroissant as mlc

    distribution: list[Any] = []
    record_sets: list[Any] = []
    image = [n for n in facts.modalities if get_modality(n).layout is Layout.IMAGE]
    for split in facts.splits:
        meta = f"{split}_metadata.parquet"
        meta_id = f"{split}-metadata"
        if meta not in digests:  # a split without accepted samples has no shards
            continue
        distribution.append(
            mlc.FileObject(
                id=meta_id,
                name=meta_id,
                description=f"one row per sample of the {split} split",
                content_url=meta,
                encoding_formats=["application/x-parquet"],
                sha256=digests[meta],
            )
        )
        fields = [
            mlc.Field(
                id=f"{split}/{col}",
                name=col,
                description=desc,
                data_types=[_type(dt)],
                source=mlc.Source(file_object=meta_id, extract=mlc.Extract(column=col)),
            )
            for col, dt, desc in _SCALARS
        ]
        record_sets.append(
            mlc.RecordSet(
                id=split,
                name=split,
                description=f"the {split} split: {len(facts.accepted(split))} samples",
                key=f"{split}/__key__",
                fields=fields,
            )
        )
        if "webdataset" not in config.formats:
            continue
        for name in image:
            m = get_modality(name)
            fs_id = f"{split}-{name}"
            tar_ids = []
            prefix = f"{split}/{name}/"
            for tar_id in sorted(
                r
                for r in digests
                if r.startswith(prefix) and r.endswith(".tar") and "/" not in r[len(prefix) :]
            ):
                tar_ids.append(tar_id)
                distribution.append(
                    mlc.FileObject(
                        id=tar_id,
                        name=tar_id,
                        description=f"{name} WebDataset shard of the {split} split (TerraMesh layout)",
                        content_url=tar_id,
                        encoding_formats=["application/x-tar"],
                        sha256=digests[tar_id],
                    )
                )
            distribution.append(
                mlc.FileSet(
                    id=fs_id,
                    name=fs_id,
                    description=f"the per-sample {name} Zarr zips in the {split} shards",
                    contained_in=tar_ids,
                    encoding_formats=["application/zip"],
                    includes=["*.zarr.zip"],
                )
            )
            rs = f"{split}/{name}"
            record_sets.append(
                mlc.RecordSet(
                    id=rs,
                    name=rs,
                    description=f"{name} of the {split} split, one zarr.zip per sample",
                    key=f"{rs}/key",
                    fields=[
                        mlc.Field(
                            id=f"{rs}/key",
                            name="key",
                            description="sample id: the member name without '.zarr.zip'",
                            data_types=[_type("Text")],
                            source=mlc.Source(
                                file_set=fs_id,
                                extract=mlc.Extract(file_property=mlc.FileProperty.filename),
                                transforms=[mlc.Transform(regex=r"^([^.]+)\..*$")],
                            ),
                            references=mlc.Source(field=f"{split}/__key__"),
                        ),
                        mlc.Field(
                            id=f"{rs}/bands",
                            name="bands",
                            description=(
                                f"{m.description}; stored {m.dtype}, bands {', '.join(m.band_names)}; "
                                "the zarr.zip's 'bands' array (time, band, y, x)"
                            ),
                            data_types=[_dtype(m)],
                            is_array=True,
                            array_shape=f"1,{m.n_bands},{SAMPLE_PX},{SAMPLE_PX}",
                            source=mlc.Source(
                                file_set=fs_id,
                                extract=mlc.Extract(file_property=mlc.FileProperty.content),
                            ),
                        ),
                    ],
                )
            )
    if "zarr" in config.formats:
        for split in facts.splits:
            distribution.append(
                mlc.FileSet(
                    id=f"{split}-zarr",
                    name=f"{split}-zarr",
                    description=(
                        f"the {split} split as one Zarr v3 store (sample, band, y, x) per modality; "
                        "open with xarray.open_zarr or zarr.open_group"
                    ),
                    encoding_formats=["application/vnd+zarr"],
                    includes=[f"{split}.zarr/**"],
                )
            )
    for split in tokens.splits if tokens else ():
        distribution.append(
            mlc.FileSet(
                id=f"tokens-{split}",
                name=f"tokens-{split}",
                description=(
                    f"the {split} split's token store (Zarr v3): uint16 tokenizer codes per "
                    "modality (sample, crop, token) and the crops (sample, crop, 5), rows aligned "
                    f"with {split}.zarr; commit markers in tokens/_commits/{split}/"
                ),
                encoding_formats=["application/vnd+zarr"],
                includes=[f"tokens/{split}.zarr/**", f"tokens/_commits/{split}/*"],
            )
        )
    return mlc.Metadata(
        name=config.name,
        description=config.description,
        conforms_to=[CONFORMS_TO],
        cite_as=config.citation,
        license=[f"https://spdx.org/licenses/{config.license}.html"],
        url="https://github.com/terraloom",
        version=config.version,
        keywords=["earth observation", "multimodal", "pretraining", "TerraMind"],
        distribution=distribution,
        record_sets=record_sets,
    )


def croissant_json(
    digests: Mapping[str, str],
    facts: CorpusFacts,
    config: PublishConfig,
    tokens: TokenFacts | None = None,
) -> str:
    """``croissant.json`` of a published version (see :func:`build_croissant`)."""
    metadata = build_croissant(digests, facts, config, tokens)
    return json.dumps(metadata.to_json(), indent=1, default=str) + "\n"


def validate_croissant(root: str | os.PathLike[str] | Location) -> list[str]:
    """Findings of mlcroissant's validation of ``croissant.json`` (offline)."""
    import mlcroissant as mlc

    root = Location.parse(root)
    path = root / CROISSANT_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return [f"{CROISSANT_FILE}: missing"]
    except ValueError as exc:
        return [f"{CROISSANT_FILE}: not JSON: {exc}"]
    try:
        ds = mlc.Dataset(jsonld=path.path if root.is_local else doc)
    except mlc.ValidationError as exc:
        return [f"{CROISSANT_FILE}: {line}" for line in str(exc).splitlines() if line.strip()][:20]
    except Exception as exc:  # mlcroissant raises assorted errors for broken JSON-LD
        return [f"{CROISSANT_FILE}: cannot be read: {type(exc).__name__}: {exc}"]
    issues = ds.metadata.ctx.issues
    return [f"{CROISSANT_FILE}: {e}" for e in sorted(issues.errors)]
