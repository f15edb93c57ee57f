"""Helpers of the build tests: a grid-only plan, the build's command line, and a SIGKILL of a
whole build (driver and engine workers) once it has committed some blocks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shapely

from terraloom.pipeline.sample import BuildConfig
from terraloom.schemas.tables import from_rows, write_geoparquet

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


def build_args(plan: object, out: object, *extra: str) -> list[str]:
    """``build --plan P --out O`` plus ``extra``: the CLI's arguments (in process)."""
    return ["build", "--plan", str(plan), "--out", str(out), *extra]


def build_cmd(plan: object, out: object, *extra: str) -> list[str]:
    """The same build as its own ``python -m terraloom.pipeline`` process."""
    return [sys.executable, "-m", "terraloom.pipeline", *build_args(plan, out, *extra)]


def small_build_cmd(plan: object, out: object, engine: str, workers: str) -> list[str]:
    """A build of the ``small_plan`` fixture (its shard size), quiet, by ``engine``."""
    from tests.pipeline.conftest import SMALL_SHARD_SAMPLES

    cmd = build_cmd(plan, out, "--engine", engine, "--workers", workers)
    return [*cmd, "--shard-samples", str(SMALL_SHARD_SAMPLES), "--no-progress"]


def source_env() -> dict[str, str]:
    """The environment of a build process that imports this source tree."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def kill_build_at(
    proc: subprocess.Popen[Any], committed: Callable[[], int], target: int, delay: float
) -> None:
    """SIGKILL a build started in its own session, with every worker it started (its process
    group), once ``committed()`` blocks reach ``target`` plus ``delay`` seconds (so mid-block
    too). The build must still be running then; one that makes no progress fails the test."""
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and committed() < target:
            assert time.monotonic() < deadline, "the build made no progress"
            time.sleep(0.02)
        time.sleep(delay)
        assert proc.poll() is None, f"the build finished before the kill ({proc.args})"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
