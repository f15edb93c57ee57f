"""A real S3-compatible server on 127.0.0.1 for tests (a pytest plugin, loaded suite-wide).

``s3_server`` (session) starts moto's ``ThreadedMotoServer`` once on a free loopback port;
``s3_bucket`` (per test) points the standard AWS environment at it (``AWS_ENDPOINT_URL``,
fake credentials, a region; subprocesses inherit it), creates a fresh bucket and yields its
URL, ``s3://<bucket>``; the bucket is emptied and removed afterwards. ``memory_root`` is the
fast in-process variant, ``memory://<name>``.

Any test folder can use the fixtures: ``tests/conftest.py`` lists this module in
``pytest_plugins``.

moto checks an ``If-None-Match``/``If-Match`` condition and then writes, as two steps; its
threaded server can interleave two requests between them, where S3 evaluates a conditional
write atomically. The server therefore handles one request at a time, which gives tests S3's
semantics (and costs nothing measurable: moto holds the GIL anyway).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: Environment that would send requests elsewhere or load a developer's real credentials.
CLEARED_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_SECURITY_TOKEN")


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    #: Every request served, ``(method, path?query)`` in arrival order: request counts are
    #: deterministic, so tests bound them (take ``len`` before and after the code measured).
    log: list[tuple[str, str]] = field(default_factory=list, compare=False)


class _Serialised:
    """WSGI middleware: one request at a time (see the module docstring), each logged."""

    def __init__(self, app: Callable[..., Iterable[bytes]], log: list[tuple[str, str]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.log = log

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self.lock:
            query = environ.get("QUERY_STRING") or ""
            path = str(environ.get("PATH_INFO", "")) + (f"?{query}" if query else "")
            self.log.append((str(environ.get("REQUEST_METHOD", "")), path))
            body = self.app(environ, start_response)
            try:
                return list(body)
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    wsgi = server._server  # the werkzeug server; its handler calls ``server.app``
    assert wsgi is not None
    log: list[tuple[str, str]] = []
    wsgi.app = _Serialised(wsgi.app, log)  # type: ignore[method-assign]
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint=f"http://{host}:{port}", log=log)
    finally:
        server.stop()


def point_env_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp: str) -> None:
    """The standard AWS environment of a client of ``endpoint``, and nothing of the user's."""
    for key in CLEARED_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp}/no-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp}/no-aws-credentials")


@pytest.fixture
def s3_bucket(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``s3://<fresh bucket>`` on the test server, with the environment pointed at it."""
    import s3fs

    point_env_at(monkeypatch, s3_server.endpoint, str(tmp_path_factory.getbasetemp()))
    bucket = f"tl-{uuid.uuid4().hex[:16]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server.endpoint, use_listings_cache=False)
    fs.mkdir(bucket)
    try:
        yield f"s3://{bucket}"
    finally:
        fs.rm(bucket, recursive=True)


@pytest.fixture
def memory_root() -> Iterator[str]:
    """``memory://<fresh name>``, removed afterwards."""
    import fsspec

    name = f"tl-{uuid.uuid4().hex[:16]}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)
