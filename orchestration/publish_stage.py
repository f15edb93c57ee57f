"""The demo's publish stage (issue 20): the demo corpus and its token store as a dataset.

``pipeline.publish`` does the work; this wires it into the main job and says what the
report shows: the corpus is published under ``<out>/published/<version>/`` (STAC,
Croissant, the card with statistics, coverage map and gallery, ``SHA256SUMS``, the Zarr
stores, TerraMesh-layout WebDataset shards and ``tokens/``), then verified the way
``terraloom-pipeline verify --published`` does. A version that does not verify fails the
stage: the demo never reports a dataset it could not check.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from terraloom.pipeline.publish import PublishConfig

#: What ``make demo`` publishes: the corpus is built from the synthetic world, and its card
#: and STAC collection must say so (no real collection is credited for generated pixels).
DEMO_PUBLISH = PublishConfig(
    name="terraloom-demo",
    version="1.0.0",
    title="terraloom demo corpus (synthetic world)",
    description=(
        "The corpus `make demo` builds from terraloom's embedded synthetic world: co-registered "
        "264 x 264 px samples at 10 m of generated Sentinel-2 L1C/L2A, Sentinel-1 GRD/RTC, "
        "elevation, land cover, NDVI, location and a caption, in the layout of a real "
        "terraloom corpus (TerraMind/TerraMesh modalities). For testing pipelines and models; "
        "it holds no satellite data."
    ),
    citation=(
        "@misc{terraloom_demo_corpus, title={terraloom demo corpus (synthetic world)}, "
        "note={Generated and built with terraloom}, year={2025}}"
    ),
    synthetic=True,
)


def publish_demo(corpus: Path, tokens: Path | None, dest: Path, config: PublishConfig) -> dict:
    """Publish ``corpus`` (with ``tokens``) under ``dest`` and verify it; the stage's summary.

    Raises RuntimeError when the published version does not verify.
    """
    from terraloom.pipeline.publish import publish_corpus, verify_published

    t0 = time.perf_counter()
    summary = publish_corpus(corpus, dest, config, tokens=tokens, progress=True)
    t1 = time.perf_counter()
    root = dest / summary.version
    report = verify_published(root)
    t2 = time.perf_counter()
    if not report.ok:
        raise RuntimeError(
            f"the published demo corpus at {root} does not verify: " + "; ".join(report.findings)
        )
    print(summary.table())
    sums = (root / "SHA256SUMS").read_text().splitlines()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    shards = sorted(str(p.relative_to(root)) for p in root.glob("*/*/*.tar"))
    print(f"   verified: {len(sums)} digests, STAC, Croissant and tables agree")
    return {
        "path": str(root),
        "card": str(root / "README.md"),
        "coverage": str(root / "coverage.png"),
        "gallery": [str(root / g) for g in summary.gallery],
        "samples": summary.samples,
        "files": summary.files,
        "megabytes": round(size / 1e6, 1),
        "formats": list(summary.formats),
        "webdataset_shards": len(shards),
        "tokens": summary.tokens,
        "verified": {"ok": report.ok, "digests": len(sums), "findings": report.findings},
        "publish_seconds": round(t1 - t0, 1),
        "verify_seconds": round(t2 - t1, 1),
    }


def publish_section(result: dict[str, Any], rel: Any) -> list[str]:
    """The report's lines for the publish stage; ``rel(path)`` makes a path report-relative."""
    card = rel(Path(result["card"]))
    counts = ", ".join(f"{k} {v}" for k, v in result["samples"].items())
    v = result["verified"]
    lines = [
        "## Published corpus",
        "",
        f"The corpus and its token store published as a dataset: [dataset card]({card}) "
        f"(`{rel(Path(result['path']))}`; {counts} samples; {result['files']} files, "
        f"{result['megabytes']} MB; formats {', '.join(result['formats'])}, "
        f"{result['webdataset_shards']} WebDataset shards"
        + (", token store" if result.get("tokens") else "")
        + "). STAC catalog, Croissant, `stats.json` and `SHA256SUMS` beside it.",
        "",
        f"Verified (`terraloom-pipeline verify --published`): "
        f"{'OK' if v['ok'] else 'FAILED'}, {v['digests']} SHA256 digests checked, STAC "
        "collection and items valid, Croissant valid, index, items and counts agree.",
        "",
        f"![coverage map]({rel(Path(result['coverage']))})",
        "",
    ]
    if result.get("gallery"):
        first = rel(Path(result["gallery"][0]))
        lines += [f"One of the card's gallery pictures: `{Path(first).stem}`", ""]
        lines += [f"![{Path(first).stem}]({first})", ""]
    return lines
