"""Planning: region + period + source -> ``plan.parquet`` (one row per candidate sample).

:func:`plan_samples` is the single-process entry point. It partitions the region's grid
cells into blocks (``block_deg`` degrees, by cell centre, so a continent is not one giant
search and a sample is not one tiny search), plans each block on its own with
:func:`plan_block_rows` (search each modality's collection once per block, collections
that share a period batched into one search, then match scenes per sample,
:mod:`pipeline.matching`), and :func:`finalize_plan` numbers the rows. The distributed
planner (:mod:`pipeline.plan_engines`) calls the same two functions, one block per task, so
both give the same plan row for row. It
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
from shapely.prepared import prep
from tqdm import tqdm

from terraloom.pipeline.build_config import BandSubset, check_band_subset, plan_request_metadata
from terraloom.pipeline.grid import GRID, CellId, Region, SampleGrid, samples_for_cell
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
from terraloom.storage.location import Location

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
    #: plan only these bands of a modality, e.g. {S2L2A: [B02, B03, B04, B08]}: items need
    #: assets for those only, and the build of the plan builds those (recorded in its metadata)
    band_subset: BandSubset = ()

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
        subset = check_band_subset(self.band_subset)
        for m, _ in subset:
            if m not in mods:
                raise ValueError(f"band_subset names {m}, which is not planned ({', '.join(mods)})")
        object.__setattr__(self, "band_subset", subset)
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


@dataclass(frozen=True, order=True)
class PlanBlock:
    """A unit of planning work: the grid cells whose centres fall in one ``block_deg``
    square (``key`` = its floor(lat), floor(lon) indices). Blocks are planned
    independently, so they are what a Beam/Dask job distributes and what a resumed plan
    skips when committed."""

    key: tuple[int, int]
    cells: tuple[str, ...]

    @property
    def name(self) -> str:
        """A file-name-safe id, e.g. ``b+045+015``."""
        return f"b{self.key[0]:+04d}{self.key[1]:+04d}"


def plan_blocks(cells: Iterable[str | CellId], block_deg: float) -> list[PlanBlock]:
    """Partition cells into blocks by their centre (whole cells per block), sorted by key."""
    out: dict[tuple[int, int], list[str]] = defaultdict(list)
    for c in cells:
        b = GRID.bounds(c)
        lat = (b.south + b.north) / 2.0
        lon = (b.west + b.east) / 2.0
        lon = lon - 360.0 if lon >= 180.0 else lon
        out[(math.floor(lat / block_deg), math.floor(lon / block_deg))].append(str(c))
    return [PlanBlock(k, tuple(sorted(v))) for k, v in sorted(out.items())]


def region_blocks(region: Region, config: PlanConfig) -> list[PlanBlock]:
    """The region's cells partitioned into planning blocks."""
    return plan_blocks(region.cell_ids(GRID), config.block_deg)


def block_samples(region: Region, block: PlanBlock, samples_per_cell: int) -> list[SampleGrid]:
    """The region's samples in a block: as :meth:`Region.samples` (all samples of listed
    cells; for a geometry, those centred inside it), restricted to the block's cells."""
    prepared = prep(region.geometry) if region.geometry is not None else None
    out = []
    for c in block.cells:
        for s in samples_for_cell(c, samples_per_cell, GRID):
            if prepared is None or prepared.covers(shapely.Point(*s.center)):
                out.append(s)
    return out


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
    """Every item of every planned modality intersecting a block of samples.

    Modalities searched over the same period with the same query (S2 L1C + L2A, S1 GRD +
    RTC) are asked in one search when the source can batch collections
    (``search_collections``, e.g. a STAC API): fewer requests per block, the same items."""
    skip = set(skip)
    out: dict[str, list[SourceItem]] = {m: [] for m in config.modalities}
    if not samples:
        return out
    geom = box(*shapely.union_all([s.footprint for s in samples]).bounds)
    groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for m in config.modalities:
        if m in skip:
            continue
        query = None
        if m in S2_MODALITIES and config.item_max_cloud is not None:
            query = {"eo:cloud_cover": {"lte": config.item_max_cloud}}
        rng = _search_range(m, period, config)
        groups[(rng, json.dumps(query, sort_keys=True))].append(m)
    batch = getattr(source, "search_collections", None)
    for (rng, query_json), mods in groups.items():
        query = json.loads(query_json)
        colls = [config.collection(m) for m in mods]
        if batch is not None and len(set(colls)) > 1:
            found = batch(colls, geom, rng, query)
            for m, c in zip(mods, colls):
                out[m] = list(found.get(c, []))
        else:
            for m, c in zip(mods, colls):
                out[m] = source.search(c, geom, rng, query)
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
    request = MatchRequest(config.modalities, period, band_subset=config.band_subset)
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


def number_rows(
    samples: Iterable[tuple[str, str]], config: PlanConfig
) -> dict[str, tuple[str, int]]:
    """(sample id, cell id) of every kept sample -> (split, row): splits by cell block,
    rows per split in sample-id order. Needs every kept sample of the plan, so it runs once
    on the driver after the blocks (cheap: ids only)."""
    pairs = list(samples)
    splits = assign_splits((c for _, c in pairs), config)
    by_split: dict[str, list[str]] = defaultdict(list)
    for sid, cell in pairs:
        by_split[splits[cell]].append(sid)
    out: dict[str, tuple[str, int]] = {}
    for split in SPLITS:
        for i, sid in enumerate(sorted(by_split.get(split, []))):
            out[sid] = (split, i)
    return out


def kept(row: Mapping[str, Any], config: PlanConfig) -> bool:
    """Whether a planned row stays in the plan (``keep_unmatched`` or fully matched)."""
    return config.keep_unmatched or not row["unmatched"]


def finalize_plan(rows: Sequence[dict[str, Any]], config: PlanConfig) -> pa.Table:
    """Assign splits (by cell block) and per-split rows (by sample id); build the table."""
    rows = [r for r in rows if kept(r, config)]
    numbers = number_rows(((r["sample_id"], r["cell_id"]) for r in rows), config)
    out = [
        {**r, "split": numbers[r["sample_id"]][0], "row": numbers[r["sample_id"]][1]} for r in rows
    ]
    out.sort(key=lambda r: (SPLITS.index(r["split"]), r["row"]))
    return from_rows("plan", out)


def plan_block_rows(
    source: Source,
    region: Region,
    block: PlanBlock,
    time_range: TimeRange,
    config: PlanConfig,
    unavailable: Mapping[str, str] | None = None,
    progress: tqdm | None = None,
) -> list[dict[str, Any]]:
    """Plan one block: its samples' rows (split and row not yet assigned). The unit of work
    of both planners."""
    samples = block_samples(region, block, config.samples_per_cell)
    if not samples:
        return []
    unavailable = unavailable or {}
    items = search_block(source, samples, time_range, config, skip=unavailable)
    return [
        plan_row(m) for m in match_block(samples, items, time_range, config, progress, unavailable)
    ]


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
    blocks = region_blocks(region, config)
    unavailable = unavailable_modalities(source, config)
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(blocks), desc="plan", unit="block", disable=not progress) as bar:
        for block in blocks:
            rows.extend(plan_block_rows(source, region, block, time_range, config, unavailable))
            bar.update(1)
    table = finalize_plan(rows, config)
    # where this source's hrefs may point: the build's href policy reads it back
    scope = scope_metadata(source_scope(source))
    scope.update(plan_request_metadata(config.modalities, config.band_subset))  # the build follows
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **scope})


def write_plan(table: pa.Table, path: str | os.PathLike[str] | Location) -> Path | Location:
    """Write ``plan.parquet`` (GeoParquet, atomically: tmp + rename locally, one PUT on an
    object store) so ``schemas.tables.read_table`` reads it; ``path`` is any location.
    Returns the local ``Path`` of a local plan (what callers and tests join paths to),
    else the ``Location``."""
    loc = Location.parse(path)
    write_geoparquet("plan", table, loc)
    return loc.local_path if loc.is_local else loc


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


def report_path(plan_path: str | os.PathLike[str] | Location) -> Location:
    """``plan.parquet`` -> ``plan_report.json`` beside it (``x.parquet`` -> ``x_report.json``)."""
    p = Location.parse(plan_path)
    stem = p.name[: -len(".parquet")] if p.name.lower().endswith(".parquet") else p.name
    return p.parent / f"{stem}_report.json"


def write_plan_report(report: PlanReport, plan_path: str | os.PathLike[str] | Location) -> Location:
    """Write the report beside the plan, atomically (tmp file + rename; one PUT remotely)."""
    from terraloom.pipeline.corpus_writer import write_bytes_atomic

    path = report_path(plan_path)
    write_bytes_atomic(path, (json.dumps(report.to_dict(), indent=1) + "\n").encode())
    return path


__all__ = [
    "PLAN_SCHEMA",
    "SOURCE_MODALITIES",
    "PlanBlock",
    "PlanConfig",
    "PlanSummary",
    "assign_splits",
    "block_samples",
    "finalize_plan",
    "kept",
    "match_block",
    "number_rows",
    "plan_block_rows",
    "plan_blocks",
    "region_blocks",
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
