from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import shapely
from shapely.geometry import box, shape

from pipeline.sources.base import matches_query, parse_datetime


def _repo_root() -> Path:
    here = Path(__file__).resolve()
    return next(p for p in here.parents if (p / "pyproject.toml").is_file())


REAL = _repo_root().parent / "shared" / "real"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real fixtures not found at ../shared/real ({REAL})")
    # resolved: pystac resolves symlinks in absolute hrefs, so a ../shared that is a link
    # would otherwise give the two sides of a comparison different (equivalent) paths
    return REAL.resolve()


# --- a minimal STAC API over HTTP, served from item dicts by the test itself ---------------------


CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
]


class StacServer:
    """Serves ``/``, ``/conformance``, ``/collections`` and ``/search`` (GET and POST, with
    ``limit`` + ``next``-token paging) over a list of STAC item dicts; counts requests and can
    answer the first ``fail_first`` searches with 503 to exercise retries."""

    def __init__(
        self, items: list[dict[str, Any]], fail_first: int = 0, fail_always: bool = False
    ) -> None:
        self.items = sorted(items, key=lambda d: (d["collection"], d["id"]))
        self.requests: Counter[str] = Counter()
        self.fail_first = fail_first
        self.fail_always = fail_always
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                server.handle(self, "GET", url.path, params)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                server.handle(self, "POST", urlparse(self.path).path, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def searches(self) -> int:
        return self.requests["/search"]

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def handle(self, h: Any, method: str, path: str, params: dict[str, Any]) -> None:
        self.requests[path] += 1
        path = path.rstrip("/") or "/"
        if path == "/":
            h._send(200, self.landing())
        elif path == "/conformance":
            h._send(200, {"conformsTo": CONFORMANCE})
        elif path == "/collections":
            h._send(
                200,
                {"collections": [self.collection(c) for c in self.collection_ids()], "links": []},
            )
        elif path.startswith("/collections/"):
            cid = path.split("/")[2]
            h._send(200, self.collection(cid)) if cid in self.collection_ids() else h._send(
                404, {"code": "NotFound"}
            )
        elif path == "/search":
            if self.fail_always or self.fail_first > 0:
                self.fail_first -= 1
                h._send(503, {"code": "Unavailable", "description": "try again"})
                return
            h._send(200, self.search(method, params))
        else:
            h._send(404, {"code": "NotFound"})

    def collection_ids(self) -> list[str]:
        return sorted({d["collection"] for d in self.items})

    def collection(self, cid: str) -> dict[str, Any]:
        return {
            "type": "Collection",
            "id": cid,
            "stac_version": "1.0.0",
            "description": cid,
            "license": "proprietary",
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [[None, None]]},
            },
            "links": [],
        }

    def landing(self) -> dict[str, Any]:
        u = self.url
        return {
            "type": "Catalog",
            "id": "test-api",
            "stac_version": "1.0.0",
            "description": "test STAC API",
            "conformsTo": CONFORMANCE,
            "links": [
                {"rel": "self", "href": f"{u}/", "type": "application/json"},
                {"rel": "root", "href": f"{u}/", "type": "application/json"},
                {"rel": "conformance", "href": f"{u}/conformance"},
                {"rel": "data", "href": f"{u}/collections"},
                {
                    "rel": "search",
                    "href": f"{u}/search",
                    "method": "GET",
                    "type": "application/geo+json",
                },
                {
                    "rel": "search",
                    "href": f"{u}/search",
                    "method": "POST",
                    "type": "application/geo+json",
                },
            ],
        }

    def search(self, method: str, p: dict[str, Any]) -> dict[str, Any]:
        colls = p.get("collections")
        if isinstance(colls, str):
            colls = colls.split(",")
        geom = None
        if p.get("bbox"):
            b = p["bbox"]
            b = [float(x) for x in (b.split(",") if isinstance(b, str) else b)]
            geom = box(*b)
        elif p.get("intersects"):
            g = p["intersects"]
            geom = shape(json.loads(g) if isinstance(g, str) else g)
        t0 = t1 = None
        if p.get("datetime"):
            a, _, b = str(p["datetime"]).partition("/")
            t0 = parse_datetime(a) if a not in ("", "..") else None
            t1 = parse_datetime(b) if b not in ("", "..") else None
        query = p.get("query")
        if isinstance(query, str):
            query = json.loads(query)
        hits = []
        for d in self.items:
            if colls and d["collection"] not in colls:
                continue
            if geom is not None and not shapely.intersects(shape(d["geometry"]), geom):
                continue
            pr = d["properties"]
            start = parse_datetime(pr.get("start_datetime") or pr.get("datetime"))
            end = parse_datetime(pr.get("end_datetime") or pr.get("datetime"))
            if (t0 is not None and end < t0) or (t1 is not None and start > t1):
                continue
            if not matches_query(pr, query):
                continue
            hits.append(d)
        limit = int(p.get("limit") or 10)
        token = int(p.get("token") or 0)
        page = hits[token : token + limit]
        links = []
        if token + limit < len(hits):
            if method == "GET":
                q = {k: v for k, v in p.items() if k != "token"}
                q["token"] = token + limit
                links.append(
                    {"rel": "next", "href": f"{self.url}/search?{urlencode(q)}", "method": "GET"}
                )
            else:
                links.append(
                    {
                        "rel": "next",
                        "href": f"{self.url}/search",
                        "method": "POST",
                        "body": {**p, "token": token + limit},
                    }
                )
        return {
            "type": "FeatureCollection",
            "features": page,
            "links": links,
            "numberMatched": len(hits),
        }

    def __enter__(self) -> StacServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stac_server_factory() -> Iterator[Any]:
    servers: list[StacServer] = []

    def make(items: list[dict[str, Any]], **kw: Any) -> StacServer:
        s = StacServer(items, **kw).__enter__()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.__exit__(None, None, None)
