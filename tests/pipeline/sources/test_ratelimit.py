"""The per-source request-rate limit: a token bucket shared by a worker's threads, held by a
server's Retry-After; checked against the synthetic STAC API's request log."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from shapely.geometry import box

from terraloom.pipeline.sources.ratelimit import TokenBucket, shared_bucket, worker_share
from terraloom.pipeline.sources.stac_api import StacApiSource
from terraloom.pipeline.world.stac_server import (
    ServerConfig,
    SyntheticStacApi,
    max_requests_in_window,
)

JUNE = (datetime(2023, 6, 1, tzinfo=UTC), datetime(2023, 6, 30, 23, 59, 59, tzinfo=UTC))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_bucket_rate_burst_and_hold() -> None:
    clock = FakeClock()
    b = TokenBucket(4.0, burst=2, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        assert b.acquire()
    # 2 at once, then one every 1/4 s
    assert clock.now == pytest.approx(8 * 0.25)
    b.hold(3.0)
    start = clock.now
    assert b.acquire()
    assert clock.now >= start + 3.0  # nothing before the Retry-After has passed
    assert not b.acquire(deadline=clock.now + 0.01)  # the next token is 1/4 s away
    assert b.granted == 11
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError):
            TokenBucket(bad)
    assert worker_share(10.0, 4) == 2.5 and worker_share(None, 4) is None
    assert shared_bucket("http://x", 2.0) is shared_bucket("http://x", 2.0)


def _search(src: StacApiSource, west: float) -> None:
    src.search("sentinel-2-l2a", box(west, 45.9, west + 0.1, 46.0), JUNE)


def test_threads_of_a_worker_share_the_rate(tmp_path) -> None:
    """Four threads, each its own source object, one process: the server sees the process's
    rate, not four times it."""
    rate = 5.0
    with SyntheticStacApi(ServerConfig(lifetime_s=60)) as api:
        srcs = [
            StacApiSource(api.url, cache_dir=tmp_path, rate_limit=rate, use_cache=False)
            for _ in range(4)
        ]
        threads = [
            threading.Thread(
                target=lambda s=s, i=i: [_search(s, 10 + i + k / 10) for k in range(3)]
            )
            for i, s in enumerate(srcs)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        times = [e.t for e in api.log]
    assert len(times) >= 4 * 3
    # burst 1 + rate x window, +1 for arrival jitter
    for window in (1.0, 2.0):
        assert max_requests_in_window(times, window) <= 1 + rate * window + 1


def test_retry_after_holds_every_thread_of_the_worker(tmp_path) -> None:
    """A 429 with Retry-After to one thread: no thread of the process asks before it passed."""
    cfg = ServerConfig(throttle_first=1, retry_after_s=2, lifetime_s=60)
    with SyntheticStacApi(cfg) as api:
        a, b = (
            StacApiSource(
                api.url, cache_dir=tmp_path, rate_limit=50.0, use_cache=False, backoff_factor=0.001
            )
            for _ in range(2)
        )
        a._open(), b._open()  # landing pages first, so the first search is the throttled one
        first = threading.Thread(target=_search, args=(a, 10.0))
        first.start()
        assert a.bucket is b.bucket is not None
        for _ in range(1000):  # until `a` has its 429 (bounded: 10 s)
            if a.bucket.held() > 0 or not first.is_alive():
                break
            threading.Event().wait(0.01)
        assert a.bucket.held() > 0
        _search(b, 11.0)  # another thread, after the 429: must wait for the hold
        first.join(30)
        log = api.log
    t429 = next(e.t for e in log if e.status == 429)
    after = [e.t for e in log if e.t > t429]
    assert len(after) >= 2  # the retry of `a` and the search of `b`
    assert min(after) >= t429 + 2.0 - 0.05
