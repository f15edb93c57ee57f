"""Engines agree: Dask (LocalCluster, 2 worker processes) writes the same arrays and index
rows as the reference build on Beam's DirectRunner, and reports the same counts. (Beam's
multi-processing mode writes part of the store in the SIGKILL test of test_build.py.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask
import xarray as xr

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
