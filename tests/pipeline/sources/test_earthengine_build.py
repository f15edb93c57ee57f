"""Earth Engine end to end, offline: the real ``ee`` client against a local stand-in.

``ee_kit.EeServer`` implements the REST endpoints the client calls and serves the tiny
synthetic world as Earth Engine would (harmonised S2 DN, S1 GRD in dB), on the grid each
request names. With it: ``plan --source ee`` -> build gives the arrays of the same samples
built from the world's STAC catalog (agreement measured per modality below), and the
quota rules (retries with backoff on 429/5xx, request splitting, bounded concurrency, a
final failure as an ``unreachable_asset`` reject) run against real HTTP answers. The
client authenticates the standard way (a service-account key in
``GOOGLE_APPLICATION_CREDENTIALS``, its token from the stand-in).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from terraloom.pipeline.build_config import BuildConfig
from terraloom.pipeline.build_prepare import scope_config
from terraloom.pipeline.ee_quota import EeRequestConfig, EeRequestError
from terraloom.pipeline.plan import PlanConfig, plan_samples, write_plan
from terraloom.pipeline.sample import build_block
from terraloom.pipeline.sources import open_source
from terraloom.pipeline.sources.earthengine import (
    EarthEngineSource,
    live_client,
    pixel_grid,
    read_pixels,
)
from terraloom.pipeline.world.generate import cached_world
from terraloom.schemas.modalities import EARTH_ENGINE
from terraloom.schemas.tables import RejectReason, read_table

from .ee_kit import EeServer, service_account_key

MODALITIES = ("S2L2A", "S1GRD", "DEM", "LULC")


@dataclass
class EeEnv:
    world: Path
    server: EeServer
    tmp: Path
    config: EeRequestConfig
    key: Path


@pytest.fixture(scope="module")
def ee_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EeEnv]:
    tmp = tmp_path_factory.mktemp("ee")
    world = tmp / "world"
    shutil.copytree(cached_world("tiny", 0), world)
    with EeServer(world) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp / "home"))  # no ~/.config/earthengine of the machine
        key = service_account_key(tmp, server.url)
        mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
        mp.delenv("EE_PROJECT", raising=False)
        cfg = EeRequestConfig(url=server.url, project="stand-in", backoff_s=0.0, max_retries=2)
        yield EeEnv(world, server, tmp, cfg, key)


@pytest.fixture(scope="module")
def plans(ee_env: EeEnv) -> dict[str, Path]:
    """The same region and period planned from Earth Engine and from the STAC catalog."""
    opened = open_source(f"world:{ee_env.world}")
    assert opened.region is not None and opened.time_range is not None
    cfg = PlanConfig(modalities=MODALITIES, samples_per_cell=1, val_fraction=0.0)
    ee = EarthEngineSource(project="stand-in", config=ee_env.config)
    return {
        "ee": write_plan(
            plan_samples(ee, opened.region, opened.time_range, cfg), ee_env.tmp / "ee.parquet"
        ),
        "stac": write_plan(
            plan_samples(opened.source, opened.region, opened.time_range, cfg),
            ee_env.tmp / "stac.parquet",
        ),
    }


@dataclass
class Target:
    """One planned sample's grid and the Earth Engine image of each of its modalities."""

    grid: dict[str, Any]
    images: dict[str, str]


@pytest.fixture(scope="module")
def target(plans: dict[str, Path]) -> Target:
    row = pq.read_table(plans["ee"]).to_pylist()[0]
    grid = pixel_grid(row["epsg"], row["transform"], row["width"], row["height"])
    return Target(grid, {s["modality"]: s["item_id"] for s in row["scenes"]})


def _agreement(a: np.ndarray, b: np.ndarray, classes: bool) -> dict[str, float]:
    ok = np.isfinite(a) & np.isfinite(b)
    if classes:
        return {"agree": float(np.mean(a[ok] == b[ok])), "n": float(ok.sum())}
    d = np.abs(a[ok] - b[ok])
    return {
        "mean": float(d.mean()),
        "p99": float(np.percentile(d, 99)),
        "max": float(d.max()),
        "n": float(ok.sum()),
    }


def test_plan_from_earth_engine_builds_the_stac_corpus(
    ee_env: EeEnv, plans: dict[str, Path], capsys: Any
) -> None:
    from terraloom.pipeline.build import run_build

    srv = ee_env.server
    srv.pixel_requests.clear()
    out = {k: ee_env.tmp / f"corpus-{k}" for k in plans}
    cfg = BuildConfig(earthengine=ee_env.config)
    summaries = {
        k: run_build(plans[k], out[k], engine="beam", config=cfg, shard_samples=4, progress=False)
        for k in plans
    }
    assert srv.pixel_requests and all(r["status"] == 200 for r in srv.pixel_requests)
    assert summaries["ee"].accepted == summaries["stac"].accepted == {"train": 4}
    assert read_table("rejects", out["ee"] / "rejects.parquet").num_rows == 0

    # compare the samples whose scenes are the same items in both plans
    scenes = {
        k: {
            r["sample_id"]: {
                s["modality"]: sorted(
                    s["item_id"].rsplit("/", 1)[-1] for s in r["scenes"] if s["modality"] == m
                )
                for s in r["scenes"]
                for m in [s["modality"]]
            }
            for r in pq.read_table(plans[k]).to_pylist()
        }
        for k in plans
    }
    stores = {k: zarr.open_group(str(out[k] / "train.zarr"), mode="r") for k in plans}
    ids = {k: [str(v) for v in stores[k]["sample_id"][:]] for k in plans}
    assert ids["ee"] == ids["stac"]
    figures: dict[str, dict[str, float]] = {}
    for m in (*MODALITIES, "NDVI"):
        src = m if m != "NDVI" else "S2L2A"
        rows = [
            i
            for i, sid in enumerate(ids["ee"])
            if scenes["ee"][sid].get(src) == scenes["stac"][sid].get(src)
        ]
        assert len(rows) >= 3, f"{m}: too few samples with the same scenes"
        a = np.asarray(stores["ee"][m][rows], np.float64)
        b = np.asarray(stores["stac"][m][rows], np.float64)
        figures[m] = {**_agreement(a, b, m == "LULC"), "samples": float(len(rows))}
    with capsys.disabled():
        print("\nEarth Engine vs STAC agreement:", json.dumps(figures))
    # within the resampling difference (GDAL's warp on the stand-in vs terraloom's own)
    assert figures["S2L2A"]["mean"] < 0.05 and figures["S2L2A"]["max"] <= 2  # DN, values ~2000
    assert figures["S1GRD"]["mean"] < 0.5 and figures["S1GRD"]["p99"] < 3  # dB
    assert figures["DEM"]["mean"] < 0.1 and figures["DEM"]["p99"] < 1  # m
    assert figures["LULC"]["agree"] > 0.99
    assert figures["NDVI"]["mean"] < 0.002

    # the corpus says where each modality came from; credentials are written nowhere
    attrs = dict(stores["ee"].attrs)
    assert attrs["modality_sources"] == {
        "DEM": ["earthengine:COPERNICUS/DEM/GLO30"],
        "LULC": ["earthengine:" + EARTH_ENGINE["io-lulc-9-class"].collection],
        "S1GRD": ["earthengine:COPERNICUS/S1_GRD"],
        "S2L2A": ["earthengine:COPERNICUS/S2_SR_HARMONIZED"],
    }
    assert dict(stores["stac"].attrs)["modality_sources"]["S1GRD"] == ["stac:sentinel-1-grd"]
    secret = json.loads(ee_env.key.read_text())["private_key"].splitlines()[1]
    for path in out["ee"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and b"stand-in-token" not in data, path
            assert str(ee_env.key).encode() not in data, path


def test_throttled_requests_are_retried_with_exponential_backoff(
    ee_env: EeEnv, target: Target
) -> None:
    srv = ee_env.server
    client = live_client(ee_env.config)
    conv = EARTH_ENGINE["sentinel-2-l2a"]
    image, GRID = target.images["S2L2A"], target.grid
    clean = read_pixels(client, image, conv, ["B04"], ["B4"], GRID, ee_env.config)
    assert np.isfinite(clean).mean() > 0.5
    cfg = replace(ee_env.config, backoff_s=0.25, backoff_max_s=0.6, max_retries=3)
    slept: list[float] = []
    srv.throttle = 3
    stats: dict[str, float] = {}
    got = read_pixels(
        client, image, conv, ["B04"], ["B4"], GRID, cfg, stats=stats, sleep=slept.append
    )
    assert slept == [0.25, 0.5, 0.6]  # doubled each time, capped
    assert stats == {"ee_requests": 4.0, "ee_retries": 3.0}
    np.testing.assert_array_equal(got, clean)
    # throttled beyond the retries: the request fails with Earth Engine's message
    srv.throttle = 4
    with pytest.raises(EeRequestError, match="HTTP 429: Too many concurrent aggregations") as err:
        read_pixels(client, image, conv, ["B04"], ["B4"], GRID, cfg, sleep=slept.append)
    assert err.value.attempts == 4 and srv.throttle == 0


def test_a_bad_request_is_not_retried(ee_env: EeEnv, target: Target) -> None:
    GRID = target.grid
    client = live_client(ee_env.config)
    conv = EARTH_ENGINE["sentinel-2-l2a"]
    n0 = len(ee_env.server.pixel_requests)
    with pytest.raises(EeRequestError, match="HTTP 400: .*not found") as err:
        read_pixels(
            client, "COPERNICUS/S2_SR_HARMONIZED/nope", conv, ["B04"], ["B4"], GRID, ee_env.config
        )
    assert err.value.attempts == 1 and len(ee_env.server.pixel_requests) == n0 + 1


def test_requests_are_split_under_the_byte_limit(ee_env: EeEnv, target: Target) -> None:
    srv = ee_env.server
    client = live_client(ee_env.config)
    conv = EARTH_ENGINE["sentinel-2-l2a"]
    image, GRID = target.images["S2L2A"], target.grid
    bands, keys = ["B02", "B03", "B04", "B08"], ["B2", "B3", "B4", "B8"]
    whole = read_pixels(client, image, conv, bands, keys, GRID, ee_env.config)
    limit = 264 * 100 * 8  # 100 rows of one band as float64
    n0 = len(srv.pixel_requests)
    split = read_pixels(
        client, image, conv, bands, keys, GRID, replace(ee_env.config, max_request_bytes=limit)
    )
    reqs = srv.pixel_requests[n0:]
    assert len(reqs) == 4 * 3  # one band per request, 3 strips of <= 100 rows
    assert all(r["width"] * r["height"] * len(r["bands"]) * 8 <= limit for r in reqs)
    np.testing.assert_array_equal(split, whole)


def test_concurrent_requests_per_worker_are_bounded(ee_env: EeEnv, target: Target) -> None:
    srv = ee_env.server
    client = live_client(ee_env.config)
    conv = EARTH_ENGINE["cop-dem-glo-30"]
    image, GRID = target.images["DEM"], target.grid
    cfg = replace(ee_env.config, max_concurrent=2)
    srv.delay_s, srv.max_in_flight = 0.3, 0
    try:
        with ThreadPoolExecutor(6) as pool:
            list(
                pool.map(
                    lambda _: read_pixels(client, image, conv, ["elevation"], ["DEM"], GRID, cfg),
                    range(6),
                )
            )
    finally:
        srv.delay_s = 0.0
    assert srv.max_in_flight == 2


def test_a_request_that_fails_for_good_is_an_unreachable_asset_reject(
    ee_env: EeEnv, plans: dict[str, Path]
) -> None:
    srv = ee_env.server
    rows = pq.read_table(plans["ee"]).to_pylist()
    s1 = {s["item_id"] for r in rows for s in r["scenes"] if s["modality"] == "S1GRD"}
    down = sorted(s1)[0]
    srv.fail_images[down] = (503, "The service is currently unavailable (stand-in outage).")
    try:
        n0 = len(srv.pixel_requests)
        cfg = BuildConfig(modalities=MODALITIES, earthengine=replace(ee_env.config, max_retries=1))
        results = build_block(rows, scope_config(cfg, plans["ee"]))  # ee:// as run_build allows
    finally:
        srv.fail_images.clear()
    hit = [r for r in rows if any(s["item_id"] == down for s in r["scenes"])]
    assert hit and len(hit) < len(rows)
    by_id = {r.sample_id: r for r in results}
    for r in rows:
        res = by_id[r["sample_id"]]
        if r in hit:
            assert res.reject is not None
            assert res.reject["reason"] == RejectReason.UNREACHABLE_ASSET.value
            assert (
                "Earth Engine: HTTP 503: The service is currently unavailable (stand-in outage)."
                in res.reject["message"]
            )
            assert "(after 2 attempts)" in res.reject["message"]
        else:
            assert res.accepted
    tries = [q for q in srv.pixel_requests[n0:] if down in q["ids"]]
    assert len(tries) == 2 * len(hit)  # one retry per sample, then the reject
