"""STAC API source against a local HTTP STAC API the test serves (paging, retries, cache)."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import pystac
import pytest

from terraloom.pipeline.cli import main
from terraloom.pipeline.grid import Region
from terraloom.pipeline.plan import PlanConfig, plan_samples
from terraloom.pipeline.sources import open_source
from terraloom.pipeline.sources.base import SourceError
from terraloom.pipeline.sources.stac_api import PLANETARY_COMPUTER, StacApiSource
from terraloom.pipeline.sources.static import StaticSource
from terraloom.pipeline.world.generate import cached_world
from terraloom.schemas.tables import read_table
from tests.pipeline.sources.catalog_kit import DEM, dem_item

PERIOD = (datetime(2023, 8, 1, tzinfo=UTC), datetime(2023, 8, 31, 23, 59, 59, tzinfo=UTC))
REGION = Region.from_bbox(15.2, 45.98, 15.4, 46.08)  # on both 33TWL and 33TWM
CONFIG = PlanConfig(modalities=("S2L2A",), val_fraction=0.0)
WORLD_CONFIG = PlanConfig(samples_per_cell=9)
TIF = "https://example.com/dem.tif"  # never read: planning a DEM reads no pixels


def api_items(real_dir) -> list[dict]:
    """The croatia catalog's items as an API serves them: absolute hrefs, collection set."""
    cat = pystac.read_file(str(real_dir / "s2l2a_croatia" / "catalog.json"))
    out = []
    for item in cat.get_items(recursive=True):
        item.make_asset_hrefs_absolute()
        d = item.to_dict(include_self_link=False)
        d["links"] = []
        out.append(d)
    return out


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_search_pages_and_matches_the_static_catalog(
    real_dir, stac_server_factory, tmp_path, method
) -> None:
    server = stac_server_factory(api_items(real_dir))
    src = StacApiSource(server.url, cache_dir=tmp_path, limit=1, method=method)
    items = src.search("sentinel-2-l2a", REGION.geometry, PERIOD)
    static = StaticSource(real_dir / "s2l2a_croatia").search(
        "sentinel-2-l2a", REGION.geometry, PERIOD
    )
    assert sorted(it.id for it in items) == sorted(it.id for it in static) and len(items) == 3
    assert server.searches == 3  # limit 1: one page per item, following `next` links
    by_id = {it.id: it for it in static}
    for it in items:  # same mapping whatever the transport
        assert dict(it.assets) == dict(by_id[it.id].assets)
    # A narrower time range is another request.
    src.search("sentinel-2-l2a", REGION.geometry, (PERIOD[0], datetime(2023, 8, 16, tzinfo=UTC)))
    assert server.searches == 5


def test_second_plan_is_answered_from_the_cache(real_dir, stac_server_factory, tmp_path) -> None:
    server = stac_server_factory(api_items(real_dir))
    first = StacApiSource(server.url, cache_dir=tmp_path / "cache", limit=2)
    plan1 = plan_samples(first, REGION, PERIOD, CONFIG)
    assert plan1.num_rows > 0 and first.requests > 0
    asked = server.total
    assert server.searches >= first.requests

    second = StacApiSource(server.url, cache_dir=tmp_path / "cache", limit=2)
    plan2 = plan_samples(second, REGION, PERIOD, CONFIG)
    assert server.total == asked  # not even the landing page: nothing was asked again
    assert second.requests == 0
    assert plan2.equals(plan1)

    # The same plan as reading the static catalog directly.
    plan3 = plan_samples(StaticSource(real_dir / "s2l2a_croatia"), REGION, PERIOD, CONFIG)
    assert plan3.column("scenes").to_pylist() == plan1.column("scenes").to_pylist()

    # use_cache=False asks again
    fresh = StacApiSource(server.url, cache_dir=tmp_path / "cache", limit=2, use_cache=False)
    plan_samples(fresh, REGION, PERIOD, CONFIG)
    assert server.total > asked


def test_retries_with_backoff_then_clear_error(real_dir, stac_server_factory, tmp_path) -> None:
    flaky = stac_server_factory(api_items(real_dir), fail_first=2)
    src = StacApiSource(flaky.url, cache_dir=tmp_path, backoff_factor=0.001, max_retries=3)
    assert len(src.search("sentinel-2-l2a", REGION.geometry, PERIOD)) == 3
    assert flaky.searches == 3  # two 503s, then the answer

    down = stac_server_factory(api_items(real_dir), fail_always=True)
    src = StacApiSource(down.url, cache_dir=tmp_path, backoff_factor=0.001, max_retries=2)
    with pytest.raises(SourceError, match="failed"):
        src.search("sentinel-2-l2a", REGION.geometry, PERIOD)
    assert down.searches == 3  # first try + 2 retries

    with pytest.raises(SourceError, match="cannot open STAC API"):
        StacApiSource("http://127.0.0.1:9", cache_dir=tmp_path, max_retries=0).search(
            "x", REGION.geometry, PERIOD
        )
    with pytest.raises(SourceError):
        StacApiSource("ftp://example.com")


def test_hrefs_are_signed_on_mapping_never_in_the_cache(
    real_dir, stac_server_factory, tmp_path
) -> None:
    server = stac_server_factory(api_items(real_dir))
    src = StacApiSource(
        server.url,
        cache_dir=tmp_path,
        signer=lambda h: h + "?sig=abc" if h.startswith("https") else h,
    )
    items = src.search("sentinel-2-l2a", REGION.geometry, PERIOD)
    assert all(it.assets["B11"].href.endswith("?sig=abc") for it in items)  # remote band
    assert all(not it.assets["B04"].href.endswith("?sig=abc") for it in items)  # local file
    cached = []
    for path in tmp_path.rglob("*.json.gz"):
        with gzip.open(path, "rt") as f:
            cached.append(f.read())
    assert cached and all("sig=abc" not in text for text in cached)


def test_planetary_computer_signing_needs_the_package() -> None:
    try:
        import planetary_computer  # noqa: F401
    except ImportError:
        with pytest.raises(SourceError, match="planetary-computer"):
            StacApiSource(PLANETARY_COMPUTER, sign=True)
        assert StacApiSource(PLANETARY_COMPUTER).signer is None  # auto: sign only if installed
    else:
        assert StacApiSource(PLANETARY_COMPUTER).signer is not None
    assert StacApiSource(PLANETARY_COMPUTER, sign=False).signer is None


def test_world_plan_over_a_local_stac_api_is_served_from_the_cache(
    stac_server_factory, tmp_path
) -> None:
    """The acceptance case: the embedded world's catalog behind a local STAC API."""
    world = cached_world("tiny", 0)
    cat = pystac.read_file(str(world / "catalog.json"))
    items = []
    for item in cat.get_items(recursive=True):
        item.make_asset_hrefs_absolute()
        d = item.to_dict(include_self_link=False)
        d["links"] = []
        items.append(d)
    server = stac_server_factory(items)
    opened = open_source(f"world:{world}")
    first = StacApiSource(server.url, cache_dir=tmp_path, limit=7)
    plan1 = plan_samples(first, opened.region, opened.time_range, WORLD_CONFIG)
    asked = server.total
    assert asked > 0 and first.requests > 0
    second = StacApiSource(server.url, cache_dir=tmp_path, limit=7)
    plan2 = plan_samples(second, opened.region, opened.time_range, WORLD_CONFIG)
    assert server.total == asked and second.requests == 0
    assert plan2.equals(plan1)
    static = plan_samples(opened.source, opened.region, opened.time_range, WORLD_CONFIG)
    assert plan1.column("scenes").to_pylist() == static.column("scenes").to_pylist()


# --- a server that never answers: timeouts, retries, the deadline -----------------------------


def test_a_server_that_never_answers_fails_after_its_retries(blackhole, tmp_path, no_hang) -> None:
    """pystac-client's Client.open resets the IO timeout to None: without a timeout set per
    request this call never returns (the guard fails the test instead of hanging the suite)."""
    src = StacApiSource(
        blackhole.url, cache_dir=tmp_path, timeout=0.3, max_retries=2, backoff_factor=0.001
    )
    with pytest.raises(SourceError, match=r"cannot open STAC API .*no answer within 0.3 s"):
        no_hang(src.search, DEM, REGION.geometry, PERIOD)
    assert blackhole.accepted == 3  # the first try and both retries fired


def test_a_search_that_never_answers_times_out_and_retries(
    stac_server_factory, tmp_path, no_hang
) -> None:
    server = stac_server_factory([dem_item("good", href=TIF)], hang_search=True)
    src = StacApiSource(
        server.url, cache_dir=tmp_path, timeout=0.3, max_retries=2, backoff_factor=0.001
    )
    with pytest.raises(SourceError, match=r"failed after 2 retries: no answer within 0.3 s"):
        no_hang(src.search, DEM, REGION.geometry, PERIOD)
    assert server.searches == 3
    assert src.skipped_items() == [] and not list(tmp_path.rglob("*.json.gz"))  # nothing cached


def test_the_deadline_bounds_a_search_whatever_its_retries(
    stac_server_factory, tmp_path, no_hang
) -> None:
    server = stac_server_factory([dem_item("good", href=TIF)], hang_search=True)
    src = StacApiSource(
        server.url,
        cache_dir=tmp_path,
        timeout=0.4,
        max_retries=1000,
        deadline=1.0,
        backoff_factor=0.001,
    )
    with pytest.raises(SourceError, match=r"within the 1 s deadline"):
        no_hang(src.search, DEM, REGION.geometry, PERIOD)
    # every try waits its full 0.4 s timeout, so the 1 s deadline stops the retries by the third
    assert 1 <= server.searches <= 3
    for bad in ({"timeout": 0}, {"deadline": -1.0}, {"max_retries": -1}):
        with pytest.raises(SourceError, match="must be"):
            StacApiSource(server.url, **bad)


def test_cli_plan_on_a_silent_server_is_one_line_and_exit_2(
    blackhole, tmp_path, no_hang, capsys
) -> None:
    args = ["plan", "--source", f"stac:{blackhole.url}", "--region", "15.2,45.98,15.4,46.08",
            "--time", "2023-08-01/2023-08-31", "--modalities", "DEM", "--out",
            str(tmp_path / "plan.parquet"), "--timeout", "0.3", "--retries", "1",
            "--search-deadline", "30", "--no-cache", "--no-progress"]  # fmt: skip
    assert no_hang(main, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("terraloom-pipeline plan: error: cannot open STAC API")
    assert "no answer within 0.3 s" in err and err.count("\n") == 1 and "Traceback" not in err
    assert blackhole.accepted == 2
    assert not (tmp_path / "plan.parquet").exists()


# --- malformed items ----------------------------------------------------------------------------

#: what an API can serve of each malformed kind (a broken JSON text inside a valid page is a
#: string feature; a page that is not JSON at all is the next test) and the reason it gets
API_JUNK = [
    ('{"type": "Feature", "id": "bad_json", "geometry": ', "not_an_item"),
    (dem_item("null_geometry", href=TIF, geometry=None, bbox=None), "no_geometry"),
    (dem_item("oops_assets", assets="oops"), "bad_assets"),
]


def test_malformed_api_items_are_skipped_counted_and_reported(
    stac_server_factory, tmp_path, caplog, capsys
) -> None:
    server = stac_server_factory([dem_item("good", href=TIF)], junk=[j for j, _ in API_JUNK])
    src = StacApiSource(server.url, cache_dir=tmp_path / "cache")
    assert [it.id for it in src.search(DEM, REGION.geometry, None)] == ["good"]
    assert [s.reason for s in src.skipped_items()] == [r for _, r in API_JUNK]
    assert {s.collection for s in src.skipped_items()} == {DEM}
    assert src.skipped_items()[2].item_id == "oops_assets"
    assert "(bad_assets)" in caplog.text
    src.search(DEM, REGION.geometry, None)  # met again (from the cache): counted once
    assert len(src.skipped_items()) == 3

    out = tmp_path / "plan.parquet"
    args = ["plan", "--source", f"stac:{server.url}", "--region", "15.2,45.98,15.4,46.08",
            "--time", "2023-08-01/2023-08-31", "--modalities", "DEM", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache2"), "--no-progress", "--val-fraction", "0"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "skipped malformed catalog items: 3 (bad_assets 1, no_geometry 1, not_an_item 1)" in (
        printed
    )
    report = json.loads((tmp_path / "plan_report.json").read_text())
    assert report["skipped_by_reason"] == {"bad_assets": 1, "no_geometry": 1, "not_an_item": 1}
    assert {s["item_id"] for s in report["skipped"]} == {None, "null_geometry", "oops_assets"}
    table = read_table("plan", out)
    assert table.num_rows > 0
    assert {sc[0]["item_id"] for sc in table.column("scenes").to_pylist()} == {"good"}


def test_an_api_page_that_is_not_json_is_one_line_and_exit_2(
    stac_server_factory, tmp_path, capsys
) -> None:
    server = stac_server_factory([dem_item("good", href=TIF)], bad_page=True)
    with pytest.raises(SourceError, match="returned an unreadable page"):
        StacApiSource(server.url, cache_dir=tmp_path).search(DEM, REGION.geometry, PERIOD)
    args = ["plan", "--source", f"stac:{server.url}", "--region", "15.2,45.98,15.4,46.08",
            "--time", "2023-08-01/2023-08-31", "--modalities", "DEM", "--out",
            str(tmp_path / "plan.parquet"), "--no-cache", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("terraloom-pipeline plan: error: STAC search on")
    assert err.count("\n") == 1 and "Traceback" not in err
