"""Planning as a distributed job: the same plan row for row as the single-process planner
(world preset and the synthetic global STAC API), resumable after SIGKILL, never faster than
the configured request rate (checked on the server's log)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from terraloom.pipeline.cli import main
from terraloom.pipeline.grid import Region
from terraloom.pipeline.hrefs import PLAN_SCOPE_KEY
from terraloom.pipeline.plan import PlanConfig, plan_samples, region_blocks
from terraloom.pipeline.plan_engines import EngineConfig, SourceSpec, plan_dataset
from terraloom.pipeline.plan_store import BLOCKS_DIR, COMMIT_FILE, read_plan
from terraloom.pipeline.sources import open_source, parse_time_range
from terraloom.pipeline.sources.stac_api import StacApiSource
from terraloom.pipeline.world.generate import cached_world
from terraloom.pipeline.world.stac_server import (
    ServerConfig,
    SyntheticStacApi,
    max_requests_in_window,
)

WORLD_CONFIG = PlanConfig(samples_per_cell=9)
#: a subset of the synthetic global API: 2 x 1 degrees in the Alps, 4 blocks of 0.5 degrees
API_REGION = Region.from_bbox(10.0, 45.0, 12.0, 46.0)
API_PERIOD = parse_time_range("2023-06-01/2023-06-30")
API_CONFIG = PlanConfig(block_deg=0.5, val_fraction=0.2)


def _searched_blocks(out: Path) -> int:
    """Committed blocks that asked the API (blocks without samples commit at once)."""
    n = 0
    for p in (out / BLOCKS_DIR).glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            n += json.loads(p.read_text())["searches"] > 0
    return n


def _rows(table):
    return table.to_pylist()


@pytest.fixture(scope="module")
def world():
    w = cached_world("tiny", 0)
    opened = open_source(f"world:{w}")
    single = plan_samples(opened.source, opened.region, opened.time_range, WORLD_CONFIG)
    return w, opened, single


@pytest.mark.parametrize("engine", ["beam", "dask"])
def test_world_plan_on_an_engine_equals_the_single_process_plan(world, tmp_path, engine) -> None:
    w, opened, single = world
    result = plan_dataset(
        SourceSpec(f"world:{w}"),
        opened.region,
        opened.time_range,
        tmp_path / "plan",
        WORLD_CONFIG,
        EngineConfig(engine, workers=2),
    )
    assert result.planned == result.blocks >= 2 and single.num_rows > 0
    assert _rows(result.table) == _rows(single)
    assert _rows(read_plan(tmp_path / "plan")) == _rows(single)
    key = PLAN_SCOPE_KEY  # where the build's href policy may read
    assert read_plan(tmp_path / "plan").schema.metadata[key] == single.schema.metadata[key]
    parts = sorted(p.name for p in (tmp_path / "plan").glob("part-*.parquet"))
    assert len(parts) == result.blocks  # one file per block
    # a second run of the committed job plans nothing
    again = plan_dataset(
        SourceSpec(f"world:{w}"), opened.region, opened.time_range, tmp_path / "plan",
        WORLD_CONFIG, EngineConfig(engine, workers=2),
    )  # fmt: skip
    assert again.planned == 0 and _rows(again.table) == _rows(single)


def test_api_subset_on_dask_equals_the_single_process_plan_within_the_rate(tmp_path) -> None:
    rate = 10.0
    with SyntheticStacApi(ServerConfig(lifetime_s=300)) as api:
        src = StacApiSource(api.url, cache_dir=tmp_path / "c1", limit=500)
        single = plan_samples(src, API_REGION, API_PERIOD, API_CONFIG)
        n_single = len(api.log)
        n_single_searches = sum(e.path == "/search" for e in api.log)
        result = plan_dataset(
            SourceSpec(f"stac:{api.url}", cache_dir=str(tmp_path / "c2"), page_size=500),
            API_REGION,
            API_PERIOD,
            tmp_path / "plan",
            API_CONFIG,
            EngineConfig("dask", workers=2, rate_limit=rate),
        )
        log = api.log[n_single:]
    assert single.num_rows == len(API_REGION.samples()) > 100
    assert _rows(result.table) == _rows(single)
    assert len(region_blocks(API_REGION, API_CONFIG)) == result.blocks >= 8
    # searches are batched: S2 L1C+L2A and S1 GRD+RTC are one search each per block
    searches = [e for e in log if e.path == "/search"]
    assert {e.collections for e in searches} == {
        ("sentinel-2-l1c", "sentinel-2-l2a"), ("sentinel-1-grd", "sentinel-1-rtc"),
        ("cop-dem-glo-30",), ("io-lulc-9-class",),
    }  # fmt: skip
    # the same searches as the single-process planner: 4 per block with samples
    assert len(searches) == n_single_searches == 4 * 8
    # never faster than the rate: 2 workers x (rate / 2), burst 1 each, +1 arrival jitter
    times = [e.t for e in log]
    assert all(e.status == 200 for e in log)
    for window in (1.0, 2.0, 4.0):
        assert max_requests_in_window(times, window) <= rate * window + 2 + 1, window


def test_a_killed_plan_resumes_per_block(tmp_path) -> None:
    """SIGKILL the planning process mid-way; the re-run plans only the blocks that were not
    committed (asks the API only for those, no response cache) and gives the same plan."""
    out = tmp_path / "plan"
    with SyntheticStacApi(ServerConfig(latency_s=0.15, lifetime_s=300)) as api:
        args = ["plan", "--source", f"stac:{api.url}", "--region", "10,45,12,46",
                "--time", "2023-06-01/2023-06-30", "--set", "block_deg=0.5",
                "--val-fraction", "0.2", "--out", str(out), "--no-cache",
                "--page-size", "500", "--no-progress"]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "terraloom.pipeline", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            for _ in range(1200):  # bounded: 120 s
                if _searched_blocks(out) >= 2 or proc.poll() is not None:
                    break
                time.sleep(0.1)
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(30)
        assert not (out / COMMIT_FILE).exists()
        markers = [json.loads(p.read_text()) for p in (out / BLOCKS_DIR).glob("*.json")]
        asked_before = sum(e.path == "/search" for e in api.log)
        assert 2 <= len(markers) < len(region_blocks(API_REGION, API_CONFIG))
        assert main(args) == 0
        asked_after = sum(e.path == "/search" for e in api.log) - asked_before
        src = StacApiSource(api.url, cache_dir=tmp_path / "c", limit=500)
        single = plan_samples(src, API_REGION, API_PERIOD, API_CONFIG)
        asked_single = sum(e.path == "/search" for e in api.log) - asked_before - asked_after
    assert _rows(read_plan(out)) == _rows(single)
    # the committed blocks were not searched again (one page per search here)
    assert sum(m["searches"] for m in markers) >= 8  # two blocks with samples, 4 each
    # (+1: a request the killed process had sent may reach the server's log only later)
    owed = asked_single - sum(m["searches"] for m in markers)
    assert owed <= asked_after <= owed + 1
