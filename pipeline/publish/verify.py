"""Check a published version: every digest, and that STAC, Croissant and the tables agree.

``terraloom-pipeline verify --published DEST`` runs this on ``DEST`` (one version) or on
every committed version under it, on any location (a local folder or an object-store
prefix). Findings, never exceptions, like the corpus verifier.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from terraloom.pipeline.publish.checksums import SUMS_NAME, verify_sums
from terraloom.pipeline.publish.croissant import validate_croissant
from terraloom.pipeline.publish.publish import MARKER
from terraloom.pipeline.publish.stac import COLLECTION_FILE, ITEMS_PARQUET, STAC_DIR, validate_stac
from terraloom.storage.location import Location


@dataclass
class PublishedReport:
    findings: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings and bool(self.versions)


def published_versions(dest: str | os.PathLike[str] | Location) -> list[Location]:
    """``dest`` itself if it is a published version, else its committed version folders.

    A version is recognised by its marker (or, when the marker is what went missing, its
    ``SHA256SUMS``); a folder without either is an unfinished publish and is not listed.
    """
    dest = Location.parse(dest)
    if (dest / MARKER).exists() or (dest / SUMS_NAME).exists():
        return [dest]
    return [
        dest / name
        for name in dest.listdir()
        if not name.startswith(".") and (dest / name / MARKER).exists()
    ]


def _consistency(root: Location) -> list[str]:
    """The index, the STAC items (JSON and GeoParquet) and the marker list the same samples."""
    from terraloom.pipeline.publish.stac import read_geoparquet_items
    from terraloom.schemas.tables import read_table

    f: list[str] = []
    try:
        index = read_table("index", root / "index.parquet").to_pylist()
        marker = json.loads((root / MARKER).read_bytes())
        collection = json.loads((root / STAC_DIR / COLLECTION_FILE).read_bytes())
        geo = read_geoparquet_items(root / STAC_DIR / ITEMS_PARQUET)
    except (OSError, ValueError, KeyError) as exc:
        return [f"cannot read the published tables: {exc}"]
    ids = {r["sample_id"] for r in index}
    stac_ids = {
        PurePosixPath(rel).stem
        for rel in (root / STAC_DIR / "items").walk_files()
        if rel.endswith(".json")
    }
    linked = {
        PurePosixPath(link["href"]).stem
        for link in collection.get("links", [])
        if link.get("rel") == "item"
    }
    geo_ids = {it["id"] for it in geo}
    for what, got in (
        ("STAC items", stac_ids),
        ("collection item links", linked),
        ("stac-geoparquet", geo_ids),
    ):
        if got != ids:
            f.append(
                f"{what} differ from index.parquet: {len(got - ids)} extra, {len(ids - got)} missing"
            )
    counts: dict[str, int] = {}
    for r in index:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    if {k: v for k, v in counts.items() if v} != {
        k: v for k, v in marker.get("samples", {}).items() if v
    }:
        f.append(f"{MARKER} sample counts {marker.get('samples')} != index.parquet {counts}")
    return f


def verify_published(dest: str | os.PathLike[str] | Location) -> PublishedReport:
    """Verify one published version or every version under ``dest``."""
    report = PublishedReport()
    roots = published_versions(dest)
    if not roots:
        report.findings.append(f"{dest}: no published version (no {MARKER})")
        return report
    for root in roots:
        name = root.name
        report.versions.append(name)
        checks = [verify_sums(root)]
        if (root / MARKER).exists():
            checks += [validate_stac(root), validate_croissant(root), _consistency(root)]
        else:
            checks.append([f"{MARKER}: missing (the version is not committed)"])
        for findings in checks:
            report.findings.extend(f"{name}: {x}" for x in findings)
    return report
