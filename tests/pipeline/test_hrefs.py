"""The href policy: what catalog hrefs may point at, and its reject through the build."""

from __future__ import annotations

import copy
import functools
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyproj import Transformer
from range_server import RangeHandler
from sample_kit import Synth, grid_transform, plan_row, write_raster

from terraloom.pipeline.build import BuildInputError, scope_config
from terraloom.pipeline.cli import main as cli_main
from terraloom.pipeline.hrefs import (
    DEFAULT_SCHEMES,
    REMOTE_SCHEMES,
    HrefPolicy,
    HrefScope,
    href_refusal,
    plan_scope,
    scope_metadata,
)
from terraloom.pipeline.sample import BuildConfig, build_block
from terraloom.schemas.tables import RejectReason, from_rows, read_table, write_geoparquet

LON0, LAT0 = 15.3, 45.5
EPSG = 32633
S2_ONLY = {"modalities": ("S2L2A",), "required": ("S2L2A",), "http_max_retry": 0}


def _tif(path: Path) -> str:
    """A real GeoTIFF (written by rasterio); its file:// href."""
    data = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    return write_raster(path, data, crs=EPSG, transform=grid_transform(EPSG, LON0, LAT0))


# --------------------------------------------------------------------------- local files


def test_local_files_only_under_the_catalog_root_or_an_allowed_root(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "catalog", tmp_path / "elsewhere"
    inside = _tif(root / "item" / "B04.tif")
    outside = _tif(elsewhere / "secret.tif")
    policy = HrefPolicy().scoped(HrefScope((str(root),)))
    assert href_refusal(inside, policy) is None
    assert href_refusal(str(root / "item" / "B04.tif"), policy) is None  # plain path too
    why = href_refusal(outside, policy)
    assert why is not None and "outside the catalog root" in why and "--allow-href-root" in why
    # escapes through .. and through a symlink inside the root are resolved first
    assert href_refusal(f"{root}/item/../../elsewhere/secret.tif", policy) is not None
    (root / "link.tif").symlink_to(elsewhere / "secret.tif")
    assert href_refusal(str(root / "link.tif"), policy) is not None
    # the user widens it
    wide = HrefPolicy(roots=(str(elsewhere),)).scoped(HrefScope((str(root),)))
    assert href_refusal(outside, wide) is None and href_refusal(inside, wide) is None
    # a plan without a recorded scope: only the user's roots
    assert href_refusal(inside, HrefPolicy().scoped(None)) is not None
    # a missing file under the root is not refused: the read reports it as unreachable
    assert href_refusal(str(root / "gone.tif"), policy) is None


def test_devices_pseudo_files_and_fifos_are_refused_even_under_an_allowed_root(
    tmp_path: Path,
) -> None:
    everything = HrefPolicy(roots=("/",))
    for href in ("/dev/stdin", "file:///dev/stdin", "/dev/zero", "/proc/self/environ"):
        why = href_refusal(href, everything)
        assert why is not None and "system path" in why, href
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)  # stat only: opening it would block
    why = href_refusal(str(fifo), HrefPolicy(roots=(str(tmp_path),)))
    assert why is not None and "not a regular file" in why


@pytest.mark.parametrize(
    "href",
    [
        "/vsicurl/http://169.254.169.254/latest/meta-data",
        "/vsizip//data/archive.zip/B04.tif",
        "/VSIZIP/data/archive.zip/B04.tif",
        "file:///vsizip/data/archive.zip/B04.tif",
        "/vsis3/bucket/key.tif",
    ],
)
def test_gdal_virtual_file_system_prefixes_are_refused(href: str) -> None:
    why = href_refusal(href, HrefPolicy(roots=("/",), allow_private_hosts=True))
    assert why is not None and "virtual file system" in why


# --------------------------------------------------------------------------- hosts


@pytest.mark.parametrize(
    ("href", "kind"),
    [
        ("http://127.0.0.1:8080/a.tif", "loopback"),
        ("https://127.1.2.3/a.tif", "loopback"),
        ("http://[::1]/a.tif", "loopback"),
        ("http://[::ffff:127.0.0.1]/a.tif", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/a.tif", "private"),
        ("http://192.168.1.20/a.tif", "private"),
        ("https://user:pw@172.16.0.9/a.tif", "private"),
        ("http://0.0.0.0/a.tif", "unspecified"),
    ],
)
def test_loopback_link_local_and_private_hosts_are_refused_unless_allowed(
    href: str, kind: str
) -> None:
    def no_dns(host: str) -> list[str]:
        raise AssertionError(f"an address literal needs no lookup ({host})")

    why = href_refusal(href, HrefPolicy(), resolve=no_dns)
    assert why is not None and kind in why and "--allow-host" in why
    from urllib.parse import urlparse

    host = urlparse(href).hostname
    assert host is not None
    assert href_refusal(href, HrefPolicy(hosts=(host,)), resolve=no_dns) is None
    assert href_refusal(href, HrefPolicy(allow_private_hosts=True), resolve=no_dns) is None
    assert href_refusal(href, HrefPolicy(hosts=("10.9.9.9",)), resolve=no_dns) is not None


def test_names_resolving_to_private_addresses_are_refused_without_contacting_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_connect(self: socket.socket, *args: Any) -> None:
        raise AssertionError("the policy must not contact a host")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connect)
    names = {
        "metadata.internal": ["169.254.169.254"],
        "nas.corp.example": ["192.168.0.5"],
        "db.corp.example": ["203.0.113.1", "10.0.0.7"],  # any private address refuses
        "tiles.example.org": ["93.184.216.34", "2606:2800:220:1::1"],
    }

    def resolve(host: str) -> list[str]:
        return names[host]

    policy = HrefPolicy()
    for host, kind in [
        ("metadata.internal", "link-local"),
        ("nas.corp.example", "private"),
        ("db.corp.example", "private"),
    ]:
        why = href_refusal(f"https://{host}/a.tif", policy, resolve=resolve)
        assert why is not None and f"resolves to the {kind}" in why, host
        assert (
            href_refusal(f"https://{host}/a.tif", HrefPolicy(hosts=(host,)), resolve=resolve)
            is None
        )
    assert href_refusal("https://tiles.example.org/a.tif", policy, resolve=resolve) is None
    # the real resolver (the hosts file, no traffic): localhost is loopback
    why = href_refusal("http://localhost:9/a.tif", policy)
    assert why is not None and "loopback" in why
    # s3/gs/az name buckets, not hosts: nothing to resolve
    assert href_refusal("s3://10.0.0.1/key.tif", policy, resolve=resolve) is None


# --------------------------------------------------------------------------- schemes


def test_schemes_are_limited_to_the_ones_the_source_declares(tmp_path: Path) -> None:
    tif = _tif(tmp_path / "a.tif")
    default = HrefPolicy(roots=(str(tmp_path),))
    assert default.schemes == DEFAULT_SCHEMES
    for href in ("ftp://tiles.example.org/a.tif", "memory://bucket/a.tif", "zip://a.tif::/x.zip"):
        why = href_refusal(href, default)
        assert why is not None and "scheme" in why and "--allow-scheme" in why, href
    assert href_refusal("memory://bucket/a.tif", HrefPolicy(extra_schemes=("MEMORY",))) is None
    # a STAC API declares remote schemes only: a local href from it is refused
    api = HrefPolicy(roots=(str(tmp_path),)).scoped(HrefScope((), REMOTE_SCHEMES))
    assert href_refusal(tif, api) is not None and "'file'" in str(href_refusal(tif, api))
    assert href_refusal("https://tiles.example.org/a.tif", api, resolve=lambda h: ()) is None


def test_a_plan_records_its_scope_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    scope = HrefScope((str(tmp_path / "cat"),), ("file", "HTTPS"))
    assert scope.schemes == ("file", "https")
    assert plan_scope(scope_metadata(scope)) == scope
    assert plan_scope({}) is None
    for bad in (b"{", b'{"roots": "x", "schemes": []}', b'{"roots": []}'):
        with pytest.raises(ValueError, match="malformed href scope"):
            plan_scope({b"terraloom:href_scope": bad})
    plan = tmp_path / "plan.parquet"
    table = from_rows("plan", []).replace_schema_metadata(
        {b"terraloom:href_scope": b'{"roots": 1}'}
    )
    write_geoparquet("plan", table, plan)
    with pytest.raises(BuildInputError, match="malformed href scope"):
        scope_config(BuildConfig(), plan)


def test_the_planner_records_the_static_catalog_root(tiny_plan: tuple[Path, Any]) -> None:
    plan, _ = tiny_plan
    scope = plan_scope(pq.read_schema(plan).metadata)
    assert scope is not None and scope.schemes == DEFAULT_SCHEMES
    (root,) = scope.roots
    hrefs = [
        a["href"]
        for row in read_table("plan", plan).slice(0, 3).to_pylist()
        for sc in row["scenes"]
        for a in sc["assets"]
    ]
    assert hrefs and all(href_refusal(h, HrefPolicy().scoped(scope)) is None for h in hrefs)
    assert Path(root).name == "world" and (Path(root) / "world.json").is_file()


# --------------------------------------------------------------------------- through the build


_CountingHandler = RangeHandler


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[type[_CountingHandler], str, Path]]:
    """(handler class with its request count, base URL, served directory) on 127.0.0.1."""
    directory = tmp_path / "served"
    directory.mkdir()
    handler = type("Handler", (_CountingHandler,), {"requests": 0})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}", directory
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def s2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A Sentinel-2 scene in a 'catalog' directory and a plan row reading it."""
    root = tmp_path_factory.mktemp("catalog")
    x, y = Transformer.from_crs(4326, EPSG, always_xy=True).transform(LON0, LAT0)
    ul = (round((x - 1700) / 60) * 60, round((y + 1700) / 60) * 60)
    scene = Synth(root, LON0, LAT0).s2_scene("S2", EPSG, ul, 3400.0)
    return {"root": root, "scene": scene, "t": grid_transform(EPSG, LON0, LAT0)}


def _row(s2: dict[str, Any], i: int, **hrefs: str) -> dict[str, Any]:
    scene = copy.deepcopy(s2["scene"])
    for a in scene["assets"]:
        a["href"] = hrefs.get(a["band"], a["href"])
    return plan_row(f"s{i}", EPSG, s2["t"], [scene], row=i)


def _b04(s2: dict[str, Any]) -> str:
    return next(a["href"] for a in s2["scene"]["assets"] if a["band"] == "B04")


def test_build_rejects_refused_hrefs_as_href_not_allowed_and_reads_nothing(
    s2: dict[str, Any], served: tuple[type[_CountingHandler], str, Path], tmp_path: Path
) -> None:
    handler, url, directory = served
    src = Path(_b04(s2).removeprefix("file://"))
    outside = tmp_path / "outside" / "B04.tif"
    outside.parent.mkdir()
    shutil.copy(src, outside)
    shutil.copy(src, directory / "B04.tif")
    rows = [
        _row(s2, 0),
        _row(s2, 1, B04=outside.as_uri()),
        _row(s2, 2, B04=f"{url}/B04.tif"),
        _row(s2, 3, B04="/dev/stdin"),
        _row(s2, 4, B04=f"/vsizip/{outside}"),
        _row(s2, 5, B04="http://169.254.169.254/latest/B04.tif"),
        _row(s2, 6, B04="ftp://tiles.example.org/B04.tif"),
    ]
    strict = BuildConfig(**S2_ONLY, href_policy=HrefPolicy().scoped(HrefScope((str(s2["root"]),))))
    results = build_block(rows, strict)
    assert results[0].reject is None, results[0].reject
    for r in results[1:]:
        assert r.reject is not None, r.sample_id
        assert (r.reject["reason"], r.reject["modality"]) == (
            RejectReason.HREF_NOT_ALLOWED.value,
            "S2L2A",
        ), r.reject
    assert "outside the catalog root" in results[1].reject["message"]  # type: ignore[index]
    assert "loopback" in results[2].reject["message"]  # type: ignore[index]
    assert handler.requests == 0  # refused before any I/O
    # widened: the same file and the opted-in loopback server are read and accepted
    wide = BuildConfig(
        **S2_ONLY,
        http_timeout_s=5,
        href_policy=HrefPolicy(roots=(str(outside.parent),), hosts=("127.0.0.1",)).scoped(
            HrefScope((str(s2["root"]),))
        ),
    )
    ok = build_block(rows[:3], wide)
    assert [r.reject for r in ok] == [None, None, None]
    assert handler.requests > 0
    assert ok[1].arrays is not None and ok[0].arrays is not None
    np.testing.assert_array_equal(ok[1].arrays["S2L2A"], ok[0].arrays["S2L2A"])
    np.testing.assert_array_equal(ok[2].arrays["S2L2A"], ok[0].arrays["S2L2A"])


def test_cli_build_uses_the_plan_scope_and_the_widening_flags(
    s2: dict[str, Any], tmp_path: Path
) -> None:
    outside = tmp_path / "outside" / "B04.tif"
    outside.parent.mkdir()
    shutil.copy(Path(_b04(s2).removeprefix("file://")), outside)
    table = from_rows("plan", [_row(s2, 0), _row(s2, 1, B04=outside.as_uri())])
    plan = tmp_path / "plan.parquet"
    meta = {**(table.schema.metadata or {}), **scope_metadata(HrefScope((str(s2["root"]),)))}
    write_geoparquet("plan", table.replace_schema_metadata(meta), plan)
    assert plan_scope(pq.read_schema(plan).metadata) == HrefScope((str(s2["root"]),))
    args = ["build", "--plan", str(plan), "--modalities", "S2L2A", "--required", "S2L2A"]
    args += ["--shard-samples", "2", "--no-progress"]
    assert cli_main([*args, "--out", str(tmp_path / "strict")]) == 0
    rejects = read_table("rejects", tmp_path / "strict" / "rejects.parquet").to_pylist()
    assert [(r["row"], r["reason"]) for r in rejects] == [(1, "href_not_allowed")]
    widened = [*args, "--out", str(tmp_path / "wide"), "--allow-href-root", str(outside.parent)]
    assert cli_main(widened) == 0
    assert read_table("rejects", tmp_path / "wide" / "rejects.parquet").num_rows == 0
    assert read_table("index", tmp_path / "wide" / "index.parquet").num_rows == 2


def test_cli_flags_build_the_policy(tmp_path: Path) -> None:
    from terraloom.pipeline.cli import _config_from_args, build_parser

    args = build_parser().parse_args(
        ["build", "--plan", "p", "--out", "o"]
        + ["--allow-href-root", str(tmp_path), "--allow-href-root", str(tmp_path / "b")]
        + ["--allow-host", "LocalHost", "--allow-private-hosts", "--allow-scheme", "memory"]
    )
    policy = _config_from_args(args).href_policy
    assert policy == HrefPolicy(
        roots=(str(tmp_path), str(tmp_path / "b")),
        hosts=("localhost",),
        allow_private_hosts=True,
        extra_schemes=("memory",),
    )
    plain = build_parser().parse_args(["build", "--plan", "p", "--out", "o"])
    assert _config_from_args(plain).href_policy == HrefPolicy()
