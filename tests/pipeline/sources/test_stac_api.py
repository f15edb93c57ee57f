"""STAC API source against a local HTTP STAC API the test serves (paging, retries, cache)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import pystac
import pytest

from pipeline.grid import Region
from pipeline.plan import PlanConfig, plan_samples
from pipeline.sources import open_source
from pipeline.sources.base import SourceError
from pipeline.sources.stac_api import PLANETARY_COMPUTER, StacApiSource
from pipeline.sources.static import StaticSource
from pipeline.world.generate import cached_world

PERIOD = (datetime(2023, 8, 1, tzinfo=UTC), datetime(2023, 8, 31, 23, 59, 59, tzinfo=UTC))
REGION = Region.from_bbox(15.2, 45.98, 15.4, 46.08)  # on both 33TWL and 33TWM
CONFIG = PlanConfig(modalities=("S2L2A",), val_fraction=0.0)
WORLD_CONFIG = PlanConfig(samples_per_cell=9)


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
