"""Publish a finished corpus: ``DEST/<version>/`` with data, STAC, Croissant, card, digests.

Layout of one published version (its root is itself a corpus directory: the tokenizer
and model read ``<split>.zarr`` + ``index.parquet`` from it, TerraMesh code reads the
shards)::

    README.md  croissant.json  stats.json  SHA256SUMS  coverage.png  gallery/<split>/<id>.png
    index.parquet  rejects.parquet  <split>_metadata.parquet  _published.json
    <split>.zarr/                          (format "zarr")
    <split>/<MODALITY>/terraloom_shard_<k>.tar  (format "webdataset", TerraMesh layout)
    stac/collection.json  stac/items/<split>/<id>.json  stac/items.parquet

A version is written into a hidden sibling and renamed into place when complete, so a
reader never sees half a version; publishing the same corpus again is a no-op, a new
``--version`` is written beside the old ones, and a version never changes once written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terraloom.pipeline.publish.card import COVERAGE_FILE, write_card
from terraloom.pipeline.publish.checksums import SUMS_NAME, write_sums
from terraloom.pipeline.publish.config import (
    PUBLISH_FORMAT,
    PUBLISH_FORMAT_VERSION,
    CorpusFacts,
    PublishConfig,
    PublishInputError,
    load_corpus,
)
from terraloom.pipeline.publish.coverage import render_coverage
from terraloom.pipeline.publish.croissant import write_croissant
from terraloom.pipeline.publish.stac import write_stac
from terraloom.pipeline.publish.stats import corpus_stats, stats_document
from terraloom.pipeline.publish.webdataset import METADATA_SCHEMA, _metadata_row, export_webdataset

MARKER = "_published.json"
STATS_FILE = "stats.json"


@dataclass
class PublishSummary:
    """What one ``publish_corpus`` call did."""

    root: Path
    version: str
    skipped: bool
    samples: dict[str, int]
    files: int
    formats: tuple[str, ...]
    card: Path
    coverage: Path
    gallery: list[Path] = field(default_factory=list)

    def table(self) -> str:
        what = "already published (no-op)" if self.skipped else "published"
        counts = ", ".join(f"{k} {v}" for k, v in self.samples.items())
        return (
            f"{what}: {self.root} (version {self.version}; {counts}; {self.files} files; "
            f"formats {', '.join(self.formats)})\ncard: {self.card}"
        )


def version_root(dest: str | os.PathLike[str], version: str) -> Path:
    return Path(dest) / version


def _read_marker(root: Path) -> dict[str, Any] | None:
    p = root / MARKER
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _summary(root: Path, marker: dict[str, Any], skipped: bool) -> PublishSummary:
    return PublishSummary(
        root=root,
        version=str(marker["version"]),
        skipped=skipped,
        samples={k: int(v) for k, v in marker["samples"].items()},
        files=int(marker.get("files", 0)),
        formats=tuple(marker["formats"]),
        card=root / "README.md",
        coverage=root / COVERAGE_FILE,
        gallery=[root / p for p in marker.get("gallery", [])],
    )


def _check_destination(dest: str | os.PathLike[str]) -> Path:
    text = os.fspath(dest)
    if "://" in text and not text.startswith("file://"):
        raise PublishInputError(
            f"{text}: object-store destinations are not supported yet; publish to a local "
            "directory and upload it"
        )
    return Path(text.removeprefix("file://"))


def publish_corpus(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: PublishConfig | None = None,
    *,
    progress: bool = False,
) -> PublishSummary:
    """Publish ``corpus`` as ``out/<config.version>/``; see the module docstring."""
    config = config or PublishConfig()
    dest = _check_destination(out)
    facts = load_corpus(corpus)
    root = version_root(dest, config.version)
    marker = _read_marker(root)
    if marker is not None:
        if marker.get("corpus_fingerprint") == facts.fingerprint and tuple(
            marker["formats"]
        ) == tuple(config.formats):
            return _summary(root, marker, skipped=True)
        raise PublishInputError(
            f"{root} already holds version {config.version} of another corpus or format set; "
            "publish with a new --version"
        )
    if root.exists():
        raise PublishInputError(
            f"{root} exists but is not a published version; remove it or choose another --version"
        )
    tmp = dest / f".{config.version}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        written = _write_version(tmp, facts, config, progress=progress)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(root, written, skipped=False)


def _write_version(
    root: Path, facts: CorpusFacts, config: PublishConfig, *, progress: bool
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from terraloom.pipeline.quicklook import render_corpus

    for name in ("index.parquet", "rejects.parquet"):
        shutil.copy2(facts.path / name, root / name)
    if "zarr" in config.formats:
        for split in facts.splits:
            shutil.copytree(facts.path / f"{split}.zarr", root / f"{split}.zarr")
    if "webdataset" in config.formats:
        export_webdataset(facts.path, facts.index, facts.modalities, root, config.wds_shard_samples)
    else:
        for split in facts.splits:
            rows = [_metadata_row(r, "") for r in facts.accepted(split)]
            pq.write_table(
                pa.Table.from_pylist(rows, schema=METADATA_SCHEMA),
                root / f"{split}_metadata.parquet",
            )
    stats = stats_document(corpus_stats(facts.path, facts.index, facts.modalities))
    (root / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n")
    ids = [r["sample_id"] for r in facts.index]
    if config.quicklooks is not None:  # a few samples spread over splits and cells
        ids = _spread(ids, config.quicklooks)
    paths = (
        render_corpus(facts.path, root / "gallery", sample_ids=ids, progress=progress)
        if ids
        else []
    )
    quicklooks = {p.stem: p.relative_to(root).as_posix() for p in paths}
    gallery = [quicklooks[r["sample_id"]] for r in facts.index if r["sample_id"] in quicklooks]
    gallery = _spread(gallery, config.gallery_samples)
    write_stac(root, facts, config, stats, quicklooks)
    render_coverage(
        facts.index,
        root / COVERAGE_FILE,
        f"{config.display_title} {config.version}: {len(facts.index)} sample centres",
    )
    write_croissant(root, facts, config)
    write_card(root, facts, config, stats, gallery)
    marker = {
        "format": PUBLISH_FORMAT,
        "format_version": PUBLISH_FORMAT_VERSION,
        "name": config.name,
        "version": config.version,
        "formats": list(config.formats),
        "corpus_fingerprint": facts.fingerprint,
        "samples": {s: len(facts.accepted(s)) for s in facts.splits},
        "gallery": gallery,
    }
    (root / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    write_sums(root)
    marker["files"] = len((root / SUMS_NAME).read_text().splitlines())
    return marker


def _spread(items: list[str], k: int) -> list[str]:
    """At most ``k`` items spread evenly over the list (splits and cells, not the first k)."""
    if k <= 0 or not items:
        return []
    if len(items) <= k:
        return items
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


# --------------------------------------------------------------------------- CLI


def add_publish_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``publish`` on the ``terraloom-pipeline`` sub-command parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "publish",
        help="publish a corpus: STAC, Croissant, dataset card, stats, SHA256SUMS, TerraMesh shards",
        description="Write DEST/<version>/ from a finished corpus. Exit 0 ok, 2 on bad input.",
    )
    p.add_argument("corpus", help="corpus output directory of `build`")
    p.add_argument(
        "--out", required=True, help="destination; the version is written to <out>/<version>"
    )
    p.add_argument(
        "--formats",
        default="zarr,webdataset",
        help="comma-separated data formats: zarr, webdataset (default both)",
    )
    p.add_argument("--name", default=PublishConfig.name, help="dataset name (STAC/Croissant id)")
    p.add_argument(
        "--version", default=PublishConfig.version, help="dataset version (default 1.0.0)"
    )
    p.add_argument("--title", default=None)
    p.add_argument("--license", default=PublishConfig.license, help="SPDX id of the published data")
    p.add_argument(
        "--quicklooks", type=int, default=None, help="samples with a quicklook (default all)"
    )
    p.add_argument(
        "--gallery",
        type=int,
        default=PublishConfig.gallery_samples,
        help="samples in the card's gallery",
    )
    p.add_argument(
        "--tokens",
        default=None,
        help="token store to publish beside the corpus (not supported yet: exits 2)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=publish_command)
    return p


def publish_command(args: argparse.Namespace) -> int:
    prog = "terraloom-pipeline publish"
    try:
        if args.tokens:
            raise PublishInputError("--tokens: publishing a token store is not supported yet")
        if args.quicklooks is not None and args.quicklooks < 0:
            raise PublishInputError("--quicklooks must be >= 0")
        config = PublishConfig(
            name=args.name,
            version=args.version,
            formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
            title=args.title,
            license=args.license,
            quicklooks=args.quicklooks,
            gallery_samples=args.gallery,
        )
        summary = publish_corpus(args.corpus, args.out, config, progress=not args.no_progress)
    except PublishInputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(summary.table())
    return 0
