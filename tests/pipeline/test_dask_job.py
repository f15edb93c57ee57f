"""Engines agree: Dask (LocalCluster, 2 worker processes) writes the same arrays and index
rows as the reference build on Beam's DirectRunner, and reports the same counts. (Beam's
multi-processing mode writes part of the store in the SIGKILL test of test_build.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask
import xarray as xr
from build_support import build_cmd

from terraloom.pipeline.build import run_build
from terraloom.pipeline.dask_job import NANNY_ENV_OVERRIDES
from terraloom.pipeline.verify import array_digests
from terraloom.schemas.tables import read_table


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = read_table("index", path).to_pylist()
    return sorted(rows, key=lambda r: (r["split"], r["row"]))  # order-independent compare


def test_dask_agrees_with_the_beam_reference(
    tiny_plan: tuple[Path, Any], tiny_reference: dict[str, Any], tmp_path: Path
) -> None:
    plan, config = tiny_plan
    shard = tiny_reference["shard_samples"]
    want_index = sorted(tiny_reference["index"], key=lambda r: (r["split"], r["row"]))
    environ = dict(os.environ)
    for engine in ("dask",):
        out = tmp_path / engine
        summary = run_build(
            plan, out, engine=engine, workers=2, config=config, shard_samples=shard, progress=False
        )
        # the nanny's pre-spawn variables must not leak into this process (and so into
        # the worker processes of a later Beam build or process pool)
        assert dict(os.environ) == environ
        assert summary.blocks_run == tiny_reference["n_blocks"]
        assert summary.counters["samples_accepted"] == tiny_reference["accepted"], engine
        assert summary.counters.get("samples_rejected", 0) == tiny_reference["rejected"], engine
        assert summary.counters["blocks_written"] == tiny_reference["n_blocks"], engine
        assert array_digests(out) == tiny_reference["digests"], engine
        assert _rows(out / "index.parquet") == want_index, engine
        assert (
            read_table("rejects", out / "rejects.parquet").to_pylist() == tiny_reference["rejects"]
        ), engine


def test_reference_corpus_opens_with_xarray_and_geopandas(tiny_reference: dict[str, Any]) -> None:
    import geopandas as gpd

    out = tiny_reference["out"]
    index = gpd.read_parquet(out / "index.parquet")
    assert index.crs is not None and index.crs == "OGC:CRS84"
    assert len(index) == tiny_reference["accepted"] and index.geometry.is_valid.all()
    split = index["split"].iloc[0]
    ds = xr.open_zarr(out / f"{split}.zarr", consolidated=False)
    rows = index.loc[index["split"] == split, "row"].to_numpy()
    assert bool(ds["valid"].isel(sample=rows).all())
    assert ds["S2L2A"].dims == ("sample", "s2l2a_band", "y", "x")
    assert int(ds["S2L2A"].isel(sample=int(rows[0])).max()) > 0
    # the index's centre agrees with the stored GEO vector of the same row
    geo = ds["GEO"].isel(sample=int(rows[0])).values
    first = index[index["split"] == split].iloc[0]
    assert abs(geo[0] - first["center_lat"]) < 1e-6 and abs(geo[1] - first["center_lon"]) < 1e-6


def test_workers_keep_glibc_malloc_trimming_default() -> None:
    """MALLOC_TRIM_THRESHOLD_=65536 (Dask's default) doubles the build's CPU per sample."""
    from distributed.nanny import _get_env_variables

    key = "distributed.nanny.pre-spawn-environ"
    assert "MALLOC_TRIM_THRESHOLD_" in _get_env_variables(key) or (
        "MALLOC_TRIM_THRESHOLD_" in os.environ
    )  # the default this override exists for
    with dask.config.set(NANNY_ENV_OVERRIDES):
        env = _get_env_variables(key)
    assert "MALLOC_TRIM_THRESHOLD_" not in env or "MALLOC_TRIM_THRESHOLD_" in os.environ
    assert env.get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS", "1")


def _spawn(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)


def test_a_cluster_of_separate_processes_builds_into_s3(
    small_plan: Path, small_reference: dict[str, Any], s3_bucket: str, tmp_path: Path
) -> None:
    """Issue 19: a real distributed run. ``dask scheduler`` and two ``dask worker``
    processes, started separately on 127.0.0.1, each in its own working and local
    directory (no shared scratch), with a bounded lifetime; the build is given
    ``--scheduler tcp://...`` and writes to the S3 endpoint. Both workers take blocks, and
    the arrays and index rows equal the local build's."""
    import json
    import time

    from distributed import Client

    from tests.pipeline.conftest import SMALL_SHARD_SAMPLES, same_corpus

    dask_bin = Path(sys.executable).with_name("dask")
    sched_file = tmp_path / "scheduler" / "scheduler.json"
    procs = [
        _spawn(
            [
                str(dask_bin),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
                "--idle-timeout",
                "600s",
            ],
            tmp_path / "scheduler",
            tmp_path / "scheduler.log",
        )
    ]
    try:
        deadline = time.monotonic() + 120
        while not sched_file.exists():
            assert time.monotonic() < deadline and procs[0].poll() is None, (
                tmp_path / "scheduler.log"
            ).read_text()
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole; give the listener a moment
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(2):
            wd = tmp_path / f"worker-{i}"
            procs.append(
                _spawn(
                    [
                        str(dask_bin),
                        "worker",
                        address,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                        "--local-directory",
                        str(wd / "scratch"),
                        "--lifetime",
                        "600s",
                        "--name",
                        f"w{i}",
                    ],
                    wd,
                    tmp_path / f"worker-{i}.log",
                )
            )
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            dirs = {w["local_directory"] for w in client.scheduler_info()["workers"].values()}
        assert len(dirs) == 2 and all(str(tmp_path / "worker-") in d for d in dirs)
        out = f"{s3_bucket}/corpus"
        small = ["--shard-samples", str(SMALL_SHARD_SAMPLES), "--no-progress"]
        run = subprocess.run(
            [*build_cmd(small_plan, out, "--engine", "dask", "--scheduler", address), *small],
            cwd=tmp_path / "scheduler",
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "engine: dask (2 workers)" in run.stdout
        same_corpus(out, small_reference)
        # both workers ran blocks (no shared disk: each wrote straight to S3)
        with Client(address, timeout="60s") as client:
            ran = client.run(lambda dask_worker: dask_worker.state.executed_count)
        assert len(ran) == 2 and all(n > 0 for n in ran.values()), ran
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert not any(tmp_path.rglob("s3:")), "a local s3: folder was created"
