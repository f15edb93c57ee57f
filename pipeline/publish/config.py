"""Typed configuration of a publish run and the corpus facts every writer reads.

``PublishConfig`` is what the user chooses (name, version, formats, licence, citation);
``CorpusFacts`` is what the corpus says about itself (tables, plan provenance, counts),
read once so that STAC, Croissant, the card and the shards all describe the same corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from terraloom.schemas.layouts import CORPUS_FORMAT_VERSION
from terraloom.storage.location import Location, LocationError

FORMATS = ("zarr", "webdataset")
#: Samples per WebDataset tar, TerraMesh's shard size.
WDS_SHARD_SAMPLES = 10240
PUBLISH_FORMAT = "terraloom-published"
PUBLISH_FORMAT_VERSION = 1


_HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class PublishInputError(ValueError):
    """Bad user input (not a finished corpus, bad option, version clash): CLI exit 2."""


@dataclass(frozen=True)
class PublishConfig:
    """What to publish and how to describe it."""

    name: str = "terraloom-corpus"
    version: str = "1.0.0"
    formats: tuple[str, ...] = FORMATS
    title: str | None = None
    description: str = (
        "A multimodal Earth-observation pretraining corpus built by terraloom: co-registered "
        "264 x 264 px samples at 10 m of Sentinel-2 L1C/L2A, Sentinel-1 GRD/RTC, Copernicus "
        "DEM, Esri land cover, NDVI, location and a caption (TerraMind/TerraMesh modalities)."
    )
    license: str = "CC-BY-4.0"
    citation: str = "@misc{terraloom_corpus, title={terraloom corpus}, note={Built with terraloom}, year={2025}}"
    #: Samples shown in the card's gallery.
    gallery_samples: int = 6
    #: Samples that get a quicklook PNG (and a STAC quicklook asset), spread over the
    #: corpus; None: the gallery's samples only. A number >= the sample count: every sample.
    quicklooks: int | None = None
    #: Samples per WebDataset tar (TerraMesh: 10,240).
    wds_shard_samples: int = WDS_SHARD_SAMPLES
    #: ``owner/name`` of the Hugging Face dataset repository the version is uploaded to: the
    #: card then links its pictures by absolute Hub URLs (None: relative links).
    hub_repo: str | None = None
    #: The corpus was built from generated data (terraloom's synthetic world, as in ``make
    #: demo``): the card and the STAC collection say so and credit no source collection,
    #: since no third party's data is in it (they list the collections it imitates).
    synthetic: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise PublishInputError(
                f"unknown format(s) {bad or '(none)'}; choose from {', '.join(FORMATS)}"
            )
        if not self.version or "/" in self.version or self.version.startswith("."):
            raise PublishInputError(f"bad --version {self.version!r}: a plain name like 1.0.0")
        if not self.name or "/" in self.name:
            raise PublishInputError(f"bad --name {self.name!r}")
        if (self.quicklooks is not None and self.quicklooks < 0) or self.gallery_samples < 0:
            raise PublishInputError("--quicklooks and --gallery must be >= 0")
        if self.hub_repo is not None and not _HUB_REPO.fullmatch(self.hub_repo):
            raise PublishInputError(f"bad --hub-repo {self.hub_repo!r}: expected OWNER/NAME")
        if self.wds_shard_samples < 1 or self.wds_shard_samples > WDS_SHARD_SAMPLES:
            raise PublishInputError(f"wds_shard_samples must be in 1..{WDS_SHARD_SAMPLES}")

    @property
    def display_title(self) -> str:
        return self.title or self.name


@dataclass(frozen=True)
class CorpusFacts:
    """A finished corpus as the publishers see it (rows as plain dicts, sorted by split/row)."""

    path: Location
    manifest: dict[str, Any]
    final: dict[str, Any]
    index: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    scenes: dict[str, list[dict[str, Any]]]  # sample_id -> the plan's scenes
    fingerprint: str
    modalities: tuple[str, ...] = field(default=())

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def accepted(self, split: str) -> list[dict[str, Any]]:
        return [r for r in self.index if r["split"] == split]

    @property
    def format_versions(self) -> dict[str, Any]:
        return {
            "corpus_format_version": CORPUS_FORMAT_VERSION,
            "build_manifest_version": self.manifest.get("version"),
            "publish_format_version": PUBLISH_FORMAT_VERSION,
        }


def load_corpus(corpus: str | os.PathLike[str] | Location) -> CorpusFacts:
    """Read a finished corpus (``build`` output, any location); PublishInputError if it is not one."""
    import pyarrow.parquet as pq

    from terraloom.pipeline.build import final_path, frozen_plan_path, manifest_path
    from terraloom.schemas.tables import read_table

    try:
        loc = Location.parse(corpus)
    except LocationError as exc:
        raise PublishInputError(str(exc)) from exc
    needed = {
        "manifest": manifest_path(loc),
        "final": final_path(loc),
        "index": loc / "index.parquet",
        "rejects": loc / "rejects.parquet",
    }
    try:
        missing = [
            f"{p.parent.name}/{p.name}" if k in ("manifest", "final") else p.name
            for k, p in needed.items()
            if not p.exists()
        ]
    except OSError as exc:
        raise PublishInputError(f"{loc}: cannot be read: {exc}") from exc
    if missing:
        raise PublishInputError(
            f"{loc} is not a finished corpus (missing {', '.join(missing)}); run `build` to the end first"
        )
    try:
        raw = {k: p.read_bytes() for k, p in needed.items()}
        manifest = json.loads(raw["manifest"])
        final = json.loads(raw["final"])
        index = read_table("index", needed["index"]).to_pylist()
        rejects = read_table("rejects", needed["rejects"]).to_pylist()
    except (OSError, ValueError) as exc:
        raise PublishInputError(f"{loc}: cannot read the corpus tables: {exc}") from exc
    scenes: dict[str, list[dict[str, Any]]] = {}
    plan = frozen_plan_path(loc)
    if plan.exists():
        fs, key = plan.arrow_filesystem()
        for r in pq.read_table(key, filesystem=fs, columns=["sample_id", "scenes"]).to_pylist():
            scenes[r["sample_id"]] = r["scenes"] or []
    index.sort(key=lambda r: (r["split"], int(r["row"])))
    rejects.sort(key=lambda r: (r["split"], int(r["row"])))
    h = hashlib.sha256()
    for k, p in needed.items():
        h.update(p.name.encode())
        h.update(hashlib.sha256(raw[k]).hexdigest().encode())
    return CorpusFacts(
        path=loc,
        manifest=manifest,
        final=final,
        index=index,
        rejects=rejects,
        scenes=scenes,
        fingerprint=h.hexdigest(),
        modalities=tuple(manifest.get("modalities", ())),
    )
