"""Publish a finished corpus: ``DEST/<version>/`` with data, STAC, Croissant, card, digests.

Layout of one published version (its root is itself a corpus directory: the tokenizer
and model read ``<split>.zarr`` + ``index.parquet`` from it, TerraMesh code reads the
shards, and with ``tokens`` the model trains from ``tokens/`` beside it)::

    README.md  croissant.json  stats.json  SHA256SUMS  coverage.png  gallery/<split>/<id>.png
    index.parquet  rejects.parquet  <split>_metadata.parquet  _published.json
    <split>.zarr/                          (format "zarr")
    <split>/<MODALITY>/terraloom_shard_<k>.tar  (format "webdataset", TerraMesh layout)
    tokens/<split>.zarr/  tokens/_commits/  (with ``tokens``: the token store of this corpus)
    stac/collection.json  stac/items/<split>/<id>.json  stac/items.parquet

``CORPUS``, ``TOKENS`` and ``DEST`` are locations (a local path, ``s3://``, ``gs://``,
``memory://`` ...). Nothing relies on rename, so it holds on object stores: the files are
written under their final names, each hashed as it goes (:mod:`.files`), and the version is
committed by ``_published.json``, a write-once marker created after ``SHA256SUMS`` and
everything it lists. Readers (``verify --published``, users) trust a version only when its
marker exists. One publish per version at a time: a lease (``DEST/.<version>.publish-lease.json``)
keeps a second one out, and marks a version whose publish was killed, so that the next run
clears the leftovers and writes it again. Publishing the same corpus again is a no-op, a new
``--version`` is written beside the old ones, and a version never changes once committed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terraloom.pipeline.publish.card import CARD_FILE, COVERAGE_FILE, render_card
from terraloom.pipeline.publish.checksums import SUMS_NAME, sums_text
from terraloom.pipeline.publish.config import (
    PUBLISH_FORMAT,
    PUBLISH_FORMAT_VERSION,
    CorpusFacts,
    PublishConfig,
    PublishInputError,
    load_corpus,
)
from terraloom.pipeline.publish.coverage import coverage_png
from terraloom.pipeline.publish.croissant import CROISSANT_FILE, croissant_json
from terraloom.pipeline.publish.files import VersionFiles
from terraloom.pipeline.publish.stac import write_stac
from terraloom.pipeline.publish.stats import corpus_stats, stats_document
from terraloom.pipeline.publish.tokens import TokenFacts, copy_tokens, load_tokens
from terraloom.pipeline.publish.webdataset import METADATA_SCHEMA, _metadata_row, export_webdataset
from terraloom.storage.commit import write_once
from terraloom.storage.lease import LeaseHeld, acquire, read_lease
from terraloom.storage.location import Location, LocationError

MARKER = "_published.json"
STATS_FILE = "stats.json"


@dataclass
class PublishSummary:
    """What one ``publish_corpus`` call did."""

    root: Location
    version: str
    skipped: bool
    samples: dict[str, int]
    files: int
    formats: tuple[str, ...]
    card: Location
    coverage: Location
    gallery: list[str] = field(default_factory=list)  # paths relative to ``root``
    tokens: bool = False

    def table(self) -> str:
        what = "already published (no-op)" if self.skipped else "published"
        counts = ", ".join(f"{k} {v}" for k, v in self.samples.items())
        extra = "; token store" if self.tokens else ""
        return (
            f"{what}: {self.root} (version {self.version}; {counts}; {self.files} files; "
            f"formats {', '.join(self.formats)}{extra})\ncard: {self.card}"
        )


def version_root(dest: str | os.PathLike[str] | Location, version: str) -> Location:
    return Location.parse(dest) / version


def lease_location(dest: Location, version: str) -> Location:
    """The lease of one version's publish: a hidden sibling, never part of the version."""
    return dest / f".{version}.publish-lease.json"


def read_marker(root: Location) -> dict[str, Any] | None:
    """The version marker, or None when the version is not committed (or is unreadable)."""
    loc = root / MARKER
    try:
        doc = json.loads(loc.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _summary(root: Location, marker: dict[str, Any], skipped: bool) -> PublishSummary:
    return PublishSummary(
        root=root,
        version=str(marker["version"]),
        skipped=skipped,
        samples={k: int(v) for k, v in marker["samples"].items()},
        files=int(marker.get("files", 0)),
        formats=tuple(marker["formats"]),
        card=root / CARD_FILE,
        coverage=root / COVERAGE_FILE,
        gallery=list(marker.get("gallery", [])),
        tokens=bool(marker.get("tokens")),
    )


def _destination(out: str | os.PathLike[str] | Location) -> Location:
    try:
        dest = Location.parse(out)
    except LocationError as exc:
        raise PublishInputError(str(exc)) from exc
    if dest.read_only:
        raise PublishInputError(
            f"{dest}: {dest.scheme}:// is read-only; publish to a writable location"
        )
    return dest


def _identity(
    facts: CorpusFacts, config: PublishConfig, tokens: TokenFacts | None
) -> dict[str, Any]:
    """What makes a publish the same as an earlier one (a no-op) or a clash."""
    return {
        "corpus_fingerprint": facts.fingerprint,
        "formats": list(config.formats),
        "tokens_fingerprint": tokens.fingerprint if tokens else None,
    }


def _existing(root: Location, marker: dict[str, Any], want: dict[str, Any]) -> PublishSummary:
    have = {k: marker.get(k) for k in want}
    if have == want:
        return _summary(root, marker, skipped=True)
    raise PublishInputError(
        f"{root} already holds version {marker.get('version')} of another corpus, token store "
        "or format set; publish with a new --version"
    )


def publish_corpus(
    corpus: str | os.PathLike[str] | Location,
    out: str | os.PathLike[str] | Location,
    config: PublishConfig | None = None,
    *,
    tokens: str | os.PathLike[str] | Location | None = None,
    progress: bool = False,
) -> PublishSummary:
    """Publish ``corpus`` (and its token store ``tokens``) as ``out/<config.version>/``.

    Every argument is a location (a path or an ``s3://``-style URL). See the module docstring
    for the layout and the commit rule. Raises :class:`PublishInputError` (CLI exit 2) on bad
    input, a version clash or a publish of the same version already running.
    """
    config = config or PublishConfig()
    dest = _destination(out)
    facts = load_corpus(corpus)
    token_facts = load_tokens(tokens, facts) if tokens is not None else None
    root = dest / config.version
    want = _identity(facts, config, token_facts)
    marker = read_marker(root)
    if marker is not None:
        return _existing(root, marker, want)
    lease_loc = lease_location(dest, config.version)
    killed = read_lease(lease_loc) is not None  # a publish of this version did not finish
    try:
        lease = acquire(lease_loc, {"job": "publish", "version": config.version})
    except LeaseHeld as exc:
        raise PublishInputError(
            f"another publish of {root} is running ({' '.join(str(exc).split())})"
        ) from None
    with lease, lease.keep_alive():
        marker = read_marker(root)  # it may have finished while we waited for the lease
        if marker is not None:
            return _existing(root, marker, want)
        if root.walk_files():
            if not killed:
                raise PublishInputError(
                    f"{root} exists but is not a published version; remove it or choose another "
                    "--version"
                )
            root.delete(recursive=True)  # the leftovers of a killed publish of this version
        root.makedirs()
        files = VersionFiles(root)
        try:
            with tempfile.TemporaryDirectory(prefix="terraloom-publish-") as scratch:
                doc = _write_version(
                    files, facts, config, token_facts, Path(scratch), progress=progress
                )
            doc.update(want)
            doc["files"] = len(files.digests) + 1  # and the marker itself; SHA256SUMS aside
            data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
            digests = {**files.digests, MARKER: hashlib.sha256(data).hexdigest()}
            (root / SUMS_NAME).write_bytes(sums_text(digests).encode("utf-8"))
        except BaseException:
            root.delete(recursive=True)  # nothing half-written stays behind an error
            raise
        if not write_once(root / MARKER, data):  # cannot happen under the lease; be explicit
            raise PublishInputError(f"{root} was committed by another writer meanwhile")
    return _summary(root, doc, skipped=False)


def _write_version(
    files: VersionFiles,
    facts: CorpusFacts,
    config: PublishConfig,
    tokens: TokenFacts | None,
    scratch: Path,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Write every file of the version (the marker and ``SHA256SUMS`` excepted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in ("index.parquet", "rejects.parquet"):
        files.copy(facts.path / name, name)
    if "zarr" in config.formats:
        for split in facts.splits:
            files.copy_tree(facts.path / f"{split}.zarr", f"{split}.zarr")
    if tokens is not None:
        copy_tokens(tokens, files)
    if "webdataset" in config.formats:
        export_webdataset(
            facts.path, facts.index, facts.modalities, files, config.wds_shard_samples
        )
    else:
        for split in facts.splits:
            rows = [_metadata_row(r, "") for r in facts.accepted(split)]
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=METADATA_SCHEMA), buf)
            files.write_bytes(f"{split}_metadata.parquet", buf.getvalue())
    stats = stats_document(corpus_stats(facts.path, facts.index, facts.modalities))
    files.write_text(STATS_FILE, json.dumps(stats, indent=1) + "\n")
    # a few samples spread over splits and cells (a figure costs ~1 s: not one per sample)
    n_quicklooks = config.gallery_samples if config.quicklooks is None else config.quicklooks
    ids = _spread([r["sample_id"] for r in facts.index], n_quicklooks)
    quicklooks = _quicklooks(files, facts, set(ids), scratch, progress=progress)
    gallery = [quicklooks[r["sample_id"]] for r in facts.index if r["sample_id"] in quicklooks]
    gallery = _spread(gallery, config.gallery_samples)
    write_stac(files, facts, config, stats, quicklooks, scratch, tokens=tokens)
    files.write_bytes(
        COVERAGE_FILE,
        coverage_png(facts.index, f"{config.display_title} {config.version}: sample centres"),
    )
    files.write_text(CROISSANT_FILE, croissant_json(files.digests, facts, config, tokens))
    files.write_text(CARD_FILE, render_card(facts, config, stats, gallery, tokens))
    return {
        "format": PUBLISH_FORMAT,
        "format_version": PUBLISH_FORMAT_VERSION,
        "name": config.name,
        "version": config.version,
        "samples": {s: len(facts.accepted(s)) for s in facts.splits},
        "gallery": gallery,
        "tokens": {"splits": list(tokens.splits)} if tokens else None,
    }


def _quicklooks(
    files: VersionFiles, facts: CorpusFacts, ids: set[str], scratch: Path, *, progress: bool
) -> dict[str, str]:
    """Render the chosen samples' quicklooks; ``sample_id -> path relative to the root``."""
    import sys

    import zarr
    from tqdm import tqdm

    from terraloom.pipeline.publish.gallery import render_gallery_sample

    rows = [r for r in facts.index if r["sample_id"] in ids]
    groups: dict[str, Any] = {}
    out: dict[str, str] = {}
    for r in tqdm(rows, unit="sample", desc="quicklook", disable=not progress, file=sys.stderr):
        split, sid = r["split"], r["sample_id"]
        if split not in groups:
            store = (facts.path / f"{split}.zarr").zarr_store(read_only=True)
            groups[split] = zarr.open_group(store, mode="r")
        rel = f"gallery/{split}/{sid}.png"
        local = render_gallery_sample(groups[split], r, scratch / rel)
        files.add_local(local, rel)
        local.unlink()
        out[sid] = rel
    return out


def _spread(items: list[str], k: int) -> list[str]:
    """At most ``k`` items spread evenly over the list (splits and cells, not the first k)."""
    if k <= 0 or not items:
        return []
    if len(items) <= k:
        return items
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]
