"""Earth Engine quota rules: request sizing, backoff, what is retried, the endpoint."""

from __future__ import annotations

import pytest

from terraloom.pipeline.ee_quota import (
    EE_MAX_REQUEST_BYTES,
    HIGH_VOLUME_URL,
    EeRequestConfig,
    EeRequestError,
    backoff_delay,
    call_with_retries,
    is_retryable,
    split_request,
)


class _Resp:
    def __init__(self, status: int) -> None:
        self.status = status


class HttpError(Exception):
    """Shaped like googleapiclient's HttpError (``resp.status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.resp = _Resp(status)


class EEException(Exception):
    pass


def _ee_error(status: int, message: str) -> EEException:
    """What the ee client raises: an EEException while handling the HttpError."""
    try:
        raise HttpError(status, message)
    except HttpError:
        try:
            raise EEException(message)  # noqa: B904 - the ee client chains implicitly
        except EEException as exc:
            return exc


def test_a_sample_fits_one_request_and_big_grids_are_split() -> None:
    # 264 x 264 px x 12 bands x 8 B = 6.7 MB, under the 48 MiB limit: one request
    (one,) = split_request(12, 264, 264, 8)
    assert one.bands == tuple(range(12)) and (one.row0, one.row1) == (0, 264)
    # bands first: 3 bands of 100 x 100 x 8 B fit a 250 kB request -> groups of 3
    parts = split_request(7, 100, 100, 8, max_bytes=250_000)
    assert [p.bands for p in parts] == [(0, 1, 2), (3, 4, 5), (6,)]
    # then rows, when one band is over the limit
    parts = split_request(2, 100, 100, 8, max_bytes=30_000)
    assert [(p.bands, p.row0, p.row1) for p in parts] == [
        ((0,), 0, 37),
        ((0,), 37, 74),
        ((0,), 74, 100),
        ((1,), 0, 37),
        ((1,), 37, 74),
        ((1,), 74, 100),
    ]
    assert all(100 * p.height * len(p.bands) * 8 <= 30_000 for p in parts)
    with pytest.raises(ValueError, match="one row"):
        split_request(1, 10_000, 10, 8, max_bytes=1_000)
    assert EE_MAX_REQUEST_BYTES == 50331648


def test_backoff_doubles_and_is_capped() -> None:
    cfg = EeRequestConfig(backoff_s=0.5, backoff_max_s=3.0)
    assert [backoff_delay(a, cfg) for a in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_throttling_server_errors_and_timeouts_are_retried_client_errors_are_not() -> None:
    assert is_retryable(_ee_error(429, "Too many concurrent aggregations."))
    assert is_retryable(_ee_error(503, "unavailable"))
    assert is_retryable(TimeoutError("timed out"))
    assert not is_retryable(_ee_error(400, "Image asset 'x' not found."))
    assert not is_retryable(_ee_error(403, "Permission denied"))
    assert not is_retryable(ValueError("bad"))


def test_call_with_retries_gives_up_with_the_earth_engine_message() -> None:
    cfg = EeRequestConfig(backoff_s=1.0, max_retries=2)
    calls: list[int] = []
    slept: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _ee_error(500, "Internal error.")
        return "ok"

    assert call_with_retries(flaky, cfg, sleep=slept.append) == "ok"
    assert slept == [1.0, 2.0]

    def down() -> str:
        raise _ee_error(503, "Service unavailable.\ndetails follow")

    with pytest.raises(EeRequestError) as err:
        call_with_retries(down, cfg, sleep=slept.append)
    assert str(err.value) == "HTTP 503: Service unavailable. (after 3 attempts)"
    assert err.value.status == 503 and err.value.attempts == 3


def test_endpoint_and_limits() -> None:
    assert EeRequestConfig().endpoint == HIGH_VOLUME_URL
    assert EeRequestConfig(high_volume=False).endpoint is None  # the client's standard one
    assert EeRequestConfig(url="http://127.0.0.1:9/").endpoint == "http://127.0.0.1:9"
    for bad in ({"max_concurrent": 0}, {"max_retries": -1}, {"timeout_s": 0}):
        with pytest.raises(ValueError, match="earthengine"):
            EeRequestConfig(**bad)  # type: ignore[arg-type]
