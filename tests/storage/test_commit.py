"""terraloom.storage.commit: write-once markers on local disk, memory:// and a real S3 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from terraloom.storage.commit import (
    AlreadyCommitted,
    create_exclusive,
    delete_if_match,
    is_committed,
    read_tagged,
    replace_if_match,
    write_once,
)
from terraloom.storage.location import Location, LocationError
from tests.storage.racing import race


@pytest.fixture(params=["local", "memory", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "local":
        return Location.parse(str(tmp_path / "store"))
    if request.param == "memory":
        return Location.parse(request.getfixturevalue("memory_root"))
    return Location.parse(request.getfixturevalue("s3_bucket")) / "store"


def test_write_once_commits_once_and_never_overwrites(root: Location) -> None:
    marker = root / "_commits/shard-0000.json"
    assert not is_committed(marker)
    assert write_once(marker, '{"n": 1}') is True
    assert write_once(marker, b'{"n": 2}') is False
    with pytest.raises(AlreadyCommitted, match="already committed"):
        write_once(marker, b'{"n": 3}', exist_ok=False)
    assert marker.read_bytes() == b'{"n": 1}' and is_committed(marker)


def test_replace_and_delete_if_match(root: Location) -> None:
    obj = root / "lease.json"
    assert read_tagged(obj) is None
    assert create_exclusive(obj, b"v1")
    got = read_tagged(obj)
    assert got is not None and got[0] == b"v1"
    if root.scheme == "file":
        with pytest.raises(LocationError, match="no conditional replace"):
            replace_if_match(obj, b"v2", got[1])
        return
    assert replace_if_match(obj, b"v2", got[1]) is True
    assert replace_if_match(obj, b"v3", got[1]) is False  # stale tag: refused
    assert obj.read_bytes() == b"v2"
    assert delete_if_match(obj, got[1]) is False and obj.exists()
    now = read_tagged(obj)
    assert now is not None and delete_if_match(obj, now[1]) is True
    assert not obj.exists()
    assert replace_if_match(obj, b"v4", now[1]) is False and not obj.exists()


def test_local_marker_is_never_seen_torn(tmp_path: Path) -> None:
    """The local create links a finished file to its name: no temp files are left and the
    marker holds its whole content at the moment it exists."""
    marker = Location.parse(str(tmp_path / "m.json"))
    payload = b"x" * 1_000_000
    assert write_once(marker, payload)
    assert marker.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_read_only_location_cannot_commit() -> None:
    with pytest.raises(LocationError, match="read-only"):
        write_once("https://example.invalid/x", b"1")


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_processes_exactly_one_commits(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Four real processes released at once onto one marker (the S3 ones through the server
    in this process: their environment points at it, their client warmed up first)."""
    if backend == "s3":
        marker = str(Location.parse(request.getfixturevalue("s3_bucket")) / "_commits/b0.json")
    else:
        marker = str(tmp_path / "_commits" / "b0.json")
    setup = "from terraloom.storage.commit import write_once\n"
    if backend == "s3":  # the client's first request (imports, session) before the start
        bucket = str(Location.parse(marker).parent.parent)
        setup += f"from terraloom.storage.location import Location\nLocation.parse({bucket!r}).exists()\n"
    once = (
        f"print('won' if write_once({marker!r}, ('writer %d' % os.getpid()).encode()) else 'lost')"
    )
    pids, (outs,) = race(setup, [once], tmp_path)
    assert sorted(outs) == ["lost", "lost", "lost", "won"]
    assert Location.parse(marker).read_bytes() == f"writer {pids[outs.index('won')]}".encode()
