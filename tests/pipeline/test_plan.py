"""Planning end to end: the real s2l2a_croatia catalog, splits, the writer and the CLI."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import rasterio
import shapely
from pyproj import Transformer
from shapely.geometry import box

from terraloom.pipeline.cli import main
from terraloom.pipeline.grid import GRID, CellId, Region, SampleGrid, footprint_in_cell
from terraloom.pipeline.matching import MatchConfig, MatchRequest, match_sample
from terraloom.pipeline.plan import (
    PlanConfig,
    assign_splits,
    plan_samples,
    summarize_plan,
    write_plan,
)
from terraloom.pipeline.sources.base import Search, Source, SourceItem, filter_items
from terraloom.pipeline.sources.static import StaticSource
from terraloom.schemas.modalities import SCL_CLOUD_SHADOW
from terraloom.schemas.tables import PLAN_SCHEMA, read_table
from tests.pipeline.sources.catalog_kit import MALFORMED, write_catalog

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
REAL = REPO.parent / "shared" / "real"
CROATIA = REAL / "s2l2a_croatia"
AUGUST = (datetime(2023, 8, 1, tzinfo=UTC), datetime(2023, 8, 31, 23, 59, 59, tzinfo=UTC))
S2_ONLY = PlanConfig(modalities=("S2L2A",), match=MatchConfig(max_cloud=100.0))

needs_real = pytest.mark.skipif(
    not CROATIA.is_dir(), reason="real fixtures not found at ../shared/real/s2l2a_croatia"
)


class ListSource(Source):
    """A source over items held in memory (here: real items with edited geometries)."""

    name = "list"

    def __init__(self, items: list[SourceItem]) -> None:
        self._items = items

    def _search(self, s: Search) -> list[SourceItem]:
        return filter_items(
            [it for it in self._items if it.collection == s.collection], s.geometry, s.time_range
        )


def brute_force_cloud(item: SourceItem, sample: SampleGrid) -> float:
    """Cloud % of an item's SCL over the footprint, counted on a 30 m lattice of points (the
    SCL files are 120 m, so every SCL pixel under the footprint is counted ~16 times)."""
    with rasterio.open(item.assets["SCL"].href) as ds:
        a = ds.read(1)
        x0, y0, x1, y1 = sample.bounds_utm
        xs, ys = np.meshgrid(np.arange(x0 + 15, x1, 30.0), np.arange(y1 - 15, y0, -30.0))
        tx, ty = Transformer.from_crs(sample.epsg, ds.crs.to_epsg(), always_xy=True).transform(
            xs, ys
        )
        inv = ~ds.transform
        cols, rows = inv @ (tx.ravel(), ty.ravel())
        rows = np.clip(np.floor(rows).astype(int), 0, a.shape[0] - 1)
        cols = np.clip(np.floor(cols).astype(int), 0, a.shape[1] - 1)
        v = a[rows, cols]
    v = v[v != 0]
    return 100.0 * float(np.isin(v, SCL_CLOUD_SHADOW).mean()) if v.size else float("nan")


@pytest.fixture(scope="module")
def croatia() -> StaticSource:
    if not CROATIA.is_dir():
        pytest.skip("real fixtures not found at ../shared/real/s2l2a_croatia")
    return StaticSource(CROATIA)


# Cells on 33TWL where the two dates differ in cloud over the footprint, both ways round,
# plus cells on 33TWM only and the TWL/TWM overlap, and one off the tiles.
CELLS = [
    "502U_118R",
    "502U_119R",
    "503U_125R",
    "509U_119R",
    "509U_120R",
    "513U_120R",
    "521U_121R",
    "480U_118R",
]


@pytest.fixture(scope="module")
def croatia_plan(croatia: StaticSource) -> pa.Table:
    cfg = dataclasses.replace(S2_ONLY, samples_per_cell=9)
    return plan_samples(croatia, Region.from_cells(CELLS), AUGUST, cfg)


@needs_real
def test_croatia_plan_uses_the_two_tiles_and_the_clearest_date(
    croatia: StaticSource, croatia_plan: pa.Table
) -> None:
    rows = croatia_plan.to_pylist()
    assert len(rows) == 9 * len(CELLS)
    items = {it.id: it for it in croatia.items()}
    twl15, twl20 = items["S2A_33TWL_20230815_0_L2A"], items["S2B_33TWL_20230820_0_L2A"]
    grids = {s.sample_id: s for s in Region.from_cells(CELLS).samples(9)}
    picked_by_cloud = 0
    for r in rows:
        s = grids[r["sample_id"]]
        assert r["epsg"] == 32633 and list(r["transform"]) == list(s.transform)
        assert shapely.from_wkb(r["geometry"]).equals_exact(s.footprint, 1e-9)
        if r["cell_id"] == "480U_118R":  # south of both tiles
            assert [u["reason"] for u in r["unmatched"]] == ["no_match"] and not r["scenes"]
            continue
        assert not r["unmatched"], r["unmatched"]
        (scene,) = r["scenes"]
        assert scene["item_id"][4:9] in ("33TWL", "33TWM")
        for a in scene["assets"]:
            assert a["href"].startswith(("file:///", "https://"))
        bands = {a["band"] for a in scene["assets"]}
        assert {"B04", "B11", "SCL"} <= bands  # remote bands are planned too; the build checks them
        on_twl = twl15.geometry.covers(s.footprint) and twl20.geometry.covers(s.footprint)
        if on_twl:
            c15, c20 = brute_force_cloud(twl15, s), brute_force_cloud(twl20, s)
            if abs(c15 - c20) > 2.0:
                expected_date = "20230815" if c15 < c20 else "20230820"
                assert expected_date in scene["item_id"], (
                    r["sample_id"],
                    c15,
                    c20,
                    scene["item_id"],
                )
                assert scene["cloud_cover"] == pytest.approx(min(c15, c20), abs=3.0)
                picked_by_cloud += 1
    # Both directions occur in these cells: 0820 clearer and 0815 clearer.
    chosen = [r["scenes"][0]["item_id"] for r in rows if r["scenes"]]
    assert picked_by_cloud >= 10
    assert any("TWL_20230820" in c for c in chosen) and any("TWL_20230815" in c for c in chosen)
    assert any("TWM" in c for c in chosen)


@needs_real
def test_footprint_across_a_tile_edge(croatia: StaticSource) -> None:
    items = {it.id: it for it in croatia.items()}
    twl, twm = items["S2A_33TWL_20230815_0_L2A"], items["S2A_33TWM_20230815_0_L2A"]
    # A footprint across 33TWL's northern data edge (46.05 N), inside 33TWM.
    tr = Transformer.from_crs(4326, 32633, always_xy=True)
    cx, cy = tr.transform(15.6, twl.geometry.bounds[3] - 0.001)
    s = SampleGrid(
        "edge",
        str(GRID.cell_of(15.6, 46.05)),
        0,
        0,
        32633,
        (10.0, 0.0, round(cx - 1320, -1), 0.0, -10.0, round(cy + 1320, -1)),
    )
    assert not twl.geometry.covers(s.footprint) and twm.geometry.covers(s.footprint)
    req = MatchRequest(("S2L2A",), AUGUST)
    m = match_sample(
        s, {"S2L2A": [twl, twm, items["S2B_33TWL_20230820_0_L2A"]]}, req, MatchConfig()
    )
    assert m.matches[0].acquisition.ids == ("S2A_33TWM_20230815_0_L2A",)  # only the item needed

    # The real tiles of that pass overlap by ~10 km, so no footprint needs both. Cut them at
    # 46.0 N (as non-overlapping tiles would be): a footprint across the cut lists both, and
    # its cloud cover mosaics both real SCL files.
    south = dataclasses.replace(twl, geometry=twl.geometry.intersection(box(14, 40, 17, 46.0)))
    north = dataclasses.replace(twm, geometry=twm.geometry.intersection(box(14, 46.0, 17, 48)))
    cx, cy = tr.transform(15.6, 46.0)
    s = SampleGrid(
        "cut",
        str(GRID.cell_of(15.6, 46.0)),
        0,
        0,
        32633,
        (10.0, 0.0, round(cx - 1320, -1), 0.0, -10.0, round(cy + 1320, -1)),
    )
    m = match_sample(s, {"S2L2A": [south, north]}, req, MatchConfig())
    acq = m.matches[0].acquisition
    assert acq is not None and acq.ids == ("S2A_33TWL_20230815_0_L2A", "S2A_33TWM_20230815_0_L2A")
    assert acq.cloud_source == "scl"

    # Through plan_samples: a sample straddling the cut lists both in plan.parquet.
    region = Region.from_cells([str(GRID.cell_of(15.6, 46.0))])
    table = plan_samples(
        ListSource([south, north]), region, AUGUST, dataclasses.replace(S2_ONLY, samples_per_cell=9)
    )
    spans = [r for r in table.to_pylist() if len(r["scenes"]) == 2]
    assert spans and all(
        {sc["item_id"][4:9] for sc in r["scenes"]} == {"33TWL", "33TWM"} for r in spans
    )


@needs_real
def test_plan_table_contract_and_determinism(
    croatia: StaticSource, croatia_plan: pa.Table, tmp_path: Path
) -> None:
    assert croatia_plan.schema.equals(PLAN_SCHEMA, check_metadata=False)
    path = write_plan(croatia_plan, tmp_path / "plan.parquet")
    back = read_table("plan", path)
    assert back.equals(croatia_plan)
    import geopandas as gpd

    gdf = gpd.read_parquet(path)
    assert gdf.crs == "OGC:CRS84" and len(gdf) == croatia_plan.num_rows  # lon/lat WGS 84
    # Splits: whole cells, rows 0..n-1 per split in sample-id order.
    rows = croatia_plan.to_pylist()
    by_split: dict[str, list[dict]] = {}
    for r in rows:
        by_split.setdefault(r["split"], []).append(r)
    cells = {k: {r["cell_id"] for r in v} for k, v in by_split.items()}
    assert set(by_split) <= {"train", "val", "test"} and "val" in by_split and "train" in by_split
    assert not cells["train"] & cells["val"]
    for v in by_split.values():
        assert [r["row"] for r in v] == list(range(len(v)))
        assert [r["sample_id"] for r in v] == sorted(r["sample_id"] for r in v)
    # A second run gives the same table, byte for byte in content.
    again = plan_samples(
        croatia, Region.from_cells(CELLS), AUGUST, dataclasses.replace(S2_ONLY, samples_per_cell=9)
    )
    assert again.equals(croatia_plan)
    s = summarize_plan(croatia_plan, ("S2L2A",))
    assert (
        s.samples == len(rows)
        and s.matched["S2L2A"] == len(rows) - 9
        and s.misses["S2L2A"] == {"no_match": 9}
    )
    assert "S2L2A" in s.format() and "no_match 9" in s.format()


def test_splits_are_spatial_stable_and_never_empty() -> None:
    cells = [str(CellId(r, c)) for r in range(500, 540) for c in range(100, 150)]
    cfg = PlanConfig(val_fraction=0.1, test_fraction=0.05, seed=3)
    splits = assign_splits(cells, cfg)
    frac = {k: sum(v == k for v in splits.values()) / len(cells) for k in ("train", "val", "test")}
    assert 0.08 < frac["val"] < 0.12 and 0.035 < frac["test"] < 0.065
    # A cell's split depends only on the seed and its block, not on the region.
    sub = assign_splits(cells[:500], cfg)
    assert all(splits[c] == sub[c] for c in sub)
    assert assign_splits(cells, dataclasses.replace(cfg, seed=4)) != splits
    # Blocks of 4 x 4 cells share a split.
    blocked = assign_splits(cells, dataclasses.replace(cfg, split_block_cells=4))
    for c in cells:
        cid = CellId.parse(c)
        buddy = str(CellId(cid.row - cid.row % 4, cid.col - cid.col % 4))
        assert blocked[c] == blocked[buddy]
    # A tiny region still gets a val cell.
    tiny = assign_splits(cells[:3], PlanConfig(val_fraction=0.1, seed=0))
    assert sorted(tiny.values()).count("val") == 1
    assert set(assign_splits(cells[:3], PlanConfig(val_fraction=0.0)).values()) == {"train"}


@needs_real
def test_cli_plan_writes_the_plan_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "plan.parquet"
    rc = main(["plan", "--source", f"catalog:{CROATIA}", "--region", "15.5,45.55,15.62,45.62", "--time", "2023-08-01/2023-08-31",
               "--modalities", "S2L2A,DEM", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    table = read_table("plan", out)
    printed = capsys.readouterr().out
    assert f"samples planned: {table.num_rows}" in printed
    assert "S2L2A" in printed and "100.0%" in printed and "DEM" in printed and "no_match" in printed
    for r in table.to_pylist():
        grid = SampleGrid(r["sample_id"], r["cell_id"], 0, 0, r["epsg"], tuple(r["transform"]))
        assert footprint_in_cell(grid)

    bad = [
        ["--source", "nope:x", "--region", "15,45,16,46", "--time", "2023-08-01/2023-08-31"],
        [
            "--source",
            f"catalog:{CROATIA}",
            "--region",
            "15,45,16",
            "--time",
            "2023-08-01/2023-08-31",
        ],
        ["--source", f"catalog:{CROATIA}", "--region", "15,45,16,46", "--time", "2023-08-31"],
        ["--source", f"catalog:{CROATIA}", "--time", "2023-08-01/2023-08-31"],
        [
            "--source",
            f"catalog:{CROATIA}",
            "--region",
            "15,45,16,46",
            "--time",
            "2023-08-01/2023-08-31",
            "--modalities",
            "S2RGB",
        ],
        [
            "--source",
            f"catalog:{tmp_path / 'missing'}",
            "--region",
            "15,45,16,46",
            "--time",
            "2023-08-01/2023-08-31",
        ],
        ["--source", "world:" + str(tmp_path)],
    ]
    for args in bad:
        assert main(["plan", *args, "--out", str(tmp_path / "x.parquet"), "--no-progress"]) == 2, (
            args
        )
        err = capsys.readouterr().err
        assert err.startswith("terraloom-pipeline plan: error:") and "Traceback" not in err

    # Earth Engine without credentials: a clear message, exit code 2.
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "EE_SERVICE_ACCOUNT_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert (
        main(
            [
                "plan",
                "--source",
                "ee",
                "--region",
                "15,45,16,46",
                "--time",
                "2023-08-01/2023-08-31",
                "--out",
                str(tmp_path / "e.parquet"),
            ]
        )
        == 2
    )
    assert "earthengine authenticate" in capsys.readouterr().err


def test_cli_plan_skips_malformed_catalog_items_and_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One bad item (not JSON, geometry null, assets a string) used to abort the whole plan
    with a traceback; now each is skipped, counted in the summary and listed in the report."""
    catalog = write_catalog(tmp_path / "cat")
    out = tmp_path / "out" / "plan.parquet"
    rc = main(["plan", "--source", f"catalog:{catalog}", "--region", "15.2,45.98,15.4,46.08",
               "--time", "2023-08-01/2023-08-31", "--modalities", "DEM", "--val-fraction", "0",
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "skipped malformed catalog items: 3 (bad_assets 1, bad_json 1, no_geometry 1)" in printed
    assert "plan_report.json" in printed
    report = json.loads((out.parent / "plan_report.json").read_text())
    assert report["samples"] == read_table("plan", out).num_rows > 0
    listed = {Path(s["location"]).name: s["reason"] for s in report["skipped"]}
    assert listed == {name: reason for name, (_, reason) in MALFORMED.items()}

    # A catalog that cannot be read at all is one line and exit code 2.
    (tmp_path / "cat" / "catalog.json").write_text('{"type": "Catalog", ')
    rc = main(["plan", "--source", f"catalog:{catalog}", "--region", "15.2,45.98,15.4,46.08",
               "--time", "2023-08-01/2023-08-31", "--out", str(tmp_path / "x.parquet")])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("terraloom-pipeline plan: error: cannot read STAC file")
    assert err.count("\n") == 1
