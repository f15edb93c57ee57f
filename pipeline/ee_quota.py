"""Earth Engine pixel requests within Earth Engine's quotas: sizing, concurrency, retries.

``ee.data.computePixels`` refuses a request whose answer exceeds a per-request limit
(48 MiB, and 32768 px a side), throttles a project that sends too many requests at once
(HTTP 429) and fails now and then (5xx). This module owns the rules that keep the build
inside those limits; it never imports ``ee`` (the client does):

- :func:`split_request` sizes requests under the byte limit, splitting the bands first
  (each part keeps the whole sample grid) and then the rows of the grid;
- :func:`request_slot` bounds the concurrent requests of a worker process (one
  semaphore per process, shared by every thread of every block);
- :func:`call_with_retries` retries 429, 5xx and transport errors (timeouts, resets)
  with capped exponential backoff, and gives up with an :class:`EeRequestError` carrying
  Earth Engine's own message, which the build records as an ``unreachable_asset`` reject.

Why our own retry loop: the ``ee`` client retries inside ``call.execute`` with an
unbounded random sleep and then raises an ``EEException`` that no longer says which
status it got; the client is set to zero retries, so every attempt is one HTTP request,
counted and timed here.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "EE_MAX_REQUEST_BYTES",
    "EE_MAX_REQUEST_SIDE",
    "EeRequestConfig",
    "EeRequestError",
    "PixelRequest",
    "backoff_delay",
    "call_with_retries",
    "http_status",
    "is_retryable",
    "request_slot",
    "split_request",
]

#: computePixels: "Total request size must be less than or equal to 50331648 bytes".
EE_MAX_REQUEST_BYTES = 48 * 1024 * 1024
#: computePixels: grid dimensions at most 32768 px a side.
EE_MAX_REQUEST_SIDE = 32768
#: The high-volume endpoint (for many small, automated requests such as a corpus build).
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"

T = TypeVar("T")


@dataclass(frozen=True)
class EeRequestConfig:
    """How a worker talks to Earth Engine; part of the build config (no credentials here:
    they come from ``earthengine authenticate`` or ``GOOGLE_APPLICATION_CREDENTIALS``)."""

    #: Cloud project billed for the requests (None: ``EE_PROJECT``, then the credentials').
    project: str | None = None
    #: Use the high-volume endpoint (recommended for builds: many small requests).
    high_volume: bool = True
    #: Endpoint override (a regional or test endpoint); None: the standard or high-volume one.
    url: str | None = None
    #: Bytes of one answer at most; requests are split below it.
    max_request_bytes: int = EE_MAX_REQUEST_BYTES
    #: Requests in flight at once per worker process.
    max_concurrent: int = 8
    #: Retries of a 429 / 5xx / transport failure before the request fails.
    max_retries: int = 5
    #: First backoff in seconds, doubled per retry, capped at ``backoff_max_s``.
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    #: Timeout of one HTTP request in seconds.
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1:
            raise ValueError("earthengine.max_request_bytes must be >= 1")
        if self.max_concurrent < 1:
            raise ValueError("earthengine.max_concurrent must be >= 1")
        if self.max_retries < 0:
            raise ValueError("earthengine.max_retries must be >= 0")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("earthengine backoff must be >= 0")
        if self.timeout_s <= 0:
            raise ValueError("earthengine.timeout_s must be > 0")

    @property
    def endpoint(self) -> str | None:
        """The API base URL to use (None: the ``ee`` client's default endpoint)."""
        if self.url:
            return self.url.rstrip("/")
        return HIGH_VOLUME_URL if self.high_volume else None


class EeRequestError(Exception):
    """A pixel request that failed for good (after its retries); ``message`` is Earth
    Engine's own, ``status`` the last HTTP status (None for a transport failure)."""

    def __init__(self, message: str, status: int | None, attempts: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.attempts = attempts


@dataclass(frozen=True)
class PixelRequest:
    """One computePixels call of a split: band indices and the grid rows it covers."""

    bands: tuple[int, ...]
    row0: int
    row1: int

    @property
    def height(self) -> int:
        return self.row1 - self.row0


def split_request(
    n_bands: int,
    width: int,
    height: int,
    bytes_per_value: int,
    max_bytes: int = EE_MAX_REQUEST_BYTES,
    max_side: int = EE_MAX_REQUEST_SIDE,
) -> list[PixelRequest]:
    """Requests covering ``n_bands`` x ``height`` x ``width`` values, each answer at most
    ``max_bytes``: bands are grouped first (a request keeps the whole grid, so Earth Engine
    computes each band's footprint once), then rows are split when one band is too big."""
    if n_bands < 1 or width < 1 or height < 1:
        raise ValueError("a pixel request needs at least one band and one pixel")
    if width > max_side:
        raise ValueError(f"grid width {width} exceeds Earth Engine's {max_side} px per side")
    per_band = width * height * bytes_per_value
    if per_band <= max_bytes:
        group = max(1, max_bytes // per_band)
        rows = [(0, height)] if height <= max_side else _row_chunks(height, max_side)
        return [
            PixelRequest(tuple(range(b, min(n_bands, b + group))), r0, r1)
            for b in range(0, n_bands, group)
            for r0, r1 in rows
        ]
    rows_per = max(1, min(max_side, max_bytes // (width * bytes_per_value)))
    if width * bytes_per_value > max_bytes:
        raise ValueError(
            f"one row of {width} px x {bytes_per_value} B exceeds the request limit {max_bytes} B"
        )
    return [
        PixelRequest((b,), r0, r1)
        for b in range(n_bands)
        for r0, r1 in _row_chunks(height, rows_per)
    ]


def _row_chunks(height: int, rows: int) -> list[tuple[int, int]]:
    return [(r, min(height, r + rows)) for r in range(0, height, rows)]


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an exception: the ``ee`` client raises ``EEException`` while
    handling googleapiclient's ``HttpError``, which carries ``resp.status``."""
    e: BaseException | None = exc
    for _ in range(6):
        if e is None:
            return None
        resp = getattr(e, "resp", None)
        status = getattr(resp, "status", None) or getattr(e, "status_code", None)
        if isinstance(status, int):
            return status
        if isinstance(status, str) and status.isdigit():
            return int(status)
        e = e.__cause__ or e.__context__
    return None


def is_retryable(exc: BaseException) -> bool:
    """Throttling (429), server errors (5xx) and transport failures are worth retrying;
    4xx answers (bad request, no access, asset not found) are not."""
    status = http_status(exc)
    if status is not None:
        return status == 429 or status >= 500
    e: BaseException | None = exc
    for _ in range(6):
        if e is None:
            return False
        if isinstance(e, (TimeoutError, socket.timeout, ConnectionError)):
            return True
        name = type(e).__name__
        if name in (
            "Timeout",
            "ReadTimeout",
            "ConnectTimeout",
            "ConnectionError",
            "ServerNotFoundError",
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


def backoff_delay(attempt: int, config: EeRequestConfig) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): ``backoff_s * 2**(attempt-1)``,
    capped; deterministic, so a test can count what a throttled build waits."""
    return float(min(config.backoff_max_s, config.backoff_s * math.pow(2.0, attempt - 1)))


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__


def call_with_retries(
    fn: Callable[[], T],
    config: EeRequestConfig,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """``fn()`` with retries of retryable failures; :class:`EeRequestError` when it fails
    for good (a non-retryable error at once, a retryable one after ``max_retries``)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            status = http_status(exc)
            if not is_retryable(exc) or attempt > config.max_retries:
                tried = f" (after {attempt} attempts)" if attempt > 1 else ""
                code = f"HTTP {status}: " if status is not None else ""
                raise EeRequestError(f"{code}{_message(exc)}{tried}", status, attempt) from None
            if on_retry is not None:
                on_retry(attempt, exc)
            sleep(backoff_delay(attempt, config))


_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def request_slot(max_concurrent: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore bounding requests in flight (one per limit value, so
    every block and thread of a worker shares it)."""
    with _SLOTS_LOCK:
        sem = _SLOTS.get(max_concurrent)
        if sem is None:
            sem = _SLOTS[max_concurrent] = threading.BoundedSemaphore(max_concurrent)
        return sem
