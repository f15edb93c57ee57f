"""Build orchestration: prepare/validate, resume, re-run no-op, CLI, SIGKILL resume."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest
import shapely

from terraloom.pipeline.build import (
    BuildInputError,
    all_blocks,
    frozen_plan_path,
    pending_blocks,
    prepare,
    read_plan_block,
    run_build,
)
from terraloom.pipeline.cli import main as cli_main
from terraloom.pipeline.corpus_writer import BlockKey, marker_path
from terraloom.pipeline.sample import BuildConfig
from terraloom.pipeline.verify import array_digests
from terraloom.schemas.tables import from_rows, read_table, write_geoparquet

ROOT = Path(__file__).resolve().parents[2]


def synthetic_plan(path: Path, rows_per_split: dict[str, int], shuffle: bool = True) -> Path:
    """A PLAN_SCHEMA table of grid-only rows (no scenes): enough for prepare()."""
    rows = []
    for split, n in rows_per_split.items():
        for r in range(n):
            lon = 10.0 + 0.03 * r
            rows.append(
                {
                    "sample_id": f"{split}-{r:04d}",
                    "split": split,
                    "row": r,
                    "cell_id": "1U_1R",
                    "geometry": shapely.to_wkb(shapely.box(lon, 45.0, lon + 0.02, 45.02)),
                    "center_lon": lon + 0.01,
                    "center_lat": 45.01,
                    "epsg": 32632,
                    "transform": [10.0, 0.0, 500000.0 + 2640 * r, 0.0, -10.0, 5000000.0],
                    "width": 264,
                    "height": 264,
                    "scenes": [],
                    "unmatched": [],
                }
            )
    if shuffle:
        random.Random(0).shuffle(rows)
    write_geoparquet("plan", from_rows("plan", rows), path)
    return path


CFG = BuildConfig(modalities=("S2L2A", "DEM"), required=("S2L2A",))


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
    assert (
        cli_main(
            [
                "build",
                "--plan",
                str(tmp_path / "nope.parquet"),
                "--out",
                str(tmp_path / "c"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 2})
    assert (
        cli_main(
            [
                "build",
                "--plan",
                str(plan),
                "--out",
                str(tmp_path / "c"),
                "--modalities",
                "S2L2A,BOGUS",
            ]
        )
        == 2
    )
    assert "BOGUS" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "build",
                "--plan",
                str(plan),
                "--out",
                str(tmp_path / "c"),
                "--engine",
                "dask",
                "--",
                "--project=x",
            ]
        )
        == 2
    )
    assert "beam only" in capsys.readouterr().err


# --------------------------------------------------------------------------- on the tiny world


def _files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_cli_build_rerun_noop_and_resume_of_a_damaged_block(
    tiny_plan: tuple[Path, Any],
    tiny_reference: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """CLI build == reference; a re-run writes nothing; a block with data but no marker
    (killed mid-write) is rewritten whole on resume."""
    import zarr

    plan, _ = tiny_plan
    out = tmp_path / "corpus"
    shard = tiny_reference["shard_samples"]
    args = [
        "build",
        "--plan",
        str(plan),
        "--out",
        str(out),
        "--shard-samples",
        str(shard),
        "--no-progress",
        *tiny_reference["cli_config_args"],
    ]
    assert cli_main(args) == 0
    table = capsys.readouterr().out
    assert "planned" in table and f"{tiny_reference['n_blocks']} written now" in table
    assert array_digests(out) == tiny_reference["digests"]
    assert read_table("index", out / "index.parquet").to_pylist() == tiny_reference["index"]
    before = _files(out)
    assert cli_main(args) == 0
    assert "0 written now" in capsys.readouterr().out
    assert _files(out) == before  # a finished build re-run writes nothing

    victim = BlockKey(*tiny_reference["first_block"])
    g = zarr.open_group(str(out / f"{victim.split}.zarr"), mode="r+")
    a = victim.block * shard
    g["S2L2A"][a : a + 1] = 1234  # a half-written shard ...
    g["valid"][a : a + shard] = True
    marker_path(out, victim).delete()  # ... that was never committed
    assert pending_blocks(out) == [victim]
    assert cli_main(args) == 0
    assert "1 written now" in capsys.readouterr().out
    assert array_digests(out) == tiny_reference["digests"]
    assert read_table("index", out / "index.parquet").to_pylist() == tiny_reference["index"]


def _count_markers(out: Path) -> int:
    return len(list((out / "_parts").glob("*/block-*.done"))) if (out / "_parts").exists() else 0


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(
    tiny_plan: tuple[Path, Any], tiny_reference: dict[str, Any], tmp_path: Path
) -> None:
    """One output, killed three times at random points: each build (driver and every engine
    worker it started: Beam multi-processing, Dask LocalCluster, in-process Beam) gets a real
    SIGKILL once k commit markers exist plus a random delay (so mid-block too); the next run
    resumes. The final store must equal the uninterrupted reference, and every killed run
    must have left work behind."""
    plan, config = tiny_plan
    n_blocks = tiny_reference["n_blocks"]
    assert n_blocks >= 5
    rng = random.Random(1234)
    kill_points = sorted(rng.sample(range(1, n_blocks - 1), 3))
    shard = str(tiny_reference["shard_samples"])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = tmp_path / "corpus"
    runs = [
        ("beam", "2"),
        ("dask", "2"),
        ("beam", "1"),
    ]  # multi-processing, LocalCluster, in-process
    for (engine, workers), kill_after in zip(runs, kill_points):
        delay = rng.uniform(0.0, 0.15)
        before = (
            len(pending_blocks(out)) if (out / "_build" / "manifest.json").exists() else n_blocks
        )
        target = min(max(kill_after, n_blocks - before + 1), n_blocks - 1)  # >= 1 new commit
        cmd = [
            sys.executable,
            "-m",
            "terraloom.pipeline",
            "build",
            "--plan",
            str(plan),
            "--out",
            str(out),
            "--engine",
            engine,
            "--workers",
            workers,
            "--shard-samples",
            shard,
            "--no-progress",
            *tiny_reference["cli_config_args"],
        ]
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while proc.poll() is None and _count_markers(out) < target:
                time.sleep(0.02)
            time.sleep(delay)
            assert proc.poll() is None, f"{engine} x{workers} finished before the kill"
            os.killpg(proc.pid, signal.SIGKILL)  # the build and every worker it started
        finally:
            proc.wait()
        left = len(pending_blocks(out))
        assert 0 < left < before, (
            f"kill after {target} markers + {delay:.2f} s left {left} of {before} blocks"
        )
        assert not (out / "index.parquet").exists()
    summary = run_build(
        plan, out, engine="beam", config=config, shard_samples=int(shard), progress=False
    )
    assert summary.blocks_run == left and summary.blocks_skipped == n_blocks - left
    assert array_digests(out) == tiny_reference["digests"], f"kill points {kill_points}"
    assert read_table("index", out / "index.parquet").to_pylist() == tiny_reference["index"]
    assert read_table("rejects", out / "rejects.parquet").to_pylist() == tiny_reference["rejects"]


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


# --------------------------------------------------------------------------- one build per output


_GATED_BUILD = """
import os, sys, time
sys.path.insert(0, {root!r})
from terraloom.pipeline import sample
from terraloom.pipeline.build import run_build
from terraloom.pipeline.sample import BuildConfig, build_block

def gated(rows, config):
    open({started!r}, "w").close()
    deadline = time.time() + 60
    while not os.path.exists({go!r}) and time.time() < deadline:
        time.sleep(0.02)
    return build_block(rows, config)

sample.build_block = gated  # the in-process DirectRunner's workers look it up at run time
cfg = BuildConfig(modalities=("S2L2A", "DEM"), required=("S2L2A",))
run_build({plan!r}, {out!r}, engine="beam", config=cfg, shard_samples=4, progress=False)
"""


def _cli_build(plan: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "terraloom.pipeline",
        "build",
        "--plan",
        str(plan),
        "--out",
        str(out),
    ]
    cmd += ["--shard-samples", "4", "--modalities", "S2L2A,DEM", "--required", "S2L2A"]
    cmd += ["--no-progress", *extra]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_second_build_on_a_busy_output_refuses_with_one_line(tmp_path: Path) -> None:
    """Issue 15.4: two real build processes on one fresh output, different configs. The
    second one refuses (exit 2, one line, no traceback) while the first holds the lease;
    the manifest and the rejects carry the first one's config only."""
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 6})
    out = tmp_path / "corpus"
    started, go = tmp_path / "started", tmp_path / "go"
    code = _GATED_BUILD.format(
        root=str(ROOT), started=str(started), go=str(go), plan=str(plan), out=str(out)
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while not started.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the first build never reached its blocks"
        second = _cli_build(plan, out, "--max-cloud-fraction", "0.5")
        assert second.returncode == 2, second.stderr
        err = second.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert "another build is running" in err and f"pid {first.pid}" in err
    finally:
        go.touch()
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    manifest = json.loads((out / "_build" / "manifest.json").read_text())
    assert manifest["config"]["max_cloud_fraction"] == CFG.max_cloud_fraction
    assert not (out / "_build" / "lease.json").exists()  # released
    # now free, the second build's config clashes: still one line, exit 2
    again = _cli_build(plan, out, "--max-cloud-fraction", "0.5")
    assert again.returncode == 2 and "max_cloud_fraction: 0.2 -> 0.5" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    # and the same config resumes: a no-op on the finished output
    same = _cli_build(plan, out)
    assert same.returncode == 1, same.stderr  # grid-only rows: all rejected, exit 1
    assert "0 written now" in same.stdout


# --------------------------------------------------------------------------- secrets


SECRETS = ("Bearer sekrit-bearer-token-1", "sekrit-aws-key-2")


def _secret_config(**kw: Any) -> BuildConfig:
    return BuildConfig(
        modalities=("S2L2A", "DEM"),
        required=("S2L2A",),
        gdal_options=(
            ("GDAL_HTTP_HEADERS", f"Authorization: {SECRETS[0]}"),
            ("GS_SECRET_ACCESS_KEY", SECRETS[1]),  # rasterio.Env refuses AWS_* keys
            ("GDAL_HTTP_TIMEOUT", "33"),
        ),
        **kw,
    )


def test_credentials_never_reach_a_file_or_a_message(tmp_path: Path) -> None:
    """Issue 15.8: secrets in gdal_options are not in any file of the output (manifest
    included), nor in the config-clash error, which still names what differs; a resume
    whose only change is a rotated secret is the same build."""
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 6})
    out = tmp_path / "corpus"
    run_build(plan, out, engine="beam", config=_secret_config(), shard_samples=4, progress=False)
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in SECRETS), path
    cfg = json.loads((out / "_build" / "manifest.json").read_text())["config"]
    assert ["GDAL_HTTP_HEADERS", "<redacted>"] in cfg["gdal_options"]
    assert ["GS_SECRET_ACCESS_KEY", "<redacted>"] in cfg["gdal_options"]
    assert ["GDAL_HTTP_TIMEOUT", "33"] in cfg["gdal_options"]
    with pytest.raises(BuildInputError) as err:
        prepare(plan, out, _secret_config(max_cloud_fraction=0.5), shard_samples=4)
    msg = str(err.value)
    assert not any(s in msg for s in SECRETS), msg
    assert "max_cloud_fraction: 0.2 -> 0.5" in msg and "\n" not in msg
    rotated = dataclasses.replace(
        _secret_config(),
        gdal_options=(("GDAL_HTTP_HEADERS", "Authorization: Bearer new"),)
        + _secret_config().gdal_options[1:],
    )
    prepare(plan, out, rotated, shard_samples=4)  # same job: accepted
    other = dataclasses.replace(_secret_config(), gdal_options=_secret_config().gdal_options[:2])
    with pytest.raises(BuildInputError, match="GDAL_HTTP_TIMEOUT"):
        prepare(plan, out, other, shard_samples=4)  # a real setting changed: refused


# --------------------------------------------------------------------------- disk full


def test_disk_full_is_one_line_and_the_rerun_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15.10: ENOSPC while writing block 2 of 3 -> exit 1 with one line saying the
    output is resumable; the re-run writes only what was not committed and equals a build
    that never failed."""
    import terraloom.pipeline.block as block

    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 10})
    args = ["build", "--plan", str(plan), "--shard-samples", "4", "--no-progress"]
    args += ["--modalities", "S2L2A,DEM", "--required", "S2L2A"]
    real_write = block.write_block
    calls = {"n": 0}

    def full_disk(group: Any, block: Any, out: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
        return real_write(group, block, out)

    monkeypatch.setattr(block, "write_block", full_disk)
    out = tmp_path / "corpus"
    assert cli_main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "no space left" in err and "resumable" in err and "1 of 3 blocks committed" in err
    monkeypatch.setattr(block, "write_block", real_write)
    assert cli_main([*args, "--out", str(out)]) == 1  # a synthetic plan: every sample rejected
    assert "2 written now, 1 already committed" in capsys.readouterr().out
    clean = tmp_path / "clean"
    assert cli_main([*args, "--out", str(clean)]) == 1
    for name in ("index", "rejects"):
        got = read_table(name, out / f"{name}.parquet").to_pylist()
        assert got == read_table(name, clean / f"{name}.parquet").to_pylist()
    assert array_digests(out) == array_digests(clean)


# --------------------------------------------------------------------------- resume checks


@pytest.fixture()
def built(tiny_reference: dict[str, Any], tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "corpus"
    shutil.copytree(tiny_reference["out"], out)
    return out


def _first_accepted_block(ref: dict[str, Any]) -> BlockKey:
    first = ref["index"][0]
    return BlockKey(first["split"], first["row"] // ref["shard_samples"])


def _shard(out: Path, key: BlockKey, array: str) -> Path:
    top = out / f"{key.split}.zarr" / array / "c" / str(key.block)
    return top if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())[0]


def _resume(tiny_plan: tuple[Path, Any], ref: dict[str, Any], out: Path, *extra: str) -> str:
    args = ["build", "--plan", str(tiny_plan[0]), "--out", str(out), "--no-progress"]
    args += ["--shard-samples", str(ref["shard_samples"]), *ref["cli_config_args"], *extra]
    assert cli_main(args) == 0
    return ""


def _assert_like_reference(out: Path, ref: dict[str, Any]) -> None:
    from terraloom.pipeline.verify import verify_corpus

    assert array_digests(out) == ref["digests"]
    assert read_table("index", out / "index.parquet").to_pylist() == ref["index"]
    assert read_table("rejects", out / "rejects.parquet").to_pylist() == ref["rejects"]
    report = verify_corpus(out)
    assert report.ok, report.findings


@pytest.mark.parametrize(
    "damage", ["deleted_shard", "truncated_shard", "truncated_part", "damaged_marker"]
)
def test_resume_redoes_a_committed_block_that_fails_its_cheap_check(
    built: Path,
    tiny_plan: tuple[Path, Any],
    tiny_reference: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    """Issues 15.5 and 15.9: under a commit marker, a deleted or truncated shard, a
    truncated table part or a damaged marker is found by the resume's cheap check (sizes
    recorded in the marker), the block redone and the summary says so."""
    key = _first_accepted_block(tiny_reference)
    if damage == "deleted_shard":
        _shard(built, key, "S2L2A").unlink()
    elif damage == "truncated_shard":
        p = _shard(built, key, "DEM")
        p.write_bytes(p.read_bytes()[:-100])
    elif damage == "truncated_part":
        p = built / "_parts" / key.split / f"block-{key.block}.index.parquet"
        p.write_bytes(p.read_bytes()[:-50])
    else:
        marker_path(built, key).write_text('{"format": "terraloom-block-co')
    capsys.readouterr()
    _resume(tiny_plan, tiny_reference, built)
    table = capsys.readouterr().out
    assert "1 written now" in table, table
    assert f"redone: 1 committed blocks failed their check: {key}" in table, table
    _assert_like_reference(built, tiny_reference)


def test_verify_committed_redoes_a_flipped_shard_the_cheap_check_cannot_see(
    built: Path,
    tiny_plan: tuple[Path, Any],
    tiny_reference: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = _first_accepted_block(tiny_reference)
    p = _shard(built, key, "S2L2A")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))
    capsys.readouterr()
    _resume(tiny_plan, tiny_reference, built)
    assert "0 written now" in capsys.readouterr().out  # same size: the cheap check passes
    _resume(tiny_plan, tiny_reference, built, "--verify-committed")
    table = capsys.readouterr().out
    assert "1 written now" in table and f"{key}: array 'S2L2A'" in table, table
    _assert_like_reference(built, tiny_reference)


@pytest.mark.parametrize("table", ["index", "rejects"])
def test_a_finished_build_with_a_damaged_table_merges_it_again(
    built: Path,
    tiny_plan: tuple[Path, Any],
    tiny_reference: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    table: str,
) -> None:
    """Issue 15.5: a truncated index.parquet (or rejects) of a finished build is noticed by
    the re-run (row count and size recorded in final.json) and merged again from the parts."""
    p = built / f"{table}.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    capsys.readouterr()
    _resume(tiny_plan, tiny_reference, built)
    out = capsys.readouterr().out
    assert "0 written now" in out and f"index/rejects merged again: {table}.parquet" in out, out
    _assert_like_reference(built, tiny_reference)


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
    assert cli_main(["build", "--plan", str(plan), "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "_build" / "manifest.json").read_text())
    assert manifest["config"]["required"] == ["S2L2A"]
    assert "S1GRD" not in manifest["modalities"] and "NDVI" in manifest["modalities"]
    rejects = read_table("rejects", out / "rejects.parquet").to_pylist()
    assert not [r for r in rejects if "not planned" in r["message"]]
    assert read_table("index", out / "index.parquet").num_rows > 0
    # flags override the plan: S1GRD required although not planned -> every sample rejected
    capsys.readouterr()
    args = ["build", "--plan", str(plan), "--out", str(tmp_path / "s1"), "--no-progress"]
    assert cli_main([*args, "--modalities", "S2L2A,S1GRD", "--required", "S1GRD"]) == 1
    table_out = capsys.readouterr().out
    assert "no_match" in table_out and "no sample accepted" in table_out


def test_a_bad_scheduler_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17.4: an unreachable --scheduler fails before the output is created."""
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 2})
    out = tmp_path / "corpus"
    args = ["build", "--plan", str(plan), "--out", str(out), "--engine", "dask"]
    assert cli_main([*args, "--scheduler", "tcp://127.0.0.1:1", "--no-progress"]) == 2
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


# --------------------------------------------------------------------------- object stores


def _objects(out: str) -> dict[str, bytes]:
    from terraloom.storage import Location

    loc = Location.parse(out)
    return {rel: (loc / rel).read_bytes() for rel in loc.walk_files()}


def test_a_memory_build_equals_the_local_one_and_its_rerun_writes_nothing(
    small_plan: Path, small_reference: dict[str, Any], memory_root: str
) -> None:
    """Every output of a build (stores, parts, markers, manifest, frozen plan, tables)
    goes through the storage layer: a build into ``memory://`` is the local build, byte for
    byte, and re-running it finds every block committed and changes no object."""
    from tests.pipeline.conftest import SMALL_SHARD_SAMPLES, same_corpus

    out = f"{memory_root}/corpus"
    run_build(small_plan, out, engine="beam", shard_samples=SMALL_SHARD_SAMPLES, progress=False)
    same_corpus(out, small_reference)
    names = set(_objects(out))
    assert {"_build/manifest.json", "_build/plan.parquet", "_build/final.json"} <= names
    assert "_build/lease.json" not in names  # released
    before = _objects(out)
    again = run_build(
        small_plan, out, engine="beam", shard_samples=SMALL_SHARD_SAMPLES, progress=False
    )
    assert again.blocks_run == 0 and again.blocks_skipped == small_reference["n_blocks"]
    assert _objects(out) == before


def _s3_build_cmd(plan: Path, out: str, engine: str, workers: str, *extra: str) -> list[str]:
    from tests.pipeline.conftest import SMALL_SHARD_SAMPLES

    return [
        sys.executable,
        "-m",
        "terraloom.pipeline",
        "build",
        "--plan",
        str(plan),
        "--out",
        out,
        "--engine",
        engine,
        "--workers",
        workers,
        "--shard-samples",
        str(SMALL_SHARD_SAMPLES),
        "--no-progress",
        *extra,
    ]


def test_sigkill_while_writing_to_s3_then_resume_equals_uninterrupted(
    small_plan: Path, small_reference: dict[str, Any], s3_bucket: str, tmp_path: Path
) -> None:
    """Issue 19: a build writing to a real S3 endpoint (moto on 127.0.0.1) gets SIGKILLed
    with its whole process group (driver and the engine's workers: Beam multi-processing,
    Dask LocalCluster, in-process Beam) at 3 random points: once k markers exist, plus a
    random delay (mid-block too). Each kill leaves work behind; the resume finishes it and
    the store equals the uninterrupted local build, with no lease left."""
    from terraloom.pipeline.corpus_writer import committed_blocks
    from terraloom.storage import Location
    from tests.pipeline.conftest import same_corpus

    n_blocks = small_reference["n_blocks"]
    rng = random.Random(19)
    kill_points = sorted(rng.sample(range(1, n_blocks - 1), 3))
    out = f"{s3_bucket}/corpus"
    loc = Location.parse(out)
    before = n_blocks
    for (engine, workers), kill_after in zip(
        [("beam", "2"), ("dask", "2"), ("beam", "1")], kill_points
    ):
        delay = rng.uniform(0.0, 0.15)
        target = min(max(kill_after, n_blocks - before + 1), n_blocks - 1)
        proc = subprocess.Popen(
            _s3_build_cmd(small_plan, out, engine, workers),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and len(committed_blocks(loc, "train")) < target:
                assert time.monotonic() < deadline, "the build made no progress"
                time.sleep(0.02)
            time.sleep(delay)
            assert proc.poll() is None, f"{engine} x{workers} finished before the kill"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        left = n_blocks - len(committed_blocks(loc, "train"))
        assert 0 < left < before, f"kill after {target} markers left {left} of {before}"
        assert not (loc / "index.parquet").exists()
        before = left
    assert not (tmp_path / "s3:").exists()
    done = subprocess.run(
        _s3_build_cmd(small_plan, out, "beam", "1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"{left} written now, {n_blocks - left} already committed" in done.stdout
    same_corpus(out, small_reference)
    assert not (loc / "_build/lease.json").exists()
    assert os.listdir(tmp_path) == []  # nothing written locally


def test_two_builds_started_at_once_into_one_s3_output_one_refuses(
    small_plan: Path, small_reference: dict[str, Any], s3_bucket: str, tmp_path: Path
) -> None:
    """Issue 19: two builds started at the same moment on one S3 output: the lease object
    (created with If-None-Match) lets exactly one run; the other exits 2 with one line
    naming the holder, and the store is the uninterrupted build's."""
    from tests.pipeline.conftest import same_corpus

    out = f"{s3_bucket}/corpus"
    procs = [
        subprocess.Popen(
            _s3_build_cmd(small_plan, out, "beam", "1"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-2000:]) for p, _, err in results]
    loser_err = next(err for p, _, err in results if p.returncode == 2).strip()
    assert len(loser_err.splitlines()) == 1 and "Traceback" not in loser_err, loser_err
    assert "another build is running" in loser_err and "lease.json" in loser_err
    winner = next(p for p, _, _ in results if p.returncode == 0)
    assert f"pid {winner.pid}" in loser_err
    same_corpus(out, small_reference)


def test_beam_runner_warnings_are_quiet_unless_verbose(tmp_path: Path) -> None:
    """Issue 17.6: Beam's runner warnings (semi_persistent_directory, job-service echoes of
    worker logs) stay out of a build's output unless ``--verbose``. The two start-up lines
    each Beam worker process prints before any option reaches it remain (docs/pipeline.md)."""
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 4})
    errs = {}
    for flag in ("", "--verbose"):
        out = tmp_path / f"corpus{flag}"
        argv = [sys.executable, "-m", "terraloom.pipeline", "build", "--plan", str(plan)]
        argv += ["--out", str(out), "--engine", "beam", "--modalities", "S2L2A,DEM"]
        argv += ["--required", "S2L2A", "--shard-samples", "2", "--no-progress"]
        argv += [*([flag] if flag else []), "--", "--direct_num_workers=2"]
        argv += ["--direct_running_mode=multi_processing"]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 1, run.stderr[-2000:]  # grid-only plan: every sample rejected
        errs[flag] = run.stderr
    assert "semi_persistent_directory" not in errs[""]
    assert "local_job_service" not in errs[""]
    assert "semi_persistent_directory" in errs["--verbose"]
