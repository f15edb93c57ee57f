"""Planning: region + period + source -> ``plan.parquet`` (one row per candidate sample).

:func:`plan_samples` is the pure entry point the CLI, the build and any Beam/Dask wiring call.
It enumerates the region's samples on the Major TOM grid, searches each modality's collection
once per block of samples (``block_deg`` degrees, so a continent is not one giant search and
a sample is not one tiny search), matches scenes per sample (:mod:`pipeline.matching`),
assigns splits by whole spatial blocks of cells (train and val never share a cell, so they
never overlap), and numbers rows per split in sample-id order so any worker can later write
its block of the corpus without coordination.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import shapely
from shapely.geometry import box
from tqdm import tqdm

from terraloom.pipeline.grid import GRID, CellId, Region, SampleGrid
from terraloom.pipeline.hrefs import scope_metadata, source_scope
from terraloom.pipeline.matching import (
    S1_MODALITIES,
    S2_MODALITIES,
    MatchConfig,
    MatchRequest,
    SampleMatch,
    match_sample,
)
from terraloom.pipeline.sources.base import SkippedItem, Source, SourceItem, TimeRange
from terraloom.schemas.layouts import SPLITS
from terraloom.schemas.modalities import REGISTRY, get_modality
from terraloom.schemas.tables import PLAN_SCHEMA, from_rows, write_geoparquet

#: Modalities read from a source (derived ones, S2RGB/NDVI/GEO/CAPTION, come from these).
SOURCE_MODALITIES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.collections)


@dataclass(frozen=True)
class PlanConfig:
    """Everything that decides a plan besides the source, region and period."""

    modalities: tuple[str, ...] = SOURCE_MODALITIES
    #: modality -> collection id, overriding the registry's first collection
    collections: Mapping[str, str] = field(default_factory=dict, hash=False)
    samples_per_cell: int = 1
    match: MatchConfig = MatchConfig()
    #: fraction of spatial blocks in val / test (the rest is train)
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    #: cells are grouped into (n x n) blocks of rows x columns that share a split
    split_block_cells: int = 1
    seed: int = 0
    #: samples are searched together in blocks of this many degrees
    block_deg: float = 1.0
    #: also ask the source to pre-filter S2 items on eo:cloud_cover (percent), None: no filter
    item_max_cloud: float | None = None
    #: keep samples with unmatched modalities in the plan (the build rejects them with reasons)
    keep_unmatched: bool = True

    def __post_init__(self) -> None:
        mods = tuple(get_modality(m).name for m in self.modalities)
        if not mods:
            raise ValueError("no modality to plan")
        for m in mods:
            if not get_modality(m).collections:
                raise ValueError(
                    f"{m} is derived during the build, it is not planned from a source"
                )
        object.__setattr__(self, "modalities", mods)
        colls = {get_modality(k).name: v for k, v in dict(self.collections).items()}
        object.__setattr__(self, "collections", colls)
        if not (
            self.val_fraction >= 0
            and self.test_fraction >= 0
            and self.val_fraction + self.test_fraction < 1
        ):
            raise ValueError("val_fraction and test_fraction must be >= 0 and sum to < 1")
        if self.split_block_cells < 1:
            raise ValueError("split_block_cells must be >= 1")
        if self.block_deg <= 0:
            raise ValueError("block_deg must be > 0")

    def collection(self, modality: str) -> str:
        m = get_modality(modality)
        return self.collections.get(m.name, m.collections[0])


# --- splits -----------------------------------------------------------------------------------


def _unit_hash(*parts: object) -> float:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_block(cell: str | CellId, block_cells: int = 1) -> tuple[int, int]:
    c = cell if isinstance(cell, CellId) else CellId.parse(cell)
    return c.row // block_cells, c.col // block_cells


def assign_splits(cells: Iterable[str], config: PlanConfig) -> dict[str, str]:
    """Cell id -> split, by a seeded hash of the cell's spatial block (whole blocks per split).

    A block's split depends only on (seed, block), not on the rest of the region, so growing
    a region never moves a cell between splits. When that leaves a split the config asks for
    empty (tiny regions), the lowest-hash train blocks are moved there so it is not empty.
    """
    blocks: dict[tuple[int, int], list[str]] = defaultdict(list)
    for c in sorted(set(cells)):
        blocks[split_block(c, config.split_block_cells)].append(c)
    u = {b: _unit_hash(config.seed, config.split_block_cells, *b) for b in blocks}
    split_of: dict[tuple[int, int], str] = {}
    for b, h in u.items():
        split_of[b] = (
            "val"
            if h < config.val_fraction
            else "test"
            if h < config.val_fraction + config.test_fraction
            else "train"
        )
    for name, frac in (("val", config.val_fraction), ("test", config.test_fraction)):
        if frac > 0 and name not in split_of.values():
            train = sorted((h, b) for b, h in u.items() if split_of[b] == "train")
            if len(train) >= 2:
                split_of[train[0][1]] = name
    return {c: split_of[b] for b, cs in blocks.items() for c in cs}


# --- searching --------------------------------------------------------------------------------


def _search_range(modality: str, period: TimeRange, config: PlanConfig) -> TimeRange | None:
    t0, t1 = period
    if modality in S1_MODALITIES:
        pad = timedelta(days=config.match.s1_window_days)
        return t0 - pad, t1 + pad
    if modality == "LULC":
        gap = config.match.lulc_max_year_gap
        return t0.replace(
            year=t0.year - gap, month=1, day=1, hour=0, minute=0, second=0, microsecond=0
        ), t1.replace(
            year=t1.year + gap, month=12, day=31, hour=23, minute=59, second=59, microsecond=999999
        )
    if modality in S2_MODALITIES:
        return period
    return None  # DEM and other static layers: any time


def _blocks(
    samples: Sequence[SampleGrid], block_deg: float
) -> dict[tuple[int, int], list[SampleGrid]]:
    out: dict[tuple[int, int], list[SampleGrid]] = defaultdict(list)
    for s in samples:
        lon, lat = s.center
        out[(math.floor(lat / block_deg), math.floor(lon / block_deg))].append(s)
    return dict(sorted(out.items()))


def unavailable_modalities(source: Source, config: PlanConfig) -> dict[str, str]:
    """Planned modalities whose collection the source says it does not serve -> message."""
    served = source.collections()
    if served is None:
        return {}
    return {
        m: f"source {source.name} serves no {config.collection(m)!r} collection"
        for m in config.modalities
        if config.collection(m) not in served
    }


def search_block(
    source: Source,
    samples: Sequence[SampleGrid],
    period: TimeRange,
    config: PlanConfig,
    skip: Iterable[str] = (),
) -> dict[str, list[SourceItem]]:
    """Every item of every planned modality intersecting a block of samples."""
    geom = box(*shapely.union_all([s.footprint for s in samples]).bounds)
    out: dict[str, list[SourceItem]] = {}
    for m in config.modalities:
        if m in skip:
            out[m] = []
            continue
        query = None
        if m in S2_MODALITIES and config.item_max_cloud is not None:
            query = {"eo:cloud_cover": {"lte": config.item_max_cloud}}
        out[m] = source.search(config.collection(m), geom, _search_range(m, period, config), query)
    return out


def match_block(
    samples: Sequence[SampleGrid],
    items: Mapping[str, Sequence[SourceItem]],
    period: TimeRange,
    config: PlanConfig,
    progress: tqdm | None = None,
    unavailable: Mapping[str, str] | None = None,
) -> list[SampleMatch]:
    """Match every sample of a block against the block's items (pure given the items).

    ``unavailable`` maps modalities the source cannot serve to the reason, which replaces
    the generic "no item" message of their misses.
    """
    trees = {
        m: (shapely.STRtree([it.geometry for it in its]), list(its))
        for m, its in items.items()
        if its
    }
    request = MatchRequest(config.modalities, period)
    out = []
    for s in samples:
        cands: dict[str, list[SourceItem]] = {}
        for m in config.modalities:
            if m not in trees:
                cands[m] = []
                continue
            tree, its = trees[m]
            cands[m] = [its[i] for i in sorted(tree.query(s.footprint, predicate="intersects"))]
        sm = match_sample(s, cands, request, config.match)
        if unavailable:
            sm = replace(
                sm,
                matches=tuple(
                    replace(mm, message=unavailable[mm.modality])
                    if mm.modality in unavailable and not mm.matched
                    else mm
                    for mm in sm.matches
                ),
            )
        out.append(sm)
        if progress is not None:
            progress.update(1)
    return out


# --- rows -------------------------------------------------------------------------------------


def plan_row(match: SampleMatch) -> dict[str, Any]:
    """One PLAN_SCHEMA row (split and row are filled in by :func:`finalize_plan`)."""
    s = match.sample
    lon, lat = s.center
    scenes: list[dict[str, Any]] = []
    unmatched: list[dict[str, Any]] = []
    for mm in match.matches:
        if mm.acquisition is None:
            unmatched.append({"modality": mm.modality, "reason": mm.reason, "message": mm.message})
            continue
        for it in mm.acquisition.items:
            scenes.append(it.to_scene(mm.modality, mm.acquisition.cloud_cover))
    return {
        "sample_id": s.sample_id,
        "split": "",
        "row": -1,
        "cell_id": s.cell_id,
        "geometry": shapely.to_wkb(s.footprint),
        "center_lon": lon,
        "center_lat": lat,
        "epsg": s.epsg,
        "transform": list(s.transform),
        "width": s.width,
        "height": s.height,
        "scenes": scenes,
        "unmatched": unmatched,
        "s1_s2_delta_days": match.s1_s2_delta_days,
    }


def finalize_plan(rows: Sequence[dict[str, Any]], config: PlanConfig) -> pa.Table:
    """Assign splits (by cell block) and per-split rows (by sample id); build the table."""
    rows = [r for r in rows if config.keep_unmatched or not r["unmatched"]]
    splits = assign_splits((r["cell_id"] for r in rows), config)
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_split[splits[r["cell_id"]]].append(r)
    out = []
    for split in SPLITS:
        for i, r in enumerate(sorted(by_split.get(split, []), key=lambda r: r["sample_id"])):
            out.append({**r, "split": split, "row": i})
    return from_rows("plan", out)


def plan_samples(
    source: Source,
    region: Region,
    time_range: TimeRange,
    config: PlanConfig = PlanConfig(),
    *,
    progress: bool = False,
) -> pa.Table:
    """Plan every sample of a region and period: a PLAN_SCHEMA table."""
    if time_range[1] < time_range[0]:
        raise ValueError("time range ends before it starts")
    samples = region.samples(config.samples_per_cell, GRID)
    unavailable = unavailable_modalities(source, config)
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(samples), desc="plan", unit="sample", disable=not progress) as bar:
        for block in _blocks(samples, config.block_deg).values():
            items = search_block(source, block, time_range, config, skip=unavailable)
            rows.extend(
                plan_row(m) for m in match_block(block, items, time_range, config, bar, unavailable)
            )
    table = finalize_plan(rows, config)
    # where this source's hrefs may point: the build's href policy reads it back
    scope = scope_metadata(source_scope(source))
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **scope})


def write_plan(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``plan.parquet`` (GeoParquet, atomically) so ``schemas.tables.read_table`` reads it."""
    return write_geoparquet("plan", table, path)


# --- summary ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanSummary:
    """What a plan holds: samples per split, per-modality match counts and miss reasons."""

    samples: int
    complete: int
    splits: Mapping[str, int]
    modalities: tuple[str, ...]
    matched: Mapping[str, int]
    misses: Mapping[str, Mapping[str, int]]

    def match_rate(self, modality: str) -> float:
        return self.matched.get(modality, 0) / self.samples if self.samples else 0.0

    def format(self) -> str:
        lines = [
            f"samples planned: {self.samples}  ("
            + ", ".join(f"{k} {v}" for k, v in self.splits.items())
            + f"); all modalities matched: {self.complete}",
            f"{'modality':<10}{'matched':>9}{'rate':>8}  misses by reason",
        ]
        for m in self.modalities:
            reasons = (
                ", ".join(f"{r} {n}" for r, n in sorted(self.misses.get(m, {}).items())) or "-"
            )
            lines.append(
                f"{m:<10}{self.matched.get(m, 0):>9}{100 * self.match_rate(m):>7.1f}%  {reasons}"
            )
        return "\n".join(lines)


def summarize_plan(table: pa.Table, modalities: Sequence[str] | None = None) -> PlanSummary:
    rows = table.select(["split", "scenes", "unmatched"]).to_pylist()
    matched: Counter[str] = Counter()
    misses: dict[str, Counter[str]] = defaultdict(Counter)
    seen: set[str] = set()
    complete = 0
    for r in rows:
        mods = {sc["modality"] for sc in r["scenes"]}
        matched.update(mods)
        seen |= mods
        for u in r["unmatched"]:
            misses[u["modality"]][u["reason"]] += 1
            seen.add(u["modality"])
        complete += not r["unmatched"]
    order = tuple(modalities) if modalities else tuple(m.name for m in REGISTRY if m.name in seen)
    splits = Counter(r["split"] for r in rows)
    return PlanSummary(
        samples=len(rows),
        complete=complete,
        splits={s: splits[s] for s in SPLITS if splits.get(s)},
        modalities=order,
        matched=dict(matched),
        misses={m: dict(c) for m, c in misses.items()},
    )


# --- report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanReport:
    """What planning left out of the plan and why: the malformed catalog items its source
    skipped. Written next to ``plan.parquet`` so a skipped item is never a silent loss."""

    source: str
    samples: int
    skipped: tuple[SkippedItem, ...] = ()

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": self.samples,
            "skipped_items": len(self.skipped),
            "skipped_by_reason": self.skipped_by_reason(),
            "skipped": [s.to_dict() for s in self.skipped],
        }

    def format(self) -> str:
        if not self.skipped:
            return "skipped catalog items: 0"
        reasons = ", ".join(f"{r} {n}" for r, n in self.skipped_by_reason().items())
        return f"skipped malformed catalog items: {len(self.skipped)} ({reasons})"


def plan_report(source: Source, table: pa.Table) -> PlanReport:
    """The report of a plan made from ``source`` (call it after :func:`plan_samples`)."""
    return PlanReport(source.name, table.num_rows, tuple(source.skipped_items()))


def report_path(plan_path: str | os.PathLike[str]) -> Path:
    """``plan.parquet`` -> ``plan_report.json`` beside it (``x.parquet`` -> ``x_report.json``)."""
    p = Path(plan_path)
    return p.with_name(f"{p.stem}_report.json")


def write_plan_report(report: PlanReport, plan_path: str | os.PathLike[str]) -> Path:
    """Write the report beside the plan, atomically (tmp file + rename)."""
    path = report_path(plan_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    os.replace(tmp, path)
    return path


__all__ = [
    "PLAN_SCHEMA",
    "SOURCE_MODALITIES",
    "PlanConfig",
    "PlanSummary",
    "assign_splits",
    "finalize_plan",
    "match_block",
    "plan_row",
    "plan_samples",
    "search_block",
    "summarize_plan",
    "write_plan",
    "PlanReport",
    "plan_report",
    "report_path",
    "write_plan_report",
]
