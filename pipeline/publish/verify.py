"""Check a published version: every digest, and that STAC, Croissant and the tables agree.

``terraloom-pipeline verify --published DEST`` runs this on ``DEST`` (one version) or on
every version under it. Findings, never exceptions, like the corpus verifier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from terraloom.pipeline.publish.checksums import SUMS_NAME, verify_sums
from terraloom.pipeline.publish.croissant import validate_croissant
from terraloom.pipeline.publish.publish import MARKER
from terraloom.pipeline.publish.stac import COLLECTION_FILE, ITEMS_PARQUET, STAC_DIR, validate_stac


@dataclass
class PublishedReport:
    findings: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings and bool(self.versions)


def published_versions(dest: str | os.PathLike[str]) -> list[Path]:
    """``dest`` itself if it is a published version, else its published version folders."""
    dest = Path(dest)
    if (dest / MARKER).is_file() or (dest / SUMS_NAME).is_file():
        return [dest]
    if not dest.is_dir():
        return []
    return sorted(p for p in dest.iterdir() if p.is_dir() and (p / MARKER).is_file())


def _consistency(root: Path) -> list[str]:
    """The index, the STAC items (JSON and GeoParquet) and the marker list the same samples."""
    from terraloom.pipeline.publish.stac import read_geoparquet_items
    from terraloom.schemas.tables import read_table

    f: list[str] = []
    try:
        index = read_table("index", root / "index.parquet").to_pylist()
        marker = json.loads((root / MARKER).read_text())
        collection = json.loads((root / STAC_DIR / COLLECTION_FILE).read_text())
        geo = read_geoparquet_items(root / STAC_DIR / ITEMS_PARQUET)
    except (OSError, ValueError, KeyError) as exc:
        return [f"cannot read the published tables: {exc}"]
    ids = {r["sample_id"] for r in index}
    stac_ids = {Path(p.name).stem for p in (root / STAC_DIR / "items").rglob("*.json")}
    linked = {
        Path(link["href"]).stem for link in collection.get("links", []) if link.get("rel") == "item"
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


def verify_published(dest: str | os.PathLike[str]) -> PublishedReport:
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
        if (root / MARKER).is_file():
            checks += [validate_stac(root), validate_croissant(root), _consistency(root)]
        else:
            checks.append([f"{MARKER}: missing"])
        for findings in checks:
            report.findings.extend(f"{name}: {x}" for x in findings)
    return report


# --------------------------------------------------------------------------- CLI


def add_published_option(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--published`` to the ``verify`` parser: ``verify --published DEST``."""
    p.add_argument(
        "--published",
        action="store_true",
        help="the path is a published dataset (DEST or DEST/<version>): check every digest "
        "in SHA256SUMS and the STAC/Croissant/index consistency",
    )
    plain = p.get_default("func")

    def run(args: argparse.Namespace) -> int:
        return published_command(args) if args.published else int(plain(args))

    p.set_defaults(func=run)
    return p


def published_command(args: argparse.Namespace) -> int:
    dest = Path(args.corpus)
    if not published_versions(dest):
        print(
            f"terraloom-pipeline verify: error: {dest} holds no dataset written by "
            "`terraloom-pipeline publish`",
            file=sys.stderr,
        )
        return 2
    report = verify_published(dest)
    for finding in report.findings:
        print(f"FAIL {finding}")
    status = "OK" if report.ok else f"{len(report.findings)} findings"
    print(f"verify --published {dest}: {status} (versions: {', '.join(report.versions)})")
    return 0 if report.ok else 1
