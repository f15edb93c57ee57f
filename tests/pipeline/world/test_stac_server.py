"""The synthetic global STAC API: deterministic items per cell, paging, throttling, its log."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest

from terraloom.pipeline.grid import GRID
from terraloom.pipeline.sources.base import item_from_stac
from terraloom.pipeline.world.stac_server import (
    COLLECTIONS,
    ServerConfig,
    SyntheticStacApi,
    cell_items,
    max_requests_in_window,
    search_items,
)

JUNE = (datetime(2023, 6, 1, tzinfo=UTC), datetime(2023, 6, 30, 23, 59, 59, tzinfo=UTC))


def _post(url: str, body: dict) -> tuple[int, dict, dict]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_items_are_deterministic_from_the_cell_and_map_to_source_items() -> None:
    # cells far apart on the globe, both hemispheres, near the antimeridian
    cells = [GRID.cell_of(lon, lat) for lon, lat in [(15.3, 46.0), (-70.1, -33.4), (179.9, 65.0)]]
    for c in cells:
        for coll in COLLECTIONS:
            period = (None, None) if coll == "cop-dem-glo-30" else JUNE  # static: any time
            a = cell_items(c, coll, *period)
            assert a == cell_items(str(c), coll, *period) and a, (c, coll)
            for d in a:
                it = item_from_stac(d)
                assert it.collection == coll and it.geometry.is_valid
                assert not it.missing_bands(it.modality or "")
    s2 = cell_items(cells[0], "sentinel-2-l2a", *JUNE)
    assert 5 <= len(s2) <= 7  # a pass every 5 days over 30 days
    l1c = cell_items(cells[0], "sentinel-2-l1c", *JUNE)
    assert [d["properties"]["datetime"] for d in s2] == [d["properties"]["datetime"] for d in l1c]
    assert cell_items(cells[0], "sentinel-2-l2a", *JUNE) != cell_items(
        cells[1], "sentinel-2-l2a", *JUNE
    )


def test_search_filters_by_bbox_datetime_collection_and_query() -> None:
    bbox = [15.0, 45.9, 15.3, 46.1]
    hits = search_items(
        {
            "bbox": bbox,
            "collections": ["sentinel-2-l2a"],
            "datetime": "2023-06-01T00:00:00Z/2023-06-10T23:59:59Z",
        }
    )
    cells = {"_".join(d["id"].split("_")[-2:]) for d in hits}
    assert cells == {str(c) for c in GRID.cells_in_bbox(*bbox)}
    assert all("2023-06-01" <= d["properties"]["datetime"][:10] <= "2023-06-10" for d in hits)
    clear = search_items(
        {
            "bbox": bbox,
            "collections": ["sentinel-2-l2a"],
            "datetime": "2023-06-01T00:00:00Z/2023-06-10T23:59:59Z",
            "query": {"eo:cloud_cover": {"lte": 20}},
        }
    )
    assert 0 < len(clear) < len(hits)
    assert all(d["properties"]["eo:cloud_cover"] <= 20 for d in clear)


def test_the_server_pages_throttles_with_retry_after_and_logs() -> None:
    cfg = ServerConfig(throttle_first=1, retry_after_s=3, lifetime_s=30)
    with SyntheticStacApi(cfg) as api:
        body = {"bbox": [15.0, 45.9, 15.3, 46.1], "collections": ["sentinel-2-l2a"], "limit": 4,
                "datetime": "2023-06-01T00:00:00Z/2023-06-30T23:59:59Z"}  # fmt: skip
        code, headers, _ = _post(f"{api.url}/search", body)
        assert code == 429 and headers["Retry-After"] == "3"
        sizes = [int(headers["Content-Length"])]
        ids = []
        page = body
        while True:
            code, headers, doc = _post(f"{api.url}/search", page)
            assert code == 200
            sizes.append(int(headers["Content-Length"]))
            ids += [f["id"] for f in doc["features"]]
            nxt = [ln for ln in doc["links"] if ln["rel"] == "next"]
            if not nxt:
                break
            page = nxt[0]["body"]
        assert ids == [d["id"] for d in search_items(body)] and len(ids) > 4
        log = api.log
        assert [e.status for e in log] == [429] + [200] * (len(log) - 1)
        assert all(e.path == "/search" for e in log)
        assert sum(e.features for e in log) == len(ids)
        assert log[1].collections == ("sentinel-2-l2a",)
        # every answer's size is logged (bench/plan.py reports bytes read per cell from it)
        assert [e.bytes for e in log] == sizes and min(sizes[1:]) > 1000
    assert api.stopped.is_set()


def test_server_rate_limit_and_bounded_lifetime() -> None:
    with SyntheticStacApi(ServerConfig(throttle_rate=2.0, lifetime_s=1.0)) as api:
        codes = [_post(f"{api.url}/search", {"bbox": [15, 45.9, 15.1, 46]})[0] for _ in range(4)]
        assert codes[0] == 200 and 429 in codes  # 4 back-to-back requests exceed 2/s
        assert api.stopped.wait(10)  # it stops itself
    with pytest.raises(ValueError):
        ServerConfig(throttle_rate=0)


def test_max_requests_in_window() -> None:
    assert max_requests_in_window([0.0, 0.1, 0.2, 1.5, 1.6], 1.0) == 3
    assert max_requests_in_window([], 1.0) == 0


def test_a_repeated_search_is_answered_from_the_answer_cache() -> None:
    """The same request gets the same bytes without generating the page again; a cache of
    0 MB keeps nothing and still answers the same."""
    body = {"bbox": [15.0, 45.9, 15.3, 46.1], "collections": ["sentinel-2-l2a"], "limit": 3,
            "datetime": "2023-06-01T00:00:00Z/2023-06-30T23:59:59Z"}  # fmt: skip
    answers = {}
    for mb in (256.0, 0.0):
        with SyntheticStacApi(ServerConfig(lifetime_s=30, answer_cache_mb=mb)) as api:
            made: list[tuple] = []

            def counted(*a, _page=api.page, _made=made):
                _made.append(a)
                return _page(*a)

            api.page = counted  # type: ignore[method-assign]
            got = [_post(f"{api.url}/search", body)[2] for _ in range(3)]
            assert got[0] == got[1] == got[2] and len(got[0]["features"]) == 3
            assert len(made) == (1 if mb else 3)
            assert [e.features for e in api.log] == [3, 3, 3]
            answers[mb] = got[0]
    assert answers[256.0]["features"] == answers[0.0]["features"]
    with pytest.raises(ValueError, match="answer_cache_mb"):
        ServerConfig(answer_cache_mb=-1)
