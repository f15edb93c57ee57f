from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import shapely
from shapely.geometry import shape

from terraloom.pipeline.sources.base import matches_query, parse_datetime
from terraloom.pipeline.world.stac_documents import (
    CONFORMANCE,
    collection_doc,
    landing_doc,
    parse_search,
    search_page,
)


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


class StacServer:
    """Serves ``/``, ``/conformance``, ``/collections`` and ``/search`` (GET and POST, with
    ``limit`` + ``next``-token paging) over a list of STAC item dicts; counts requests and can
    answer the first ``fail_first`` searches with 503 to exercise retries."""

    def __init__(
        self,
        items: list[dict[str, Any]],
        fail_first: int = 0,
        fail_always: bool = False,
        junk: list[Any] = (),  # type: ignore[assignment]
        bad_page: bool = False,
        hang_search: bool = False,
    ) -> None:
        """``junk``: features added as they are (malformed items) to the first page of every
        search; ``bad_page``: searches answer a body that is not JSON; ``hang_search``:
        searches are accepted and never answered (until the server stops)."""
        self.items = sorted(items, key=lambda d: (d["collection"], d["id"]))
        self.requests: Counter[str] = Counter()
        self.fail_first = fail_first
        self.fail_always = fail_always
        self.junk = list(junk)
        self.bad_page = bad_page
        self.hang_search = hang_search
        self.stopped = threading.Event()
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
            if self.hang_search:
                self.stopped.wait(timeout=60)  # bounded: the server's stop releases it
                return
            if self.fail_always or self.fail_first > 0:
                self.fail_first -= 1
                h._send(503, {"code": "Unavailable", "description": "try again"})
                return
            if self.bad_page:
                body = b'{"type": "FeatureCollection", "features": [{"id": '
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
                return
            page = self.search(method, params)
            if not params.get("token"):
                page["features"] = [*self.junk, *page["features"]]
            h._send(200, page)
        else:
            h._send(404, {"code": "NotFound"})

    def collection_ids(self) -> list[str]:
        return sorted({d["collection"] for d in self.items})

    def collection(self, cid: str) -> dict[str, Any]:
        return collection_doc(cid, cid)

    def landing(self) -> dict[str, Any]:
        return landing_doc(self.url, "test-api", "test STAC API")

    def search(self, method: str, p: dict[str, Any]) -> dict[str, Any]:
        search = parse_search(p)
        t0, t1, geom = search.start, search.end, search.geometry
        hits = []
        for d in self.items:
            if search.collections and d["collection"] not in search.collections:
                continue
            if geom is not None and not shapely.intersects(shape(d["geometry"]), geom):
                continue
            pr = d["properties"]
            start = parse_datetime(pr.get("start_datetime") or pr.get("datetime"))
            end = parse_datetime(pr.get("end_datetime") or pr.get("datetime"))
            if (t0 is not None and end < t0) or (t1 is not None and start > t1):
                continue
            if not matches_query(pr, search.query):
                continue
            hits.append(d)
        return search_page(hits, p, method, self.url, int(p.get("limit") or 10))

    def __enter__(self) -> StacServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers a byte.

    Bounded: it holds connections until stopped or until ``lifetime`` seconds have passed,
    then closes them, so a client without a timeout is released by EOF, not left forever."""

    def __init__(self, lifetime: float = 90.0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.lifetime = lifetime
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self.lifetime
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self._held.append(conn)
        for conn in self._held:
            conn.close()
        self.sock.close()

    def __enter__(self) -> Blackhole:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.thread.join(timeout=5)


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    with Blackhole() as hole:
        yield hole


def finishes(fn: Any, *args: Any, guard: float = 60.0, **kw: Any) -> Any:
    """``fn(*args, **kw)`` in a thread: its result, or its exception re-raised here; a call
    still running after ``guard`` seconds fails the test (a hang is a failure, not a stall)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args, **kw)
        except BaseException as err:  # handed to the test thread
            out["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(guard)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} still running after {guard:g} s: it hangs")
    if "error" in out:
        raise out["error"]
    return out.get("value")


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


@pytest.fixture
def no_hang() -> Any:
    """:func:`finishes`: run a call that must not hang under a generous guard."""
    return finishes
