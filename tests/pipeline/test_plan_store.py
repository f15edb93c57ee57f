"""The partitioned plan dataset: parts + commit marker, read by the build like plan.parquet."""

from __future__ import annotations

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from terraloom.pipeline.build import BuildInputError, frozen_plan_path, prepare
from terraloom.pipeline.cli import main
from terraloom.pipeline.plan import PlanConfig, plan_samples, write_plan
from terraloom.pipeline.plan_engines import EngineConfig, SourceSpec, plan_dataset
from terraloom.pipeline.plan_store import (
    COMMIT_FILE,
    PlanStoreError,
    plan_fingerprint,
    read_plan,
)
from terraloom.pipeline.sample import BuildConfig
from terraloom.pipeline.sources import open_source
from terraloom.pipeline.world.generate import cached_world
from terraloom.schemas.tables import read_table

CONFIG = PlanConfig(samples_per_cell=4)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    w = cached_world("tiny", 0)
    opened = open_source(f"world:{w}")
    root = tmp_path_factory.mktemp("plans")
    result = plan_dataset(
        SourceSpec(f"world:{w}"), opened.region, opened.time_range, root / "plan", CONFIG,
        EngineConfig("local"),
    )  # fmt: skip
    single = plan_samples(opened.source, opened.region, opened.time_range, CONFIG)
    write_plan(single, root / "plan.parquet")
    return w, opened, root, result, single


def test_the_dataset_is_parts_and_a_commit_marker(planned) -> None:
    _, _, root, result, single = planned
    doc = json.loads((root / "plan" / COMMIT_FILE).read_text())
    assert doc["rows"] == single.num_rows == sum(p["rows"] for p in doc["parts"])
    for part in doc["parts"]:  # each part is a plan GeoParquet file on its own
        t = read_table("plan", root / "plan" / part["file"])
        assert t.num_rows == part["rows"]
        assert b"geo" in pq.read_schema(root / "plan" / part["file"]).metadata
    assert read_plan(root / "plan").to_pylist() == single.to_pylist()
    assert read_plan(root / "plan.parquet").to_pylist() == single.to_pylist()
    assert plan_fingerprint(root / "plan") == plan_fingerprint(root / "plan")


def test_build_reads_the_dataset_like_a_plan_file(planned, tmp_path) -> None:
    _, _, root, _, _ = planned
    cfg = BuildConfig(modalities=("S2L2A", "DEM"), required=("S2L2A",))
    from_dir = prepare(root / "plan", tmp_path / "a", cfg, shard_samples=4)
    from_file = prepare(root / "plan.parquet", tmp_path / "b", cfg, shard_samples=4)
    assert from_dir["splits"] == from_file["splits"]
    a = read_table("plan", frozen_plan_path(tmp_path / "a"))
    b = read_table("plan", frozen_plan_path(tmp_path / "b"))
    assert a.to_pylist() == b.to_pylist()


def test_an_uncommitted_or_foreign_plan_is_refused(planned, tmp_path) -> None:
    w, opened, root, _, _ = planned
    part = tmp_path / "half"
    part.mkdir()
    (part / "_job.json").write_text("{}")
    with pytest.raises(PlanStoreError, match="not committed"):
        read_plan(part)
    cfg = BuildConfig(modalities=("S2L2A",), required=("S2L2A",))
    with pytest.raises(BuildInputError, match="not committed"):
        prepare(part, tmp_path / "out", cfg, shard_samples=4)
    # another job into a directory holding a plan: refused, not mixed
    with pytest.raises(PlanStoreError, match="another job"):
        plan_dataset(
            SourceSpec(f"world:{w}"), opened.region, opened.time_range, root / "plan",
            dataclasses.replace(CONFIG, seed=1), EngineConfig("local"),
        )  # fmt: skip


def test_cli_engine_flags(planned, tmp_path, capsys) -> None:
    w, _, _, _, single = planned
    base = ["plan", "--source", f"world:{w}", "--samples-per-cell", "4", "--no-progress"]
    assert main([*base, "--engine", "dask", "--out", str(tmp_path / "p.parquet")]) == 2
    err = capsys.readouterr().err
    assert "writes a partitioned plan" in err and err.count("\n") == 1
    assert main([*base, "--out", str(tmp_path / "ds")]) == 0
    assert "blocks:" in capsys.readouterr().out
    assert read_plan(tmp_path / "ds").to_pylist() == single.to_pylist()
    assert (tmp_path / "ds_report.json").exists()
    assert (
        main([*base, "--engine", "beam", "--scheduler", "x:1", "--out", str(tmp_path / "e")]) == 2
    )
