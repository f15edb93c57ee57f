"""A per-source request-rate limit: a token bucket shared by every thread of a process.

STAC APIs throttle (Planetary Computer answers 429 with ``Retry-After``). A planner that
runs blocks on several threads of one worker must stay under the rate as a whole, so the
bucket is looked up by a key (the API's URL) in a process-wide registry, not owned by one
:class:`~pipeline.sources.stac_api.StacApiSource`. A ``Retry-After`` answer holds the whole
bucket: no thread of this worker asks that API again before the server said it may.

Across processes nothing is shared: a job of N workers gives each worker ``rate / N`` (see
:func:`worker_share`), so the global rate is never more than the configured one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` requests per second on average, at most ``burst`` at once.

    :meth:`acquire` blocks until a token is free (or the bucket's hold, set by
    :meth:`hold` after a ``Retry-After``, has passed); it is thread-safe and fair enough
    for a handful of threads (each waiter sleeps outside the lock and retries).
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"request rate must be > 0 per second, got {rate!r}")
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"burst must be >= 1 request, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = clock()
        self._held_until = 0.0
        #: requests let through so far (for reports)
        self.granted = 0

    def _wait_time(self, now: float) -> float:
        """Seconds until a token can be taken (0: take it now). Called under the lock."""
        if now < self._held_until:
            return self._held_until - now
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def acquire(self, deadline: float | None = None) -> bool:
        """Take one token, waiting as needed; False (nothing taken) if the wait would end
        after ``deadline`` (a ``clock()`` time)."""
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_time(now)
                if wait <= 0:
                    self._tokens -= 1.0
                    self.granted += 1
                    return True
            if deadline is not None and now + wait > deadline:
                return False
            self._sleep(wait)

    def held(self) -> float:
        """Seconds the bucket is still held by a ``Retry-After`` (0: not held)."""
        with self._lock:
            return max(0.0, self._held_until - self._clock())

    def hold(self, seconds: float) -> None:
        """Let nothing through for ``seconds`` (a server's ``Retry-After``); the bucket
        restarts empty afterwards so the threads do not all fire at once."""
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        with self._lock:
            until = self._clock() + seconds
            if until > self._held_until:
                self._held_until = until
                self._tokens = 0.0
                self._stamp = until


_REGISTRY: dict[tuple[str, float, float], TokenBucket] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_bucket(key: str, rate: float, burst: float = 1.0) -> TokenBucket:
    """The process's bucket for ``key`` at this rate and burst (created on first use), so
    every source object and thread of a worker talking to one API shares one limit."""
    with _REGISTRY_LOCK:
        bucket = _REGISTRY.get((key, float(rate), float(burst)))
        if bucket is None:
            bucket = _REGISTRY[(key, float(rate), float(burst))] = TokenBucket(rate, burst)
        return bucket


def worker_share(global_rate: float | None, workers: int) -> float | None:
    """Each of ``workers`` processes' share of a global request rate (None: no limit)."""
    if global_rate is None:
        return None
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return global_rate / workers


__all__ = ["TokenBucket", "shared_bucket", "worker_share"]
