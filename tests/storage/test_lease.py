"""terraloom.storage.lease: exclusive create, refusal with a one-line message, stale takeover, races."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from terraloom.storage.lease import LeaseHeld, LeaseLost, acquire, is_stale, read_lease
from terraloom.storage.location import Location
from tests.storage.racing import race


def _foreign_record(
    path: Path, *, expires_in: float, pid: int = 1, host: str = "elsewhere"
) -> None:
    now = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "format": "terraloom-lease",
                "version": 1,
                "token": "t-foreign",
                "owner": {"pid": pid, "host": host, "job": "build"},
                "ttl_s": 60,
                "acquired_at": now - 10,
                "expires_at": now + expires_in,
            }
        )
    )


def test_acquire_records_owner_and_refuses_a_second_holder(tmp_path: Path) -> None:
    path = tmp_path / "out" / "lease.json"
    with acquire(path, {"job": "build"}, ttl=60) as lease:
        rec = read_lease(path)
        assert rec is not None
        assert rec["token"] == lease.token
        assert rec["owner"] == {"pid": os.getpid(), "host": socket.gethostname(), "job": "build"}
        assert 59 < rec["expires_at"] - rec["acquired_at"] <= 60
        with pytest.raises(LeaseHeld) as err:
            acquire(path, {"job": "other"}, ttl=60)
        msg = str(err.value)
        assert "\n" not in msg and f"pid {os.getpid()}" in msg and "(build)" in msg
        assert err.value.holder["token"] == lease.token
    assert not path.exists()  # released on exit
    acquire(path, ttl=60).release()  # free again


def test_live_foreign_lease_is_refused_expired_one_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    _foreign_record(path, expires_in=30)
    with pytest.raises(LeaseHeld, match="held by pid 1 on elsewhere"):
        acquire(path, ttl=10)
    assert read_lease(path)["token"] == "t-foreign"  # type: ignore[index]
    _foreign_record(path, expires_in=-1)
    lease = acquire(path, {"job": "new"}, ttl=10)
    assert lease.took_over is not None and lease.took_over["token"] == "t-foreign"
    assert read_lease(path)["token"] == lease.token  # type: ignore[index]
    lease.release()
    assert not path.exists() and not list(tmp_path.glob(".lease.json.takeover-*"))


def test_lease_of_a_dead_process_on_this_host_is_stale_at_once(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    path = tmp_path / "lease.json"
    _foreign_record(path, expires_in=3600, pid=pid, host=socket.gethostname())
    assert is_stale(read_lease(path) or {})
    with acquire(path, ttl=10) as lease:
        assert lease.took_over is not None and lease.took_over["owner"]["pid"] == pid


def test_renew_extends_and_a_taken_over_holder_loses(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    first = acquire(path, ttl=0.5)
    before = first.expires_at
    time.sleep(0.05)
    first.renew()
    assert first.expires_at > before and read_lease(path)["expires_at"] == first.expires_at  # type: ignore[index]
    # let it expire while the holder stalls: another process (here: another lease) takes over
    deadline = time.time() + 10
    while time.time() < first.expires_at and time.time() < deadline:
        time.sleep(0.05)
    second = acquire(path, ttl=60)
    with pytest.raises(LeaseLost):
        first.renew()
    first.release()  # must not delete the new holder's lease
    assert read_lease(path)["token"] == second.token  # type: ignore[index]
    second.release()


def test_keep_alive_renews_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    with acquire(path, ttl=0.3) as lease, lease.keep_alive(interval_s=0.05):
        deadline = time.time() + 10
        start = lease.expires_at
        while lease.expires_at <= start + 0.2 and time.time() < deadline:
            time.sleep(0.05)
        assert lease.expires_at > start + 0.2
        with pytest.raises(LeaseHeld):
            acquire(path, ttl=1)


def test_unreadable_lease_is_held_until_older_than_the_ttl(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    path.write_bytes(b"")  # a holder between create and write
    with pytest.raises(LeaseHeld, match="being created"):
        acquire(path, ttl=60)
    old = time.time() - 120
    os.utime(path, (old, old))  # ... or one killed right there, long ago
    with acquire(path, ttl=60) as lease:
        assert read_lease(path)["token"] == lease.token  # type: ignore[index]


_SETUP = """
from terraloom.storage.lease import LeaseHeld, acquire
from terraloom.storage.location import Location
held = []
"""


def _round(path: object) -> str:
    """One race for the lease at ``path``: ``won`` or ``held`` (the winner keeps it)."""
    return f"""
try:
    held.append(acquire({str(path)!r}, {{"job": "racer"}}, ttl=60))
except LeaseHeld:
    print("held")
else:
    print("won")
"""


def test_racing_processes_exactly_one_wins(tmp_path: Path) -> None:
    """Four real processes released at once onto a fresh path, then onto one stale lease."""
    fresh, stale = tmp_path / "fresh/lease.json", tmp_path / "stale/lease.json"
    _foreign_record(stale, expires_in=-5)
    _, rounds = race(_SETUP, [_round(fresh), _round(stale)], tmp_path)
    for name, outs in zip(("fresh", "stale"), rounds):
        assert sorted(outs) == ["held", "held", "held", "won"], name


def test_bad_ttl(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ttl"):
        acquire(tmp_path / "l", ttl=0)


# ---- the same lease on object stores: memory:// and a real S3 server --------------------


@pytest.fixture(params=["memory", "s3"])
def remote_root(request: pytest.FixtureRequest) -> Location:
    name = "memory_root" if request.param == "memory" else "s3_bucket"
    return Location.parse(request.getfixturevalue(name)) / "out/_build"


def _foreign_object(loc: Location, *, expires_in: float) -> None:
    now = time.time()
    rec = {"format": "terraloom-lease", "version": 1, "token": "t-foreign", "ttl_s": 60,
           "owner": {"pid": 1, "host": "elsewhere", "job": "build"},
           "acquired_at": now - 10, "expires_at": now + expires_in}  # fmt: skip
    loc.write_bytes(json.dumps(rec).encode())


def test_object_store_lease_acquire_refuse_takeover_lose(remote_root: Location) -> None:
    path = remote_root / "lease.json"
    with acquire(str(path), {"job": "build"}, ttl=60) as lease:
        assert read_lease(path)["token"] == lease.token  # type: ignore[index]
        with pytest.raises(LeaseHeld) as err:
            acquire(path, ttl=60)
        assert "\n" not in str(err.value) and "(build)" in str(err.value)
        assert str(path) in str(err.value)
        lease.renew()
        assert read_lease(path)["expires_at"] == lease.expires_at  # type: ignore[index]
    assert not path.exists()

    _foreign_object(path, expires_in=30)
    with pytest.raises(LeaseHeld, match="held by pid 1 on elsewhere"):
        acquire(path, ttl=10)
    _foreign_object(path, expires_in=-1)
    taker = acquire(path, {"job": "new"}, ttl=60)
    assert taker.took_over is not None and taker.took_over["token"] == "t-foreign"
    assert read_lease(path)["token"] == taker.token  # type: ignore[index]
    taker.release()
    assert remote_root.listdir() == []  # lease and claim gone


def test_object_store_lease_taken_over_while_stalled(remote_root: Location) -> None:
    path = remote_root / "lease.json"
    first = acquire(path, ttl=0.5)
    deadline = time.time() + 10
    while time.time() < first.expires_at + 0.05 and time.time() < deadline:
        time.sleep(0.05)
    second = acquire(path, ttl=60)
    assert second.took_over is not None and second.took_over["token"] == first.token
    with pytest.raises(LeaseLost):
        first.renew()
    first.release()  # must not delete the new holder's lease
    assert read_lease(path)["token"] == second.token  # type: ignore[index]
    second.release()


def test_s3_racing_processes_exactly_one_wins(s3_bucket: str, tmp_path: Path) -> None:
    """Four processes (environment pointed at the test server, client warmed up before the
    start) race for one fresh S3 lease, then for one stale lease."""
    fresh = Location.parse(s3_bucket) / "fresh/_build/lease.json"
    stale = Location.parse(s3_bucket) / "stale/_build/lease.json"
    _foreign_object(stale, expires_in=-5)
    warm = f"Location.parse({s3_bucket!r}).exists()\n"
    _, rounds = race(_SETUP + warm, [_round(fresh), _round(stale)], tmp_path)
    for name, outs in zip(("fresh", "stale"), rounds):
        assert sorted(outs) == ["held", "held", "held", "won"], name
