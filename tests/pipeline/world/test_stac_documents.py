"""The STAC API documents every local test/synthetic API serves: search parsing and paging."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlparse

from terraloom.pipeline.world.stac_documents import landing_doc, parse_search, search_page


def test_parse_search_reads_get_strings_and_post_bodies_alike() -> None:
    get = parse_search(
        {
            "collections": "a,b",
            "bbox": "1,2,3,4",
            "datetime": "2020-01-01T00:00:00Z/..",
            "query": '{"eo:cloud_cover": {"lt": 5}}',
        }
    )
    post = parse_search(
        {
            "collections": ["a", "b"],
            "bbox": [1, 2, 3, 4],
            "datetime": "2020-01-01T00:00:00Z/..",
            "query": {"eo:cloud_cover": {"lt": 5}},
        }
    )
    assert get == post
    assert get.collections == ("a", "b") and get.geometry is not None
    assert get.geometry.bounds == (1.0, 2.0, 3.0, 4.0)
    assert get.start == datetime(2020, 1, 1, tzinfo=UTC) and get.end is None
    # one instant is an interval of one instant, not an open end
    one = parse_search(
        {"datetime": "2021-06-01T00:00:00Z", "intersects": get.geometry.__geo_interface__}
    )
    assert one.start == one.end == datetime(2021, 6, 1, tzinfo=UTC)
    assert (
        one.collections is None and one.geometry is not None and one.geometry.equals(get.geometry)
    )


def test_search_page_links_the_next_page_for_get_and_post() -> None:
    hits = [{"id": str(i)} for i in range(5)]
    first = search_page(hits, {"bbox": "0,0,1,1"}, "GET", "http://h", 2)
    assert [f["id"] for f in first["features"]] == ["0", "1"] and first["numberMatched"] == 5
    (nxt,) = first["links"]
    q = parse_qs(urlparse(nxt["href"]).query)
    assert q == {"bbox": ["0,0,1,1"], "token": ["2"]}
    last = search_page(hits, {"token": 4}, "POST", "http://h", 2)
    assert [f["id"] for f in last["features"]] == ["4"] and last["links"] == []
    mid = search_page(hits, {"token": 2, "limit": 2}, "POST", "http://h", 2)
    assert mid["links"][0]["body"] == {"token": 4, "limit": 2}


def test_landing_links_search_both_ways() -> None:
    doc = landing_doc("http://h", "x", "d")
    methods = {link["method"] for link in doc["links"] if link["rel"] == "search"}
    assert methods == {"GET", "POST"} and doc["id"] == "x"
