"""STAC API search (Planetary Computer, Earth Search, any STAC API) via pystac-client.

Searches page through ``next`` links, retry with exponential backoff on connection errors and
429/5xx answers, and are cached on disk keyed by a hash of the request, so a re-run of a plan
(or a resumed one) asks the API nothing it already asked. The cache stores the raw item JSON,
unsigned: Planetary Computer SAS tokens expire, so hrefs are signed when items are mapped, on
every run, never stored signed in the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from pipeline.sources.base import (
    Source,
    SourceError,
    SourceItem,
    TimeRange,
    item_from_stac,
)

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


def _format_dt(t: Any) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t is not None else ".."


class StacApiSource(Source):
    """Items from a STAC API. ``sign``: None signs Planetary Computer hrefs when the
    ``planetary-computer`` package is installed, True requires it, False never signs;
    ``signer`` overrides all of that with any ``href -> href`` function."""

    name = "stac"

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
        max_retries: int = 5,
        backoff_factor: float = 0.5,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise SourceError(f"STAC API url must be http(s), got {url!r}")
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
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.requests = 0  # searches that went to the API (cache misses)
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
            from pystac_client.exceptions import APIError
            from pystac_client.stac_api_io import StacApiIO
            from urllib3.util.retry import Retry

            retry = Retry(
                total=self.max_retries,
                backoff_factor=self.backoff_factor,
                status_forcelist=RETRY_STATUS,
                allowed_methods=None,  # retry POST searches too
                raise_on_status=False,
            )
            io = StacApiIO(headers=self.headers, timeout=self.timeout, max_retries=retry)
            try:
                self._client = Client.open(self.url, stac_io=io)
            except (APIError, OSError, ValueError) as err:
                raise SourceError(f"cannot open STAC API {self.url}: {err}") from None
        return self._client

    def _fetch(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        from pystac_client.exceptions import APIError

        client = self._open()
        try:
            search = client.search(**params, max_items=self.max_items, method=self.method)
            return list(search.items_as_dicts())
        except NotImplementedError as err:
            raise SourceError(f"{self.url} does not support item search: {err}") from None
        except (APIError, OSError) as err:
            raise SourceError(
                f"STAC search on {self.url} failed after {self.max_retries} retries: {err}"
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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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
        try:
            ids = [c.id for c in self._open().get_collections()]
        except SourceError:
            raise
        except Exception:  # an API without /collections: matching reports misses generically
            return None
        self.requests += 1
        self._cache_put(key, {"collections-list": True}, [{"id": i} for i in ids])
        return ids

    # -- search --------------------------------------------------------------------------------

    def search_params(
        self,
        collection: str,
        geometry: BaseGeometry,
        time_range: TimeRange | None,
        query: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"collections": [collection], "limit": self.limit}
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
        collection: str,
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

    def search(
        self,
        collection: str,
        geometry: BaseGeometry,
        time_range: TimeRange | None,
        query: Mapping[str, Any] | None = None,
    ) -> list[SourceItem]:
        out = []
        for d in self.search_dicts(collection, geometry, time_range, query):
            d.setdefault("collection", collection)
            out.append(item_from_stac(d, rewrite_s3=self.rewrite_s3, signer=self.signer))
        return out
