"""``terraloom-pipeline plan`` (pipeline/plan_cli.py): PlanConfig from a file, --set and flags;
the samples-per-cell default and the counts docs/world.md shows for it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import shapely
from shapely.geometry import box

from terraloom.pipeline.cli import build_parser, main
from terraloom.pipeline.grid import Region
from terraloom.pipeline.matching import MatchConfig
from terraloom.pipeline.plan import PlanConfig
from terraloom.pipeline.plan_cli import plan_config_from_args
from terraloom.pipeline.world.regions import PRESETS, region_specs

REPO = Path(__file__).resolve().parents[2]


def test_plan_flags_default_to_plan_config() -> None:
    args = build_parser().parse_args(["plan", "--source", "world:x", "--out", "p"])
    assert plan_config_from_args(args) == PlanConfig()
    assert "(default 1)" in " ".join(
        build_parser()._subparsers._group_actions[0].choices["plan"].format_help().split()  # type: ignore[union-attr]
    )


def test_plan_config_file_set_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "modalities: [S2L2A, DEM]\nsamples_per_cell: 4\nblock_deg: 0.5\n"
        "match: {max_cloud: 35, lulc_max_year_gap: 3}\ncollections: {LULC: io-lulc-annual-v02}\n"
    )
    base = ["plan", "--source", "world:x", "--out", "p", "--config", str(path)]
    cfg = plan_config_from_args(build_parser().parse_args([*base, "--set", "match.max_cloud=40"]))
    assert cfg.modalities == ("S2L2A", "DEM") and cfg.samples_per_cell == 4
    assert cfg.block_deg == 0.5 and cfg.collections == {"LULC": "io-lulc-annual-v02"}
    assert cfg.match == MatchConfig(max_cloud=40.0, lulc_max_year_gap=3)
    flags = ["--max-cloud", "10", "--samples-per-cell", "9", "--drop-unmatched"]
    cfg = plan_config_from_args(build_parser().parse_args([*base, *flags]))
    assert cfg.match.max_cloud == 10 and cfg.samples_per_cell == 9 and not cfg.keep_unmatched


def test_bad_plan_config_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.parquet"
    argv = ["plan", "--source", "world:x", "--out", str(out), "--set", "match.max_clouds=3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['max_clouds']" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_world_md_sample_counts_match_the_plan_default() -> None:
    """docs/world.md's preset table shows the samples `plan` gives by default (1 per cell)
    and with --samples-per-cell 9, as the plan counts them over the world's region."""
    text = (REPO / "docs" / "world.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| preset |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    col = cols.index("samples (default 1 / 9 per cell)")
    default = PlanConfig().samples_per_cell
    assert default == 1
    for name, preset in PRESETS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        shown = [c.strip() for c in row.strip("|").split("|")][col]
        one, nine = (int(n.replace(",", "")) for n in re.findall(r"[\d,]+", shown))
        region = Region(geometry=shapely.union_all([box(*s.bbox) for s in region_specs(preset)]))
        assert (one, nine) == (len(region.samples(default)), len(region.samples(9))), name


# --- band subsets chosen at plan time (issue 18.6) ----------------------------------------------

FOUR = ("B02", "B03", "B04", "B08")


def _four_band_catalog(root: Path) -> Path:
    """A static catalog of one S2 L2A item offering only B02, B03, B04 and B08 (local 60 m
    GeoTIFFs, smooth values, no SCL): the kind of catalog the planner used to reject for
    lacking B01, B05, ..."""
    import json

    import numpy as np
    from affine import Affine
    from sample_kit import centres_lonlat, write_raster

    epsg, res, n = 32633, 60.0, 400
    t = Affine(res, 0, 490_000, 0, -res, 5_052_000)
    lon, lat = centres_lonlat(epsg, t, n, n)
    assets = {}
    for i, b in enumerate(FOUR):
        vals = 2000 + 300 * i + 500 * np.sin(lon * 300.0 + i) * np.cos(lat * 200.0)
        href = write_raster(root / f"{b}.tif", vals.astype(np.uint16), crs=epsg, transform=t)
        assets[b] = {
            "href": f"./{Path(href).name}",
            "eo:bands": [{"name": b}],
            "raster:bands": [{"nodata": 0, "scale": 1e-4, "offset": -0.1}],
            "proj:transform": list(t)[:6],
            "proj:shape": [n, n],
        }
    w, s, e, nn = (float(v) for v in (lon.min(), lat.min(), lon.max(), lat.max()))
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "S2_FOUR",
        "collection": "sentinel-2-l2a",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, nn], [w, nn], [w, s]]],
        },
        "bbox": [w, s, e, nn],
        "properties": {
            "datetime": "2023-07-15T10:00:00Z",
            "proj:epsg": epsg,
            "s2:processing_baseline": "05.09",
            "eo:cloud_cover": 1.0,
        },
        "assets": assets,
        "links": [],
    }
    (root / "item.json").write_text(json.dumps(item))
    links = [
        {"rel": "root", "href": "./catalog.json"},
        {"rel": "item", "href": "./item.json"},
    ]
    cat = {"type": "Catalog", "id": "four", "stac_version": "1.0.0", "description": "4 bands"}
    (root / "catalog.json").write_text(json.dumps({**cat, "links": links}))
    return root / "catalog.json"


def test_plan_bands_plans_and_builds_a_four_band_corpus_from_the_cli(tmp_path: Path) -> None:
    import numpy as np
    import zarr

    from terraloom.pipeline.build_config import PLAN_BANDS_KEY
    from terraloom.schemas.modalities import get_modality
    from terraloom.schemas.tables import read_table

    cat = _four_band_catalog(tmp_path / "cat")
    from terraloom.pipeline.grid import GRID

    cell = str(GRID.cell_of(15.03, 45.5))  # well inside the item's 24 km square
    base = ["plan", "--source", f"catalog:{cat}", "--region", cell]
    base += ["--time", "2023-07-01/2023-07-31", "--modalities", "S2L2A", "--val-fraction", "0"]
    # without --bands: every item lacks B01, B05, ... and no sample is matched
    assert main([*base, "--out", str(tmp_path / "all.parquet"), "--no-progress"]) == 0
    assert all(read_table("plan", tmp_path / "all.parquet").column("unmatched").to_pylist())
    plan = tmp_path / "plan.parquet"
    bands = ["--bands", "S2L2A=B02,B03,B04,B08"]
    assert main([*base, *bands, "--out", str(plan), "--no-progress"]) == 0
    table = read_table("plan", plan)
    assert table.num_rows >= 1 and not any(table.column("unmatched").to_pylist())
    meta = __import__("pyarrow.parquet").parquet.read_schema(plan).metadata
    assert meta[PLAN_BANDS_KEY] == b'{"S2L2A": ["B02", "B03", "B04", "B08"]}'
    # the same from a config file
    (tmp_path / "plan.yaml").write_text("band_subset: {S2L2A: [B02, B03, B04, B08]}\n")
    again = tmp_path / "again.parquet"
    argv = [*base, "--config", str(tmp_path / "plan.yaml"), "--out", str(again), "--no-progress"]
    assert main(argv) == 0
    assert (
        read_table("plan", again).column("scenes").to_pylist() == table.column("scenes").to_pylist()
    )
    # the build follows the plan's bands: nothing to repeat
    corpus = tmp_path / "corpus"
    assert main(["build", "--plan", str(plan), "--out", str(corpus), "--no-progress"]) == 0
    index = read_table("index", corpus / "index.parquet")
    assert index.num_rows == table.num_rows
    group = zarr.open_group(str(corpus / "train.zarr"), mode="r")
    assert group.attrs["built_bands"]["S2L2A"] == list(FOUR)
    s2 = np.asarray(group["S2L2A"][0])
    names = get_modality("S2L2A").band_names
    for i, b in enumerate(names):
        assert (s2[i] > 0).all() if b in FOUR else (s2[i] == 0).all(), b
