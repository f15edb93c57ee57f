"""STAC API search (Planetary Computer, Earth Search, any STAC API) via pystac-client.

Searches page through ``next`` links, retry with exponential backoff on connection errors,
timeouts and 429/5xx answers, and are cached on disk keyed by a hash of the request, so a
re-run of a plan (or a resumed one) asks the API nothing it already asked. The cache stores
the raw item JSON, unsigned: Planetary Computer SAS tokens expire, so hrefs are signed when
items are mapped, on every run, never stored signed in the cache.

Every HTTP request of a source with ``rate_limit`` first takes a token from a bucket shared by
every thread of the process that talks to the same API (:mod:`pipeline.sources.ratelimit`),
retries included; a ``429``/``503`` with ``Retry-After`` holds that bucket, so no thread of the
worker asks again before the server said it may. :meth:`StacApiSource.search_collections`
batches several collections with the same area, period and query into one search.

Every request has a timeout and every search (all its pages and retries) a deadline: a server
that accepts a connection and never answers must fail a plan, not hang it. pystac-client
0.9's ``Client.open`` resets the ``StacApiIO`` timeout to its own ``timeout`` argument (None
by default), so the IO here sets the timeout itself before each request, bounded by what is
left of the deadline, and its retry policy stops retrying once the deadline has passed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from terraloom.pipeline.sources.base import (
    ItemError,
    Search,
    SkippedItem,
    Source,
    SourceError,
    SourceItem,
    TimeRange,
    item_from_stac,
)
from terraloom.pipeline.sources.ratelimit import TokenBucket, shared_bucket

CACHE_VERSION = 1
PLANETARY_COMPUTER = "https://planetarycomputer.microsoft.com/api/stac/v1"
EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
RETRY_STATUS = (429, 500, 502, 503, 504)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "terraloom" / "stac"


def planetary_computer_signer(required: bool = True) -> Callable[[str], str] | None:
    """``planetary_computer.sign`` for hrefs (SAS token), or None if the package is absent."""
    try:
        import planetary_computer
    except ImportError:
        if required:
            raise SourceError(
                "signing Planetary Computer hrefs needs the `planetary-computer` package: "
                "pip install 'terraloom[pc]'"
            ) from None
        return None

    def sign(href: str) -> str:
        if not href.startswith("https://") or ".blob.core.windows.net/" not in href:
            return href
        return str(planetary_computer.sign(href))

    return sign


class _Deadline:
    """The end of the current search (monotonic seconds), shared by the IO and its retries."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.seconds: float | None = None

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def passed(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0

    @contextmanager
    def running(self, seconds: float) -> Iterator[None]:
        self.at, self.seconds = time.monotonic() + seconds, seconds
        try:
            yield
        finally:
            self.at = self.seconds = None


class DeadlineExceeded(Exception):
    """The search's deadline passed before it had its answer."""


class _DeadlineRetry(Retry):
    """urllib3's retry policy that also stops at the search's deadline and never sleeps past it
    (a ``Retry-After: 3600`` must not park the plan for an hour)."""

    deadline: _Deadline | None = None
    bucket: TokenBucket | None = None

    def new(self, **kw: Any) -> _DeadlineRetry:
        out = super().new(**kw)
        out.deadline = self.deadline
        out.bucket = self.bucket
        return out

    def sleep(self, response: Any = None) -> None:
        """Back off (``Retry-After`` when the answer has one, which also holds the shared
        bucket for every thread), then take a token: a retry is a request like any other."""
        if self.bucket is not None and response is not None and self.respect_retry_after_header:
            after = self.get_retry_after(response)
            if after:
                self.bucket.hold(after)
        super().sleep(response)
        if self.bucket is not None:
            at = self.deadline.at if self.deadline is not None else None
            if not self.bucket.acquire(at):
                seconds = self.deadline.seconds if self.deadline is not None else 0
                raise MaxRetryError(
                    None,  # type: ignore[arg-type]
                    "",
                    DeadlineExceeded(f"deadline of {seconds:g} s passed"),
                )

    def increment(
        self, method: str | None = None, url: str | None = None, *args: Any, **kw: Any
    ) -> _DeadlineRetry:
        # raises MaxRetryError once the retries are spent
        out = super().increment(method, url, *args, **kw)
        if self.deadline is not None and self.deadline.passed():
            raise MaxRetryError(
                kw.get("_pool"),  # type: ignore[arg-type]
                url or "",
                DeadlineExceeded(f"deadline of {self.deadline.seconds:g} s passed"),
            )
        return out

    def _cap(self, seconds: float) -> float:
        left = self.deadline.remaining() if self.deadline is not None else None
        return seconds if left is None else max(0.0, min(seconds, left))

    def get_backoff_time(self) -> float:
        return self._cap(super().get_backoff_time())

    def parse_retry_after(self, retry_after: str) -> float:
        """Seconds or an HTTP date, as urllib3; also a fractional number of seconds, which
        some APIs send although HTTP allows only whole ones (urllib3 rejects it)."""
        try:
            seconds = float(retry_after)
        except ValueError:
            return float(super().parse_retry_after(retry_after))
        return max(0.0, seconds) if math.isfinite(seconds) else 0.0

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else self._cap(after)


class _DeadlineIO(StacApiIO):
    """StacApiIO whose per-request timeout is set here, before every request, to the
    configured timeout or what is left of the deadline if less; a request started after the
    deadline fails at once. Setting it per request is what survives ``Client.open``'s reset."""

    def __init__(
        self,
        *,
        timeout: float,
        deadline: _Deadline,
        bucket: TokenBucket | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(timeout=timeout, **kw)
        self.request_timeout = timeout
        self.deadline = deadline
        self.bucket = bucket

    def request(
        self,
        href: str,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> str:
        left = self.deadline.remaining()
        if left is not None and left <= 0:
            raise APIError(f"deadline of {self.deadline.seconds:g} s passed")
        if self.bucket is not None and not self.bucket.acquire(self.deadline.at):
            raise APIError(f"deadline of {self.deadline.seconds:g} s passed")
        left = self.deadline.remaining()
        self.timeout = self.request_timeout if left is None else min(self.request_timeout, left)
        return super().request(href, method=method, headers=headers, parameters=parameters)


def _format_dt(t: Any) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t is not None else ".."


class StacApiSource(Source):
    """Items from a STAC API. ``sign``: None signs Planetary Computer hrefs when the
    ``planetary-computer`` package is installed, True requires it, False never signs;
    ``signer`` overrides all of that with any ``href -> href`` function.

    ``timeout`` bounds each HTTP request, ``deadline`` each search (pages and retries
    included). Malformed items of an answer are skipped and listed by :meth:`skipped_items`.
    One instance searches one request at a time (the deadline is per instance); parallel
    planners each open their own.

    ``rate_limit`` (requests per second, ``burst`` at once) bounds every HTTP request this
    process sends to ``url``, retries included, whichever instance or thread sends it: the
    bucket is shared per process (:func:`~pipeline.sources.ratelimit.shared_bucket`). Several
    worker processes each need their share (``rate / workers``) to keep a global rate."""

    name = "stac"
    DEFAULT_TIMEOUT = 60.0
    DEFAULT_DEADLINE = 300.0
    DEFAULT_RETRIES = 5

    def __init__(
        self,
        url: str,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        sign: bool | None = None,
        signer: Callable[[str], str] | None = None,
        rewrite_s3: bool = True,
        limit: int = 100,
        method: str = "POST",
        max_items: int | None = None,
        max_retries: int = DEFAULT_RETRIES,
        backoff_factor: float = 0.5,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        headers: Mapping[str, str] | None = None,
        rate_limit: float | None = None,
        burst: float = 1.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise SourceError(f"STAC API url must be http(s), got {url!r}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise SourceError(f"STAC API timeout must be > 0 seconds, got {timeout!r}")
        if not (math.isfinite(deadline) and deadline > 0):
            raise SourceError(f"STAC search deadline must be > 0 seconds, got {deadline!r}")
        if max_retries < 0:
            raise SourceError(f"STAC API retries must be >= 0, got {max_retries!r}")
        self.url = url.rstrip("/")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = use_cache
        self.rewrite_s3 = rewrite_s3
        self.limit = limit
        if method.upper() not in ("GET", "POST"):
            raise SourceError(f"search method must be GET or POST, got {method!r}")
        self.method = method.upper()
        self.max_items = max_items
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        #: seconds one HTTP request may wait to connect, and then between bytes of the answer
        self.timeout = timeout
        #: seconds one search (opening the API, all pages, all retries) may take in all
        self.deadline = deadline
        self._deadline = _Deadline()
        self.headers = dict(headers or {})
        self.requests = 0  # searches that went to the API (cache misses)
        if rate_limit is not None and not (math.isfinite(rate_limit) and rate_limit > 0):
            raise SourceError(f"STAC API rate limit must be > 0 requests/s, got {rate_limit!r}")
        self.rate_limit = rate_limit
        self.burst = burst
        self.bucket: TokenBucket | None = (
            shared_bucket(self.url, rate_limit, burst) if rate_limit is not None else None
        )
        if signer is not None:
            self.signer: Callable[[str], str] | None = signer
        elif sign is False:
            self.signer = None
        elif "planetarycomputer" in self.url:
            self.signer = planetary_computer_signer(required=bool(sign))
        elif sign:
            raise SourceError(f"sign=True but {url} is not Planetary Computer; pass a signer")
        else:
            self.signer = None
        self._client: Any = None

    # -- http ----------------------------------------------------------------------------------

    def _open(self) -> Any:
        """Open the API lazily: a fully cached run never touches the network."""
        if self._client is None:
            from pystac_client import Client

            retry = _DeadlineRetry(
                total=self.max_retries,
                backoff_factor=self.backoff_factor,
                status_forcelist=RETRY_STATUS,
                allowed_methods=None,  # retry POST searches too
                raise_on_status=False,
            )
            retry.deadline = self._deadline
            retry.bucket = self.bucket
            io = _DeadlineIO(
                headers=self.headers,
                timeout=self.timeout,
                deadline=self._deadline,
                bucket=self.bucket,
                max_retries=retry,
            )
            try:
                with self._deadline.running(self.deadline):
                    # timeout= too: Client.open hands it to stac_io.update, which would
                    # otherwise set None (the IO sets it per request anyway)
                    self._client = Client.open(self.url, stac_io=io, timeout=self.timeout)
            except (APIError, OSError, ValueError) as err:
                raise SourceError(f"cannot open STAC API {self.url}: {self._why(err)}") from None
        return self._client

    def _why(self, err: Exception) -> str:
        """A one-line reason for a failed request: the deadline, a timeout, or the error."""
        text = " ".join(str(err).split())
        if "DeadlineExceeded" in text or "deadline of" in text:
            return (
                f"no complete answer within the {self.deadline:g} s deadline "
                f"(timeout {self.timeout:g} s per request)"
            )
        if "timed out" in text.lower():
            return f"no answer within {self.timeout:g} s, {self.max_retries} retries ({text[:300]})"
        return text[:500]

    def _fetch(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        client = self._open()
        try:
            with self._deadline.running(self.deadline):
                search = client.search(**params, max_items=self.max_items, method=self.method)
                return list(search.items_as_dicts())
        except NotImplementedError as err:
            raise SourceError(f"{self.url} does not support item search: {err}") from None
        except (APIError, OSError) as err:
            raise SourceError(
                f"STAC search on {self.url} failed after {self.max_retries} retries: "
                f"{self._why(err)}"
            ) from None
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            # a page that is not JSON, or JSON that is not a FeatureCollection: the answer
            # itself is unreadable, not one item of it
            raise SourceError(
                f"STAC search on {self.url} returned an unreadable page: "
                f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            ) from None

    # -- cache ---------------------------------------------------------------------------------

    def request_key(self, params: Mapping[str, Any]) -> str:
        doc = {"v": CACHE_VERSION, "url": self.url, "params": params, "max_items": self.max_items}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json.gz"

    def _cache_get(self, key: str) -> list[dict[str, Any]] | None:
        if not self.use_cache:
            return None
        path = self._cache_path(key)
        try:
            with gzip.open(path, "rt") as f:
                return list(json.load(f)["features"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError):
            return None  # a torn or foreign file: ask again

    def _cache_put(self, key: str, params: Mapping[str, Any], items: list[dict[str, Any]]) -> None:
        if not self.use_cache:
            return
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # pid and thread: two threads of a worker may answer the same request at once
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        with gzip.open(tmp, "wt") as f:
            json.dump(
                {"url": self.url, "params": params, "type": "FeatureCollection", "features": items},
                f,
                default=str,
            )
        os.replace(tmp, path)

    def collections(self) -> list[str] | None:
        """Collection ids the API serves (asked once, cached like searches); None if unknown."""
        key = self.request_key({"collections-list": True})
        cached = self._cache_get(key)
        if cached is not None:
            return [str(c["id"]) for c in cached]
        client = self._open()
        try:
            with self._deadline.running(self.deadline):
                ids = [c.id for c in client.get_collections()]
        except APIError as err:
            if err.status_code is None:  # no answer at all (timeout, refused): say so now
                raise SourceError(
                    f"cannot list the collections of {self.url}: {self._why(err)}"
                ) from None
            return None  # an API without /collections: matching reports misses generically
        except Exception:
            return None
        self.requests += 1
        self._cache_put(key, {"collections-list": True}, [{"id": i} for i in ids])
        return ids

    # -- search --------------------------------------------------------------------------------

    def search_params(
        self,
        collection: str | Sequence[str],
        geometry: BaseGeometry,
        time_range: TimeRange | None,
        query: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        colls = [collection] if isinstance(collection, str) else list(collection)
        params: dict[str, Any] = {"collections": colls, "limit": self.limit}
        if geometry.equals(box(*geometry.bounds)):
            params["bbox"] = [round(v, 9) for v in geometry.bounds]
        else:
            params["intersects"] = mapping(geometry)
        if time_range is not None:
            params["datetime"] = f"{_format_dt(time_range[0])}/{_format_dt(time_range[1])}"
        if query:
            params["query"] = dict(query)
        return params

    def search_dicts(
        self,
        collection: str | Sequence[str],
        geometry: BaseGeometry,
        time_range: TimeRange | None,
        query: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        params = self.search_params(collection, geometry, time_range, query)
        key = self.request_key(params)
        items = self._cache_get(key)
        if items is None:
            items = self._fetch(params)
            self.requests += 1
            self._cache_put(key, params, items)
        return items

    def _search(self, s: Search) -> list[SourceItem]:
        out = []
        for d in self.search_dicts(s.collection, s.geometry, s.time_range, s.query):
            if isinstance(d, dict):
                d.setdefault("collection", s.collection)
            try:
                out.append(item_from_stac(d, rewrite_s3=self.rewrite_s3, signer=self.signer))
            except ItemError as err:
                where = f"{self.url}/search"
                self._skip(SkippedItem(err.reason, str(err), where, s.collection, err.item_id))
        return out

    def search_collections(
        self,
        collections: Sequence[str],
        geometry: BaseGeometry,
        time_range: TimeRange | None,
        query: Mapping[str, Any] | None = None,
    ) -> dict[str, list[SourceItem]]:
        """One search for several collections with the same area, period and query (a
        block's S2 L1C + L2A, its S1 GRD + RTC): collection -> items, fewer requests.

        An item without a collection cannot be told apart and is skipped (``no_collection``);
        with a single collection it is that one's, as in :meth:`search`."""
        wanted = list(dict.fromkeys(collections))
        if len(wanted) == 1:
            return {wanted[0]: self.search(wanted[0], geometry, time_range, query)}
        out: dict[str, list[SourceItem]] = {c: [] for c in wanted}
        for d in self.search_dicts(wanted, geometry, time_range, query):
            try:
                item = item_from_stac(d, rewrite_s3=self.rewrite_s3, signer=self.signer)
            except ItemError as err:
                coll = d.get("collection") if isinstance(d, dict) else None
                self._skip(
                    SkippedItem(
                        err.reason,
                        str(err),
                        f"{self.url}/search",
                        coll if isinstance(coll, str) else ",".join(wanted),
                        err.item_id,
                    )
                )
                continue
            if item.collection in out:
                out[item.collection].append(item)
        return out
