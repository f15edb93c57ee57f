"""A build resumes: after a SIGKILL at random points (local disk and S3, every engine), after
a full disk, and over committed blocks or tables damaged after the fact; a finished build
re-run writes nothing.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from build_support import (
    ROOT,
    build_args,
    build_cmd,
    kill_build_at,
    small_build_cmd,
    source_env,
    synthetic_plan,
)

from terraloom.pipeline.build import (
    pending_blocks,
    run_build,
)
from terraloom.pipeline.cli import main as cli_main
from terraloom.pipeline.corpus_writer import BlockKey, marker_path
from terraloom.pipeline.verify import array_digests
from terraloom.schemas.tables import read_table

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
    args = build_args(
        plan,
        out,
        "--shard-samples",
        str(shard),
        "--no-progress",
        *tiny_reference["cli_config_args"],
    )
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
        cmd = build_cmd(plan, out, "--engine", engine, "--workers", workers)
        cmd += ["--shard-samples", shard, "--no-progress", *tiny_reference["cli_config_args"]]
        proc = subprocess.Popen(
            cmd,
            env=source_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        kill_build_at(proc, lambda: _count_markers(out), target, delay)
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
            small_build_cmd(small_plan, out, engine, workers),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        kill_build_at(proc, lambda: len(committed_blocks(loc, "train")), target, delay)
        left = n_blocks - len(committed_blocks(loc, "train"))
        assert 0 < left < before, f"kill after {target} markers left {left} of {before}"
        assert not (loc / "index.parquet").exists()
        before = left
    assert not (tmp_path / "s3:").exists()
    done = subprocess.run(
        small_build_cmd(small_plan, out, "beam", "1"),
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


# --------------------------------------------------------------------------- disk full


def test_disk_full_is_one_line_and_the_rerun_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15.10: ENOSPC while writing block 2 of 3 -> exit 1 with one line saying the
    output is resumable; the re-run writes only what was not committed and equals a build
    that never failed."""
    import terraloom.pipeline.block as block

    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 10})
    args = ["--shard-samples", "4", "--no-progress", "--modalities", "S2L2A,DEM"]
    args += ["--required", "S2L2A"]
    real_write = block.write_block
    calls = {"n": 0}

    def full_disk(group: Any, block: Any, out: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
        return real_write(group, block, out)

    monkeypatch.setattr(block, "write_block", full_disk)
    out = tmp_path / "corpus"
    assert cli_main(build_args(plan, out, *args)) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "no space left" in err and "resumable" in err and "1 of 3 blocks committed" in err
    monkeypatch.setattr(block, "write_block", real_write)
    assert cli_main(build_args(plan, out, *args)) == 1  # a synthetic plan: every sample rejected
    assert "2 written now, 1 already committed" in capsys.readouterr().out
    clean = tmp_path / "clean"
    assert cli_main(build_args(plan, clean, *args)) == 1
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
    args = build_args(
        tiny_plan[0], out, "--no-progress", "--shard-samples", str(ref["shard_samples"])
    )
    args += [*ref["cli_config_args"], *extra]
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
