"""``croissant.json``: the published corpus described in MLCommons Croissant 1.1.

Croissant is what dataset search engines and ML loaders (TFDS, Hugging Face, PyTorch)
read to find a dataset's files and records. Files: the per-split ``{split}_metadata.parquet``
tables, the per-split, per-modality WebDataset tar sets and the Zarr split stores. One
record set per split: scalar fields from the metadata table and one array field per
modality (dtype, shape, band names). Written and validated with ``mlcroissant``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from terraloom.pipeline.publish.config import CorpusFacts, PublishConfig
from terraloom.schemas.modalities import SAMPLE_PX, Layout, get_modality

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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _type(name: str) -> Any:
    """The mlcroissant data-type URI of a schema.org type name (Text, Float, Integer)."""
    import mlcroissant as mlc

    return getattr(mlc.DataType, name.upper())


def _dtype(m: Any) -> Any:
    return _type("Float" if m.np_dtype.kind == "f" else "Integer")


def build_croissant(root: str | os.PathLike[str], facts: CorpusFacts, config: PublishConfig) -> Any:
    """The Croissant metadata (an ``mlcroissant.Metadata``) of a published root."""
    import mlcroissant as mlc

    root = Path(root)
    distribution: list[Any] = []
    record_sets: list[Any] = []
    image = [n for n in facts.modalities if get_modality(n).layout is Layout.IMAGE]
    for split in facts.splits:
        meta = f"{split}_metadata.parquet"
        meta_id = f"{split}-metadata"
        if not (root / meta).is_file():  # a split without accepted samples has no shards
            continue
        distribution.append(
            mlc.FileObject(
                id=meta_id,
                name=meta_id,
                description=f"one row per sample of the {split} split",
                content_url=meta,
                encoding_formats=["application/x-parquet"],
                sha256=_sha256(root / meta),
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
            for tar in sorted((root / split / name).glob("*.tar")):
                tar_id = f"{split}/{name}/{tar.name}"
                tar_ids.append(tar_id)
                distribution.append(
                    mlc.FileObject(
                        id=tar_id,
                        name=tar_id,
                        description=f"{name} WebDataset shard of the {split} split (TerraMesh layout)",
                        content_url=tar_id,
                        encoding_formats=["application/x-tar"],
                        sha256=_sha256(tar),
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


def write_croissant(
    root: str | os.PathLike[str], facts: CorpusFacts, config: PublishConfig
) -> Path:
    """Write ``croissant.json`` at the published root."""
    metadata = build_croissant(root, facts, config)
    path = Path(root) / CROISSANT_FILE
    path.write_text(json.dumps(metadata.to_json(), indent=1, default=str) + "\n")
    return path


def validate_croissant(root: str | os.PathLike[str]) -> list[str]:
    """Findings of mlcroissant's validation of ``croissant.json`` (offline)."""
    import mlcroissant as mlc

    path = Path(root) / CROISSANT_FILE
    if not path.is_file():
        return [f"{CROISSANT_FILE}: missing"]
    try:
        ds = mlc.Dataset(jsonld=str(path))
    except mlc.ValidationError as exc:
        return [f"{CROISSANT_FILE}: {line}" for line in str(exc).splitlines() if line.strip()][:20]
    except Exception as exc:  # mlcroissant raises assorted errors for broken JSON-LD
        return [f"{CROISSANT_FILE}: cannot be read: {type(exc).__name__}: {exc}"]
    issues = ds.metadata.ctx.issues
    return [f"{CROISSANT_FILE}: {e}" for e in sorted(issues.errors)]
