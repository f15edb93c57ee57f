"""The dataset card: ``README.md`` with Hugging Face front matter, generated from the corpus.

Everything in it is computed from what is published (counts, statistics, rejects, quality,
coverage, gallery, provenance), so the card cannot drift from the data it describes.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from terraloom.pipeline.publish.config import CorpusFacts, PublishConfig
from terraloom.pipeline.publish.provenance import SourceCollection, source_collections
from terraloom.pipeline.publish.tokens import TokenFacts
from terraloom.schemas.modalities import get_modality
from terraloom.storage.location import Location

CARD_FILE = "README.md"
COVERAGE_FILE = "coverage.png"


def size_category(n: int) -> str:
    """Hugging Face ``size_categories`` bucket of a sample count."""
    for hi, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < hi:
            return label
    return "10M<n<100M"


def front_matter(facts: CorpusFacts, config: PublishConfig) -> dict[str, Any]:
    fm: dict[str, Any] = {
        "license": config.license.lower(),
        "pretty_name": config.display_title,
        "size_categories": [size_category(len(facts.index))],
        "task_categories": ["image-feature-extraction", "image-to-image", "image-to-text"],
        "tags": ["earth-observation", "remote-sensing", "multimodal", "satellite", "terraloom"],
        "viewer": False,
    }
    if "webdataset" in config.formats:
        fm["library_name"] = "webdataset"
        fm["configs"] = [
            {
                "config_name": "default",
                "data_files": [
                    {"split": s, "path": f"{s}/*/*.tar"} for s in facts.splits if facts.accepted(s)
                ],
            }
        ]
    return fm


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _quality_rows(facts: CorpusFacts) -> list[tuple[str, int, float, float]]:
    """Mean and max of each quality metric that speaks to co-registration and gaps."""
    acc: dict[str, list[float]] = {}
    for r in facts.index:
        for k, v in r.get("quality") or []:
            if k.startswith(("nodata_", "filled_px_", "s2_offset")) or k == "cloud_fraction":
                acc.setdefault(k, []).append(float(v))
        if r.get("s1_s2_delta_days") is not None:
            acc.setdefault("s1_s2_delta_days", []).append(float(r["s1_s2_delta_days"]))
    return [(k, len(v), sum(v) / len(v), max(v)) for k, v in sorted(acc.items()) if v]


def file_url(config: PublishConfig, rel: str) -> str:
    """Where the card links a file of the version: relative (the Hub resolves a relative
    link in a dataset repository's README against the repository) or, with ``hub_repo``,
    the file's absolute ``resolve`` URL on the Hub, which shows wherever the card is read."""
    if config.hub_repo:
        return f"https://huggingface.co/datasets/{config.hub_repo}/resolve/main/{rel}"
    return rel


def _gallery_lines(facts: CorpusFacts, config: PublishConfig, gallery: list[str]) -> list[str]:
    """One picture per sample, each under a line saying what it is and linking its STAC item."""
    rows = {r["sample_id"]: r for r in facts.index}
    lines = [
        "## Gallery",
        "",
        "Every modality of a few samples, spread over the splits and grid cells, drawn the way "
        "terraloom's quicklooks draw them (S2 true colour, S1 VV in dB, elevation in m, land "
        "cover and cloud mask with their legends, NDVI).",
        "",
    ]
    for rel in gallery:
        sid = Path(rel).stem
        r = rows.get(sid)
        if r is None:
            continue
        item = f"stac/items/{r['split']}/{sid}.json"
        lines += [
            f"**{sid}** ({r['split']}, cell {r['cell_id']}; [STAC item]({file_url(config, item)}))",
            "",
            f"![{sid}: all modalities]({file_url(config, rel)})",
            "",
        ]
    return lines


def acquisition_years(facts: CorpusFacts, collection: str) -> str:
    """The years of the acquisitions read from ``collection`` (``2023``, ``2021-2023``), for
    the credit lines that ask for them (Copernicus: "Contains modified Copernicus Sentinel
    data [Year]"); ``-`` when the index records no time for it."""
    years = {
        t.year
        for name in facts.modalities
        if collection in get_modality(name).collections
        for r in facts.index
        if (t := r.get(f"time_{name}")) is not None
    }
    if not years:
        return "-"
    lo, hi = min(years), max(years)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def credit(source: SourceCollection, facts: CorpusFacts) -> str:
    """The source's attribution with its ``{year}`` filled from the corpus' acquisitions."""
    return source.attribution.replace("{year}", acquisition_years(facts, source.id))


def render_card(
    facts: CorpusFacts,
    config: PublishConfig,
    stats: dict[str, Any],
    gallery: list[str],
    tokens: TokenFacts | None = None,
) -> str:
    """The card's markdown (front matter included)."""
    fm = yaml.safe_dump(front_matter(facts, config), sort_keys=False).strip()
    n = len(facts.index)
    lines = [f"---\n{fm}\n---", "", f"# {config.display_title} (version {config.version})", ""]
    lines += [config.description, ""]
    lines += ["## Splits", "", "| split | planned | accepted | rejected |", "|---|---:|---:|---:|"]
    for s in facts.splits:
        planned = facts.manifest["splits"][s]["n_samples"]
        acc = len(facts.accepted(s))
        lines.append(f"| {s} | {planned} | {acc} | {planned - acc} |")
    lines += [
        "",
        f"{n} samples of 264 x 264 px at 10 m; modalities: {', '.join(facts.modalities)}.",
        "",
    ]
    lines += ["## Rejected candidates by reason", ""]
    reasons = Counter((r["split"], r["reason"]) for r in facts.rejects)
    if reasons:
        lines += ["| split | reason | samples |", "|---|---|---:|"]
        lines += [f"| {s} | {why} | {k} |" for (s, why), k in sorted(reasons.items())]
    else:
        lines.append("No candidate was rejected.")
    lines += ["", "## Band statistics", ""]
    lines.append(
        "Over every accepted sample's finite, non-nodata pixels; percentiles exact. Also in "
        "`stats.json`, beside the mean/std that terraloom's tokenizers and model normalise with."
    )
    lines += [
        "",
        "| modality | band | mean | std | p1 | p99 | normalisation mean / std |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, s in stats["modalities"].items():
        for i, band in enumerate(s["bands"]):
            nm, ns = s["normalisation"]["mean"][i], s["normalisation"]["std"][i]
            lines.append(
                f"| {name} | {band} | {_fmt(s['mean'][i])} | {_fmt(s['std'][i])} | "
                f"{_fmt(s['p1'][i])} | {_fmt(s['p99'][i])} | {_fmt(nm)} / {_fmt(ns)} |"
            )
    lines += ["", "## Quality and co-registration", ""]
    lines.append(
        "Every modality is resampled onto the sample's UTM 10 m grid (its `proj:transform`); "
        "per-sample quality metrics, summarised over the accepted samples:"
    )
    lines += ["", "| metric | samples | mean | max |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {c} | {_fmt(m)} | {_fmt(x)} |" for k, c, m, x in _quality_rows(facts)]
    lines += [
        "",
        "## Coverage",
        "",
        "Sample centres on the world, coloured by split; below, each cluster of samples zoomed "
        "in with every sample's footprint.",
        "",
        f"![coverage map: sample centres and footprints]({file_url(config, COVERAGE_FILE)})",
        "",
    ]
    if gallery:
        lines += _gallery_lines(facts, config, gallery)
    lines += ["## Provenance", ""]
    sources = source_collections(facts.modalities)
    if config.synthetic:
        lines += [
            "**Synthetic data.** Every sample was generated by terraloom's embedded world "
            "(`terraloom-pipeline world`: procedural land cover driving reflectance, backscatter, "
            "NDVI and elevation), published as a STAC catalog of COGs shaped like the "
            "collections below and built like real data. It contains no satellite data.",
            "",
            "| imitated collection | link |",
            "|---|---|",
        ]
        lines += [f"| {src.title} (`{src.id}`) | {src.url} |" for src in sources]
    else:
        lines.append("| source collection | licence | link |")
        lines.append("|---|---|---|")
        for src in sources:
            lines.append(f"| {src.title} (`{src.id}`) | {src.license} | {src.url} |")
    versions = ", ".join(f"{k} {v}" for k, v in facts.format_versions.items())
    cfg = facts.manifest.get("config", {})
    lines += [
        "",
        f"Processing: terraloom build (plan sha256 `{facts.manifest.get('plan_sha256', '-')}`), "
        f"required modalities {', '.join(cfg.get('required', [])) or '-'}, max cloud fraction "
        f"{cfg.get('max_cloud_fraction', '-')}, max nodata fraction {cfg.get('max_nodata_fraction', '-')}, "
        f"S1 window {cfg.get('s1_window_days', '-')} days. Formats: {versions}. Each STAC item links "
        "the source items it was built from (`derived_from`).",
        "",
        "## Attribution",
        "",
    ]
    if config.synthetic:
        lines.append("None required: no third party's data is in this corpus (synthetic).")
    else:
        lines += [f"- **{s.title}**: {credit(s, facts)}" for s in sources]
    lines += ["", "## Files", ""]
    lines += [
        "- `stac/collection.json`, `stac/items/<split>/<id>.json`: STAC static catalog; `stac/items.parquet`: stac-geoparquet",
        "- `croissant.json`: MLCommons Croissant; `stats.json`: band statistics; `SHA256SUMS`: digests of every file",
        "- `index.parquet`, `rejects.parquet`: the corpus tables; `{split}_metadata.parquet`: one row per sample",
    ]
    if "zarr" in config.formats:
        lines.append(
            "- `<split>.zarr`: Zarr v3 stores, one array (sample, band, y, x) per modality"
        )
    if "webdataset" in config.formats:
        lines.append(
            "- `<split>/<MODALITY>/terraloom_shard_<k>.tar`: WebDataset shards in TerraMesh's layout "
            "(one `<id>.zarr.zip` per sample)"
        )
    if tokens is not None:
        lines.append(
            "- `tokens/<split>.zarr`, `tokens/_commits/`: the token store (uint16 tokenizer codes "
            "per modality and crop, rows aligned with `<split>.zarr`): "
            + "; ".join(_token_summary(tokens, s) for s in tokens.splits)
        )
    lines += ["", "## How to load", ""]
    if "zarr" in config.formats:
        lines += [
            "xarray (Zarr stores):",
            "```python",
            "import xarray as xr",
            'ds = xr.open_zarr("train.zarr")  # S2L2A: (sample, s2l2a_band, y, x)',
            "```",
        ]
    if "webdataset" in config.formats:
        lines += [
            "webdataset (TerraMesh layout; TerraMesh's `terramesh.py` reads it with `urls=`):",
            "```python",
            "import io, fsspec, webdataset as wds, zarr",
            'for s in wds.WebDataset("train/S2L2A/terraloom_shard_000001.tar", shardshuffle=False):',
            '    m = fsspec.filesystem("zip", fo=io.BytesIO(s["zarr.zip"])).get_mapper("")',
            '    bands = zarr.open_consolidated(m, mode="r")["bands"][...]  # (time, band, y, x)',
            "```",
        ]
    lines += [
        "terraloom (check it, then pre-tokenize and train on it):",
        "```bash",
        "terraloom-pipeline verify --published .   # digests, STAC, Croissant",
    ]
    if tokens is not None:
        lines += [
            "# the token store is published: train directly (the corpus is this folder)",
            "terraloom-model train --set data.corpus=. --set data.tokens=tokens",
        ]
    else:
        lines.append("terraloom-tokenize encode --corpus . --tokenizers TOKENIZERS --out tokens")
    lines += [
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        config.citation,
        "```",
        "",
    ]
    return "\n".join(lines)


def _token_summary(tokens: TokenFacts, split: str) -> str:
    a = tokens.attrs[split]
    toks = a.get("tokenizers") or {}
    names = ", ".join(f"{m} ({t.get('id')} v{t.get('version')})" for m, t in toks.items())
    return f"{split}: {a.get('n_crops')} crops of {a.get('crop_px')} px, {names or 'no tokenizers recorded'}"


def read_front_matter(path: str | os.PathLike[str] | Location) -> dict[str, Any]:
    """The YAML front matter of a card (safe_load); ValueError if it has none."""
    text = Location.parse(path).read_text()
    if not text.startswith("---\n"):
        raise ValueError(f"{path}: no YAML front matter")
    end = text.find("\n---", 4)
    if end < 0:
        raise ValueError(f"{path}: unterminated YAML front matter")
    doc = yaml.safe_load(text[4:end])
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: front matter is not a mapping")
    return doc
