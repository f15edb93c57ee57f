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
