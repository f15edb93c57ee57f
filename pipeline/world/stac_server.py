"""A synthetic global STAC API: item metadata for every Major TOM cell, served on 127.0.0.1.

Planning at global scale is measured against this server, not against Planetary Computer:
it answers ``/``, ``/conformance``, ``/collections`` and ``/search`` (GET and POST; ``bbox``
or ``intersects``, ``datetime``, ``collections``, the ``query`` extension, ``limit`` +
``next``-token paging) for the six planned collections over the whole grid, about 5 million
cells, with no pixels. Every item is generated from its cell id and date alone (a seeded
hash), so any subset of the globe is reproducible and two runs see the same catalog:

- ``sentinel-2-l2a`` / ``sentinel-2-l1c``: one item per cell every ``s2_revisit_days``
  (phase from the cell), twins with the same platform, tile and time; cloud cover skewed
  towards clear (``100 u^2``);
- ``sentinel-1-grd`` / ``sentinel-1-rtc``: every ``s1_revisit_days``, ascending or
  descending, VV+VH (GRD without ``proj``, as the real one);
- ``cop-dem-glo-30``: one static item per cell; ``io-lulc-9-class``: one per cell and year.

An item's footprint is its cell, so every sample footprint inside a cell is covered.

It behaves like a real API under load where that matters to a planner: ``latency_s`` per
answer, a server-side rate limit (``throttle_rate``, requests/s over all clients) answered
with ``429`` and ``Retry-After``, optionally the first ``throttle_first`` searches throttled
too. Every request is logged (:class:`LogEntry`: arrival time, path, status, features), in
memory and optionally as JSON lines, so tests assert on what the server saw (never more than
the configured rate). It listens on 127.0.0.1 only and stops itself after ``lifetime_s``.

    with SyntheticStacApi(ServerConfig(latency_s=0.02)) as api:
        src = StacApiSource(api.url, cache_dir=...)
        ...
        api.log  # list[LogEntry]

``python -m terraloom.pipeline.world.stac_server --lifetime 600 --log requests.jsonl`` runs
it as its own process (the bench does, so the server does not share the planner's GIL); it
prints ``url=<url>`` once it listens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, urlparse

from terraloom.pipeline.grid import GRID, CellId, cell_epsg
from terraloom.pipeline.sources.base import matches_query
from terraloom.pipeline.world.stac import COLLECTION_ORDER
from terraloom.pipeline.world.stac_documents import (
    CONFORMANCE,
    collection_doc,
    landing_doc,
    parse_search,
    search_page,
)
from terraloom.schemas.modalities import get_modality

COLLECTIONS = COLLECTION_ORDER
#: hrefs of a host that never resolves: planning reads no pixels of this API
HREF_ROOT = "https://synthetic-stac.invalid"
EPOCH = datetime(2017, 1, 1, tzinfo=UTC)
LULC_YEARS = range(2017, 2024)
DEM_DATETIME = datetime(2021, 4, 22, tzinfo=UTC)


@dataclass(frozen=True)
class ServerConfig:
    """How the synthetic API behaves (see the module docstring)."""

    #: seconds added before every answer (a real API's round trip)
    latency_s: float = 0.0
    #: server-side limit over all clients, requests/s (None: unlimited); above it: 429
    throttle_rate: float | None = None
    throttle_burst: float = 1.0
    #: the first N searches are answered 429 whatever the rate (tests of Retry-After)
    throttle_first: int = 0
    #: the Retry-After (seconds) of a 429
    retry_after_s: float = 1.0
    #: the largest page the server hands out, whatever ``limit`` asks
    max_page: int = 1000
    s2_revisit_days: int = 5
    s1_revisit_days: int = 6
    #: the server stops itself after this many seconds (bounded in tests and benches)
    lifetime_s: float = 600.0
    #: encoded search pages kept in memory (MB): an answer is a pure function of the request,
    #: so a repeated search is answered from here and a benchmark measures the planner, not
    #: this server's JSON encoding (a real API's answer time is ``latency_s``)
    answer_cache_mb: float = 256.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.lifetime_s <= 0 or self.max_page < 1:
            raise ValueError("latency_s >= 0, lifetime_s > 0 and max_page >= 1 are required")
        if self.throttle_rate is not None and self.throttle_rate <= 0:
            raise ValueError("throttle_rate must be > 0 requests/s")
        if self.s2_revisit_days < 1 or self.s1_revisit_days < 1:
            raise ValueError("revisit days must be >= 1")
        if self.answer_cache_mb < 0:
            raise ValueError("answer_cache_mb must be >= 0")


@dataclass(frozen=True)
class LogEntry:
    """One request as the server saw it: ``t`` is seconds since the server started,
    taken when the request arrived (before any latency)."""

    t: float
    method: str
    path: str
    status: int
    features: int = 0
    collections: tuple[str, ...] = field(default=())
    #: bytes of the answer's body (what a planner reads per request; bench/plan.py, cost model)
    bytes: int = 0


# --- the catalog: items from (cell, date) -------------------------------------------------------


def _unit(*parts: object) -> float:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _asset_keys(collection: str) -> list[str]:
    m = get_modality(
        {
            "sentinel-2-l2a": "S2L2A",
            "sentinel-2-l1c": "S2L1C",
            "sentinel-1-grd": "S1GRD",
            "sentinel-1-rtc": "S1RTC",
            "cop-dem-glo-30": "DEM",
            "io-lulc-9-class": "LULC",
        }[collection]
    )
    keys = [b.asset_key or b.name for b in m.bands]
    if m.name == "S2L2A":
        keys.append(str(m.extra.get("scl_asset", "SCL")))
    return keys


_KEYS = {c: _asset_keys(c) for c in COLLECTIONS}


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dates(
    cell: str, salt: str, revisit: int, t0: datetime | None, t1: datetime | None, seed: int
) -> Iterator[tuple[int, datetime]]:
    """(pass number, time) of a cell's passes every ``revisit`` days within [t0, t1]."""
    phase = int(_unit(seed, salt, cell) * revisit)
    b = GRID.bounds(cell)
    lon = (b.west + b.east) / 2.0
    lon = lon - 360.0 if lon >= 180.0 else lon
    # ~10:30 local solar time, kept inside the UTC day
    hours = min(23.9, max(0.1, 10.5 - lon / 15.0))
    offset = timedelta(days=phase, hours=hours)
    lo = t0 if t0 is not None else EPOCH
    hi = t1 if t1 is not None else datetime(2026, 1, 1, tzinfo=UTC)
    k0 = max(0, math.floor(((lo - EPOCH - offset).total_seconds()) / 86400.0 / revisit))
    k = k0
    while True:
        t = EPOCH + offset + timedelta(days=k * revisit)
        if t > hi:
            return
        if t >= lo:
            yield k, t
        k += 1


def _feature(
    cell: str,
    collection: str,
    item_id: str,
    geometry: dict[str, Any],
    bbox: list[float],
    props: dict[str, Any],
) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "assets": {
            k: {"href": f"{HREF_ROOT}/{collection}/{cell}/{item_id}/{k}.tif"}
            for k in _KEYS[collection]
        },
        "links": [],
    }


def cell_items(
    cell: str | CellId,
    collection: str,
    t0: datetime | None,
    t1: datetime | None,
    config: ServerConfig = ServerConfig(),
) -> list[dict[str, Any]]:
    """The items of one collection over one cell within [t0, t1] (deterministic)."""
    c = str(cell)
    b = GRID.bounds(c)
    west, east = b.west, b.east
    if east > 180.0:  # the antimeridian column: its western part (items stay valid GeoJSON)
        east = 180.0
    bbox = [round(west, 9), round(b.south, 9), round(east, 9), round(b.north, 9)]
    ring = [[west, b.south], [east, b.south], [east, b.north], [west, b.north], [west, b.south]]
    geometry = {"type": "Polygon", "coordinates": [ring]}
    epsg = cell_epsg(c)
    seed = config.seed
    out: list[dict[str, Any]] = []
    if collection in ("sentinel-2-l2a", "sentinel-2-l1c"):
        level = "L2A" if collection.endswith("l2a") else "L1C"
        for k, t in _dates(c, "s2", config.s2_revisit_days, t0, t1, seed):
            platform = "sentinel-2a" if k % 2 == 0 else "sentinel-2b"
            cloud = round(100.0 * _unit(seed, "cloud", c, k) ** 2, 3)
            tile = f"{epsg % 100:02d}SYN"
            props = {
                "datetime": _iso(t),
                "platform": platform,
                "eo:cloud_cover": cloud,
                "proj:epsg": epsg,
                "s2:mgrs_tile": tile,
                "s2:processing_baseline": "05.09",
                "sat:relative_orbit": 1 + int(_unit(seed, "orbit", c) * 143),
            }
            iid = f"S2{platform[-1].upper()}_MSI{level}_{t:%Y%m%d}_{c}"
            out.append(_feature(c, collection, iid, geometry, bbox, props))
    elif collection in ("sentinel-1-grd", "sentinel-1-rtc"):
        kind = "GRD" if collection.endswith("grd") else "RTC"
        for k, t in _dates(c, "s1", config.s1_revisit_days, t0, t1, seed):
            asc = k % 2 == 0
            t = t.replace(hour=18 if asc else 6)
            props = {
                "datetime": _iso(t),
                "platform": "sentinel-1a",
                "sat:orbit_state": "ascending" if asc else "descending",
                "sat:relative_orbit": 1 + int(_unit(seed, "s1orbit", c, asc) * 175),
                "sar:polarizations": ["VV", "VH"],
            }
            if kind == "RTC":
                props["proj:epsg"] = epsg
            iid = f"S1A_IW_{kind}_{t:%Y%m%dT%H%M%S}_{c}"
            if t0 is not None and t < t0 or t1 is not None and t > t1:
                continue
            out.append(_feature(c, collection, iid, geometry, bbox, props))
    elif collection == "cop-dem-glo-30":
        props = {"datetime": _iso(DEM_DATETIME), "proj:epsg": 4326}
        if (t0 is None or t0 <= DEM_DATETIME) and (t1 is None or t1 >= DEM_DATETIME):
            out.append(_feature(c, collection, f"Copernicus_DSM_SYN_{c}", geometry, bbox, props))
    elif collection == "io-lulc-9-class":
        for year in LULC_YEARS:
            start = datetime(year, 1, 1, tzinfo=UTC)
            end = datetime(year, 12, 31, 23, 59, 59, tzinfo=UTC)
            if t0 is not None and end < t0 or t1 is not None and start > t1:
                continue
            props = {
                "datetime": None,
                "start_datetime": _iso(start),
                "end_datetime": _iso(end),
                "proj:epsg": epsg,
            }
            out.append(_feature(c, collection, f"{c}-{year}", geometry, bbox, props))
    return out


def search_items(params: Mapping[str, Any], config: ServerConfig = ServerConfig()) -> list[dict]:
    """Every item matching a search's parameters, in a stable order (collection, cell, time)."""
    search = parse_search(params)
    colls = search.collections or COLLECTIONS
    if search.geometry is None:
        raise ValueError("a search of the synthetic API needs a bbox or intersects")
    w, s, e, n = search.geometry.bounds
    t0, t1, query = search.start, search.end, search.query
    cells = GRID.cells_in_bbox(max(w, -180.0), max(s, -90.0), min(e, 180.0), min(n, 90.0))
    out = []
    for coll in sorted(set(colls)):
        if coll not in COLLECTIONS:
            continue
        for c in cells:
            for d in cell_items(c, coll, t0, t1, config):
                if matches_query(d["properties"], query):
                    out.append(d)
    return out


# --- the server --------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (a killed planner) is not the server's error."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class SyntheticStacApi:
    """The synthetic API over HTTP on 127.0.0.1 (a thread of this process; see ``main`` for
    a process of its own). Use it as a context manager; it stops after ``lifetime_s``."""

    def __init__(self, config: ServerConfig = ServerConfig(), log_file: IO[str] | None = None):
        self.config = config
        self._log: list[LogEntry] = []
        self._log_file = log_file
        self._lock = threading.Lock()
        self._throttled_first = 0
        self._tokens = config.throttle_burst
        self._stamp = time.monotonic()
        self._hits: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._pages: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self._pages_bytes = 0
        self.stopped = threading.Event()
        self.t0 = time.monotonic()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real API client expects

            def log_message(self, *args: Any) -> None:
                pass

            def send_body(self, code: int, body: bytes, headers: Mapping[str, str] = {}) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/geo+json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                api.handle(self, "GET", url.path, params)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except json.JSONDecodeError:
                    body = None
                api.handle(self, "POST", urlparse(self.path).path, body)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._timer = threading.Timer(config.lifetime_s, self.stop)
        self._timer.daemon = True

    # -- log ---------------------------------------------------------------------------------

    @property
    def log(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    def _record(self, entry: LogEntry) -> None:
        with self._lock:
            self._log.append(entry)
            if self._log_file is not None:
                self._log_file.write(json.dumps(asdict(entry)) + "\n")
                self._log_file.flush()

    # -- throttling --------------------------------------------------------------------------

    def _admit(self, path: str) -> bool:
        """Whether this request is within the server's rate (and not one of the first
        throttled searches)."""
        cfg = self.config
        with self._lock:
            if path == "/search" and self._throttled_first < cfg.throttle_first:
                self._throttled_first += 1
                return False
            if cfg.throttle_rate is None:
                return True
            now = time.monotonic()
            self._tokens = min(
                cfg.throttle_burst, self._tokens + (now - self._stamp) * cfg.throttle_rate
            )
            self._stamp = now
            # a little slack for clocks: the client's bucket and this one start apart
            if self._tokens >= 1.0 - 1e-3:
                self._tokens -= 1.0
                return True
            return False

    # -- answers -----------------------------------------------------------------------------

    def handle(self, h: Any, method: str, path: str, params: Any) -> None:
        t = time.monotonic() - self.t0
        path = path.rstrip("/") or "/"
        if not self._admit(path):
            self._answer(
                h,
                LogEntry(t, method, path, 429),
                {"code": "TooManyRequests", "description": "slow down"},
                {"Retry-After": str(math.ceil(self.config.retry_after_s))},  # whole seconds (HTTP)
            )
            return
        if self.config.latency_s:
            self.stopped.wait(self.config.latency_s)
        if path == "/":
            self._answer(h, LogEntry(t, method, path, 200), self.landing())
        elif path == "/conformance":
            self._answer(h, LogEntry(t, method, path, 200), {"conformsTo": CONFORMANCE})
        elif path == "/collections":
            doc = {"collections": [self.collection(c) for c in COLLECTIONS]}
            self._answer(h, LogEntry(t, method, path, 200), doc)
        elif path.startswith("/collections/") and path.split("/")[2] in COLLECTIONS:
            self._answer(h, LogEntry(t, method, path, 200), self.collection(path.split("/")[2]))
        elif path == "/search" and isinstance(params, dict):
            try:
                body, features = self.search_answer(method, params)
            except (ValueError, TypeError, KeyError) as err:
                bad = {"code": "BadRequest", "description": str(err)}
                self._answer(h, LogEntry(t, method, path, 400), bad)
                return
            colls = params.get("collections") or ()
            colls = tuple(colls.split(",") if isinstance(colls, str) else colls)
            self._send(h, LogEntry(t, method, path, 200, features, colls), body)
        else:
            self._answer(h, LogEntry(t, method, path, 404), {"code": "NotFound"})

    def _answer(self, h: Any, entry: LogEntry, doc: Any, headers: Mapping[str, str] = {}) -> None:
        self._send(h, entry, _encode(doc), headers)

    def _send(self, h: Any, entry: LogEntry, body: bytes, headers: Mapping[str, str] = {}) -> None:
        """Log the request with the size of its answer, then send the answer (logged first, so
        a client that reads the log after its answer arrives finds the request there)."""
        self._record(replace(entry, bytes=len(body)))
        h.send_body(entry.status, body, headers)

    def search_answer(self, method: str, params: dict[str, Any]) -> tuple[bytes, int]:
        """The encoded page a search asks for and its number of features, from the answer
        cache when the same request came before."""
        key = json.dumps([method, params], sort_keys=True, default=str)
        with self._lock:
            hit = self._pages.get(key)
            if hit is not None:
                self._pages.move_to_end(key)
                return hit
        page = self.page(method, params)
        answer = (_encode(page), len(page["features"]))
        with self._lock:
            if key not in self._pages:
                self._pages[key] = answer
                self._pages_bytes += len(answer[0])
            while self._pages and self._pages_bytes > self.config.answer_cache_mb * 1e6:
                _, (old, _n) = self._pages.popitem(last=False)
                self._pages_bytes -= len(old)
        return answer

    def _all_hits(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The full result of a search (cached by its parameters without the page token, so
        paging costs one generation)."""
        key = json.dumps({k: v for k, v in params.items() if k != "token"}, sort_keys=True)
        with self._lock:
            hit = self._hits.get(key)
            if hit is not None:
                self._hits.move_to_end(key)
                return hit
        hits = search_items(params, self.config)
        with self._lock:
            self._hits[key] = hits
            while len(self._hits) > 64:
                self._hits.popitem(last=False)
        return hits

    def page(self, method: str, p: dict[str, Any]) -> dict[str, Any]:
        limit = max(1, min(int(p.get("limit") or 10), self.config.max_page))
        return search_page(self._all_hits(p), p, method, self.url, limit)

    def collection(self, cid: str) -> dict[str, Any]:
        return collection_doc(cid, f"synthetic {cid}", _iso(EPOCH))

    def landing(self) -> dict[str, Any]:
        return landing_doc(self.url, "terraloom-synthetic", "terraloom's synthetic global STAC API")

    # -- lifetime ----------------------------------------------------------------------------

    def start(self) -> SyntheticStacApi:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> SyntheticStacApi:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def max_requests_in_window(times: list[float], window: float) -> int:
    """The most requests that arrived within any ``window`` seconds (a sliding window over
    sorted arrival times): what a rate assertion on the server's log compares."""
    ts = sorted(times)
    best = lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def read_log(path: str) -> list[LogEntry]:
    """A JSON-lines request log written by the server process."""
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                d["collections"] = tuple(d.get("collections") or ())
                out.append(LogEntry(**d))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="serve the synthetic global STAC API on 127.0.0.1")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    p.add_argument("--throttle-rate", type=float, help="server-side requests/s (429 above)")
    p.add_argument("--retry-after", type=float, default=1.0)
    p.add_argument("--lifetime", type=float, default=600.0, help="stop after this many seconds")
    p.add_argument("--log", help="append every request to this JSON-lines file")
    args = p.parse_args(argv)
    try:
        cfg = ServerConfig(
            latency_s=args.latency,
            throttle_rate=args.throttle_rate,
            retry_after_s=args.retry_after,
            lifetime_s=args.lifetime,
        )
    except ValueError as err:
        print(f"stac_server: error: {err}", file=sys.stderr)
        return 2
    log = open(args.log, "a") if args.log else None  # noqa: SIM115 (open for the lifetime)
    try:
        with SyntheticStacApi(cfg, log) as api:
            print(f"url={api.url}", flush=True)
            api.stopped.wait(cfg.lifetime_s + 1.0)
    finally:
        if log is not None:
            log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "COLLECTIONS",
    "LogEntry",
    "ServerConfig",
    "SyntheticStacApi",
    "cell_items",
    "main",
    "max_requests_in_window",
    "read_log",
    "search_items",
]
