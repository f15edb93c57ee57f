"""Build orchestration: prepare and its validation, the CLI's bad input, optional modalities
that fail, and what a new user hits (a default build, schedulers, scripts, Beam's noise).

Resume after a kill or damage is in ``test_build_resume``; one writer per output, credentials
and object-store outputs in ``test_build_outputs``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest
from build_support import (
    CFG,
    build_args,
    build_cmd,
    synthetic_plan,
)

from terraloom.pipeline.build import (
    BuildInputError,
    all_blocks,
    frozen_plan_path,
    prepare,
    read_plan_block,
    run_build,
)
from terraloom.pipeline.cli import main as cli_main
from terraloom.pipeline.corpus_writer import BlockKey
from terraloom.pipeline.sample import BuildConfig
from terraloom.schemas.tables import from_rows, read_table, write_geoparquet


def test_prepare_freezes_plan_in_row_groups_of_whole_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import terraloom.pipeline.build_prepare as build_prepare

    monkeypatch.setattr(build_prepare, "PLAN_ROWS_PER_GROUP", 8)  # 2 blocks of 4 per row group
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 10, "val": 3})
    out = tmp_path / "corpus"
    manifest = prepare(plan, out, CFG, shard_samples=4)
    assert manifest["splits"] == {
        "train": {"n_samples": 10, "n_blocks": 3, "row_group_offset": 0},
        "val": {"n_samples": 3, "n_blocks": 1, "row_group_offset": 2},
    }
    assert manifest["stores_ready"] is True
    assert pa.parquet.ParquetFile(frozen_plan_path(out)).metadata.num_row_groups == 3
    assert [str(k) for k in all_blocks(manifest)] == [
        "train/block-0",
        "train/block-1",
        "train/block-2",
        "val/block-0",
    ]
    for k, rows in [(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7]), (2, [8, 9])]:
        got = read_plan_block(out, BlockKey("train", k), manifest)
        assert [(r["split"], r["row"], r["sample_id"]) for r in got] == [
            ("train", r, f"train-{r:04d}") for r in rows
        ]
    assert [r["row"] for r in read_plan_block(out, BlockKey("val", 0), manifest)] == [0, 1, 2]
    with pytest.raises(ValueError, match="not a block"):
        read_plan_block(out, BlockKey("val", 1), manifest)
    assert (out / "train.zarr" / "zarr.json").exists() and (out / "val.zarr" / "zarr.json").exists()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    prepare(plan, out, CFG, shard_samples=4)  # idempotent: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("plan", "different plan_sha256"),
        ("shard", "different shard_samples"),
        ("config", "different config"),
    ],
)
def test_prepare_refuses_a_different_plan_or_config(
    tmp_path: Path, change: str, match: str
) -> None:
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 6})
    out = tmp_path / "corpus"
    prepare(plan, out, CFG, shard_samples=4)
    shard, cfg = 4, CFG
    if change == "plan":
        synthetic_plan(plan, {"train": 6}, shuffle=False)
    elif change == "shard":
        shard = 2
    else:
        cfg = BuildConfig(modalities=("S2L2A", "DEM"), required=("S2L2A",), max_cloud_fraction=0.5)
    with pytest.raises(BuildInputError, match=match):
        prepare(plan, out, cfg, shard_samples=shard)


def test_prepare_recovers_from_a_killed_prepare_and_refuses_foreign_dirs(tmp_path: Path) -> None:
    import json
    import shutil

    from terraloom.pipeline.build import manifest_path
    from terraloom.schemas.layouts import validate_corpus

    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 6})
    out = tmp_path / "corpus"
    prepare(plan, out, CFG, shard_samples=4)
    # killed while creating the stores: manifest says not ready, a store lacks an array
    m = json.loads(manifest_path(out).read_text())
    manifest_path(out).write_text(json.dumps({**m, "stores_ready": False}))
    shutil.rmtree(out / "train.zarr" / "DEM")
    assert validate_corpus(out / "train.zarr")
    assert prepare(plan, out, CFG, shard_samples=4)["stores_ready"] is True
    assert validate_corpus(out / "train.zarr") == []
    foreign = tmp_path / "foreign"
    (foreign / "train.zarr").mkdir(parents=True)
    with pytest.raises(BuildInputError, match="not empty"):
        prepare(plan, foreign, CFG, shard_samples=4)
    assert (foreign / "train.zarr").exists()  # nothing of the user's is touched


def test_prepare_rejects_bad_plans(tmp_path: Path) -> None:
    with pytest.raises(BuildInputError, match="does not exist"):
        prepare(tmp_path / "missing.parquet", tmp_path / "a", CFG)
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 5})
    table = read_table("plan", plan)
    rows = table.to_pylist()
    rows[0]["row"] = 7  # a gap: rows must be exactly 0..n-1
    write_geoparquet("plan", from_rows("plan", rows), tmp_path / "gap.parquet")
    with pytest.raises(BuildInputError, match="not exactly 0..4"):
        prepare(tmp_path / "gap.parquet", tmp_path / "b", CFG)
    rows = table.to_pylist()
    rows[1]["sample_id"] = rows[0]["sample_id"]
    write_geoparquet("plan", from_rows("plan", rows), tmp_path / "dup.parquet")
    with pytest.raises(BuildInputError, match="duplicate sample ids"):
        prepare(tmp_path / "dup.parquet", tmp_path / "c", CFG)
    pa.parquet.write_table(pa.table({"x": [1]}), tmp_path / "junk.parquet")
    with pytest.raises(BuildInputError, match="not a valid plan"):
        prepare(tmp_path / "junk.parquet", tmp_path / "d", CFG)


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(build_args(tmp_path / "nope.parquet", tmp_path / "c", "--no-progress")) == 2
    assert "does not exist" in capsys.readouterr().err
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 2})
    assert cli_main(build_args(plan, tmp_path / "c", "--modalities", "S2L2A,BOGUS")) == 2
    assert "BOGUS" in capsys.readouterr().err
    assert cli_main(build_args(plan, tmp_path / "c", "--engine", "dask", "--", "--project=x")) == 2
    assert "beam only" in capsys.readouterr().err


def test_optional_modalities_that_fail_are_counted_in_the_summary_and_counters(
    tiny_plan: tuple[Path, Any], tmp_path: Path
) -> None:
    """Issue 15 item 6: a truncated optional S1RTC COG is recorded per sample in the index
    (``missing_modalities``), counted in the engine counters and in the build summary."""
    import pyarrow.compute as pc
    import rasterio

    from terraloom.pipeline.hrefs import HrefPolicy
    from terraloom.pipeline.readers import gdal_path

    table = pa.parquet.read_table(tiny_plan[0])  # keeps the plan's own metadata
    split = table.column("split")[0].as_py()
    table = table.filter(pc.and_(pc.equal(table["split"], split), pc.less(table["row"], 4)))
    rows = table.to_pylist()
    truncated: dict[str, str] = {}
    for row in rows:
        for sc in row["scenes"]:
            for a in sc["assets"]:
                if sc["modality"] == "S1RTC" and a["band"] == "VV":
                    if a["href"] not in truncated:
                        src = Path(gdal_path(a["href"]))
                        with rasterio.open(src) as ds:  # cut inside the first image tile
                            cut = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1)) + 16
                        dst = src.with_name(f"{src.stem}-truncated-{tmp_path.name}.tif")
                        dst.write_bytes(src.read_bytes()[:cut])
                        truncated[a["href"]] = dst.as_uri()
                    a["href"] = truncated[a["href"]]
    assert len(rows) == 4 and truncated
    plan = tmp_path / "plan.parquet"
    pa.parquet.write_table(pa.Table.from_pylist(rows, schema=table.schema), plan)
    world = Path(gdal_path(next(iter(truncated)))).parents[2]  # <world>/<collection>/<item>/
    cfg = BuildConfig(
        http_timeout_s=2, http_max_retry=0, href_policy=HrefPolicy(roots=(str(world),))
    )
    summary = run_build(
        plan, tmp_path / "out", engine="beam", config=cfg, shard_samples=4, progress=False
    )
    index = read_table("index", tmp_path / "out" / "index.parquet").to_pylist()
    lost = [e for r in index for e in r["missing_modalities"] if e["modality"] == "S1RTC"]
    assert index and len(lost) == len(index)  # every accepted sample lost S1RTC, and says so
    assert {e["reason"] for e in lost} == {"unreadable_asset"}
    assert summary.counters["missing_S1RTC_unreadable_asset"] == len(index)
    assert summary.missing[split]["S1RTC"] == {"unreadable_asset": len(index)}
    assert (
        f"{split}: {len(index)} accepted samples without S1RTC (unreadable_asset {len(index)})"
        in summary.table()
    )
    # a finished build re-run reports the same counts from its final record
    again = run_build(
        plan, tmp_path / "out", engine="beam", config=cfg, shard_samples=4, progress=False
    )
    assert again.missing == summary.missing


# --------------------------------------------------------------------------- what a new user hits


def test_a_default_build_follows_what_the_plan_planned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17.1: plan S2L2A alone, then a default CLI build: the samples are built with
    S2L2A required (not all rejected `S1GRD: required but not planned`); a build whose
    every sample is rejected exits 1 with the reject table."""
    import shutil

    from terraloom.pipeline.plan import PlanConfig, plan_samples, write_plan
    from terraloom.pipeline.sources import open_source
    from terraloom.pipeline.world.generate import cached_world

    world = tmp_path / "world"
    shutil.copytree(cached_world("tiny", 0), world)
    opened = open_source(f"world:{world}")
    assert opened.region is not None and opened.time_range is not None
    table = plan_samples(
        opened.source, opened.region, opened.time_range, PlanConfig(modalities=("S2L2A",))
    )
    plan = write_plan(table, tmp_path / "plan.parquet")
    out = tmp_path / "corpus"
    assert cli_main(build_args(plan, out, "--no-progress")) == 0
    manifest = json.loads((out / "_build" / "manifest.json").read_text())
    assert manifest["config"]["required"] == ["S2L2A"]
    assert "S1GRD" not in manifest["modalities"] and "NDVI" in manifest["modalities"]
    rejects = read_table("rejects", out / "rejects.parquet").to_pylist()
    assert not [r for r in rejects if "not planned" in r["message"]]
    assert read_table("index", out / "index.parquet").num_rows > 0
    # flags override the plan: S1GRD required although not planned -> every sample rejected
    capsys.readouterr()
    args = build_args(plan, tmp_path / "s1", "--no-progress", "--modalities", "S2L2A,S1GRD")
    assert cli_main([*args, "--required", "S1GRD"]) == 1
    table_out = capsys.readouterr().out
    assert "no_match" in table_out and "no sample accepted" in table_out


def test_a_bad_scheduler_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17.4: an unreachable --scheduler fails before the output is created."""
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 2})
    out = tmp_path / "corpus"
    args = build_args(plan, out, "--engine", "dask", "--scheduler", "tcp://127.0.0.1:1")
    assert cli_main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:1" in err
    assert not out.exists()


_UNGUARDED = """
from terraloom.pipeline.build import run_build
from terraloom.pipeline.sample import BuildConfig

run_build({plan!r}, {out!r}, engine="dask", config=BuildConfig(), progress=False)
"""

_GUARDED = """
from terraloom.pipeline.build import run_build

if __name__ == "__main__":
    run_build({plan!r}, {out!r}, engine="dask", progress=False)
"""


def test_an_unguarded_dask_script_fails_before_writing(tmp_path: Path) -> None:
    """Issue 17.5: a script that builds with the Dask engine at its top level would be run
    again by every spawned worker; the build refuses before creating the output and says
    what to add. The guarded script gets past the check (and fails on its missing plan)."""
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 2})
    out = tmp_path / "corpus"
    script = tmp_path / "build_it.py"
    script.write_text(_UNGUARDED.format(plan=str(plan), out=str(out)))
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode != 0
    assert 'if __name__ == "__main__":' in run.stderr and "build_it.py:5" in run.stderr
    assert "Nanny" not in run.stderr and not out.exists()
    script.write_text(_GUARDED.format(plan=str(tmp_path / "absent.parquet"), out=str(out)))
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode != 0 and "absent.parquet does not exist" in run.stderr
    assert "__main__" not in run.stderr.splitlines()[-1]


def test_beam_is_quiet_and_the_summary_counts_pass_through_workers(tmp_path: Path) -> None:
    """Issue 17.6: importing Beam logs nothing; the summary reports the parallelism of
    a pass-through --direct_num_workers."""
    code = "import terraloom.pipeline.beam"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 4})
    summary = run_build(
        plan,
        tmp_path / "corpus",
        engine="beam",
        config=CFG,
        shard_samples=2,
        progress=False,
        pipeline_args=("--direct_num_workers=2",),
    )
    assert summary.workers == 2 and "(2 workers)" in summary.table()


def test_beam_runner_warnings_are_quiet_unless_verbose(tmp_path: Path) -> None:
    """Issue 17.6: Beam's runner warnings (semi_persistent_directory, job-service echoes of
    worker logs) stay out of a build's output unless ``--verbose``. The two start-up lines
    each Beam worker process prints before any option reaches it remain (docs/pipeline.md)."""
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 4})
    errs = {}
    for flag in ("", "--verbose"):
        out = tmp_path / f"corpus{flag}"
        argv = build_cmd(plan, out, "--engine", "beam", "--modalities", "S2L2A,DEM")
        argv += ["--required", "S2L2A", "--shard-samples", "2", "--no-progress"]
        argv += [*([flag] if flag else []), "--", "--direct_num_workers=2"]
        argv += ["--direct_running_mode=multi_processing"]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 1, run.stderr[-2000:]  # grid-only plan: every sample rejected
        errs[flag] = run.stderr
    assert "semi_persistent_directory" not in errs[""]
    assert "local_job_service" not in errs[""]
    assert "semi_persistent_directory" in errs["--verbose"]
