"""Exclusive, expiring leases: one writer at a time prepares (or runs) a job on one output.

A lease is a small JSON object at a fixed location (a local path or an object-store URL,
see :mod:`terraloom.storage.location`), created with *create-if-absent* and never
overwritten blindly. The rules map onto each backend's conditional requests
(:mod:`terraloom.storage.commit`):

======================  ====================================  ===============================
operation               local, GCS, Azure                     S3 (and memory)
======================  ====================================  ===============================
acquire                 create-if-absent (link / ``O_EXCL``,  PUT ``If-None-Match: *``
                        ``ifGenerationMatch=0``,
                        ``If-None-Match: *``)
take over a stale one   create-if-absent claim named after    the same claim, then PUT
                        its token, re-check, then overwrite   ``If-Match: <stale etag>``
renew / release         only if the token is still ours       PUT / DELETE ``If-Match: <etag>``
                        (check, then write)
======================  ====================================  ===============================

Where there is no conditional overwrite (left column) one window stays: a holder whose
lease has *already expired* renewing between a taker's re-check and its overwrite. Holders
renew well before expiry (:meth:`Lease.keep_alive` every ``ttl/3``), so this needs a holder
stalled for longer than its TTL; on S3 the If-Match closes it.

A lease is *stale* when its expiry has passed or, on the same host, when the process that
holds it no longer exists (a SIGKILLed build is resumable at once instead of after the
TTL). Holders of long jobs call :meth:`Lease.renew` (or run :meth:`Lease.keep_alive`) so
that their lease never expires under them. Times are wall-clock (``time.time``): leases
are shared between processes and hosts, which share no monotonic clock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from terraloom.storage.commit import (
    create_exclusive,
    delete_if_match,
    read_tagged,
    replace_if_match,
    supports_conditional_replace,
)
from terraloom.storage.location import Location, LocationError

LEASE_FORMAT = "terraloom-lease"
LEASE_VERSION = 1


class LeaseHeld(RuntimeError):
    """The lease belongs to another live holder; ``str()`` is a one-line message for users."""

    def __init__(self, path: str | os.PathLike[str], holder: Mapping[str, Any] | None) -> None:
        self.path = str(path)
        self.holder = dict(holder or {})
        super().__init__(self._message())

    def _message(self) -> str:
        h = self.holder
        if not h:
            return f"{self.path} is being created by another process; try again in a moment"
        owner = h.get("owner", {})
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
        job = f" ({owner['job']})" if owner.get("job") else ""
        until = _fmt_time(h.get("expires_at"))
        return (
            f"{self.path} is held by {who}{job} since {_fmt_time(h.get('acquired_at'))}, "
            f"lease valid until {until}; wait for it to finish, or if it is dead and on another "
            f"host, wait until {until} or delete {self.path}"
        )


class LeaseLost(RuntimeError):
    """Our lease was taken over (it expired while we held it): stop writing."""


def _fmt_time(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(t)))
    except (TypeError, ValueError, OverflowError):
        return "?"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_lease(path: str | os.PathLike[str] | Location) -> dict[str, Any] | None:
    """The lease record at ``path`` (a local path or a location URL); ``None`` when absent;
    ``{}`` when unreadable (a holder between create and write, or a torn file)."""
    got = read_tagged(Location.parse(path))
    return None if got is None else _decode(got[0])


def is_stale(record: Mapping[str, Any], now: float | None = None) -> bool:
    """Expired, or held by a process of this host that no longer exists."""
    now = time.time() if now is None else now
    try:
        if float(record["expires_at"]) <= now:
            return True
    except (KeyError, TypeError, ValueError):
        return False  # not a complete record: never taken over on its content alone
    owner = record.get("owner") or {}
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _pid_alive(owner["pid"])
    return False


def _replace(loc: Location, data: bytes) -> None:
    """Unconditional overwrite: locally through a temp file and rename (readers never see a
    torn record); on an object store a PUT is already whole."""
    if not loc.is_local:
        loc.write_bytes(data)
        return
    path = loc.local_path
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_CLAIM_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _claim_location(loc: Location, token: str) -> Location:
    return loc.parent / f".{loc.name}.takeover-{_CLAIM_UNSAFE.sub('_', token)[:120]}"


@dataclass
class Lease:
    """A held lease. Use as a context manager, or call :meth:`release` yourself."""

    location: Location
    token: str
    owner: dict[str, Any]
    ttl_s: float
    acquired_at: float
    expires_at: float
    took_over: dict[str, Any] | None = None  # the stale record this lease replaced
    _claim: Location | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _released: bool = False

    @property
    def path(self) -> Location:
        """Where the lease lives (a Location; a local one passes wherever a path does)."""
        return self.location

    def record(self) -> dict[str, Any]:
        return {
            "format": LEASE_FORMAT,
            "version": LEASE_VERSION,
            "token": self.token,
            "owner": self.owner,
            "ttl_s": self.ttl_s,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
        }

    def _encoded(self) -> bytes:
        return (json.dumps(self.record(), sort_keys=True) + "\n").encode()

    def _lost(self) -> LeaseLost:
        return LeaseLost(
            f"lease {self.location} is no longer ours (it expired and was taken over); "
            "stop and re-run when the other job is done"
        )

    def _ours(self) -> str:
        """The version tag of our record; :class:`LeaseLost` if it is no longer ours."""
        got = read_tagged(self.location)
        if got is None or _decode(got[0]).get("token") != self.token:
            raise self._lost()
        return got[1]

    def renew(self) -> None:
        """Push the expiry ``ttl_s`` from now; raises :class:`LeaseLost` if taken over.

        Where the backend has conditional writes (S3 ``If-Match``) the renewal only lands on
        our own record; elsewhere a takeover between the check and the write is possible
        only after our lease expired, which :meth:`keep_alive` prevents."""
        with self._lock:
            if self._released:
                return
            tag = self._ours()
            expires_at = time.time() + self.ttl_s
            previous, self.expires_at = self.expires_at, expires_at
            if supports_conditional_replace(self.location):
                if not replace_if_match(self.location, self._encoded(), tag):
                    self.expires_at = previous
                    raise self._lost()
            else:
                _replace(self.location, self._encoded())

    def release(self) -> None:
        """Give the lease up (only if it is still ours); idempotent."""
        with self._lock:
            if self._released:
                return
            self._released = True
            got = read_tagged(self.location)
            if got is not None and _decode(got[0]).get("token") == self.token:
                if supports_conditional_replace(self.location):
                    delete_if_match(self.location, got[1])
                else:
                    self.location.delete()
            if self._claim is not None:
                self._claim.delete()

    @contextlib.contextmanager
    def keep_alive(self, interval_s: float | None = None) -> Any:
        """Renew in a background thread (every ``ttl/3`` by default) for the ``with`` body.

        A renewal that finds the lease taken over stops the thread; the next explicit
        :meth:`renew` (e.g. before a job commits its final result) raises LeaseLost.
        """
        stop = threading.Event()
        interval = interval_s if interval_s is not None else max(self.ttl_s / 3.0, 0.05)

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.renew()
                except (LeaseLost, OSError):
                    return

        thread = threading.Thread(target=loop, name=f"lease-{self.location.name}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(
    path: str | os.PathLike[str] | Location,
    owner_info: Mapping[str, Any] | None = None,
    ttl: float = 300.0,
) -> Lease:
    """Take the lease at ``path`` (a local path or a location URL) or raise :class:`LeaseHeld`.

    ``owner_info`` (JSON-able, e.g. ``{"job": "build"}``) is stored with pid, host and time;
    keep secrets out of it, the record is a plain object. A stale lease is taken over: only
    one of several processes racing for the same stale lease wins, because each first
    creates (create-if-absent) a claim object named after the stale lease's token; where
    the backend has conditional writes the replacement is also conditional on the stale
    record's version.
    """
    if ttl <= 0:
        raise ValueError(f"lease ttl must be > 0, got {ttl}")
    loc = Location.parse(path)
    if loc.read_only:
        raise LocationError(f"{loc} is read-only; a lease needs a writable location")
    now = time.time()
    owner = {"pid": os.getpid(), "host": socket.gethostname(), **dict(owner_info or {})}
    lease = Lease(loc, uuid.uuid4().hex, owner, float(ttl), now, now + ttl)
    if create_exclusive(loc, lease._encoded()):
        return lease
    got = read_tagged(loc)
    if got is None:  # released between our create and our read: one more try
        if create_exclusive(loc, lease._encoded()):
            return lease
        raise LeaseHeld(loc, read_lease(loc))
    current, tag = _decode(got[0]), got[1]
    if current:
        if not is_stale(current):
            raise LeaseHeld(loc, current)
        stale_token = str(current.get("token", ""))
    else:
        # Unreadable: a holder between create and write, or one killed right there. Only
        # an unreadable record older than the TTL is stale; its identity is its version.
        try:
            mtime = loc.mtime()
        except FileNotFoundError:
            raise LeaseHeld(loc, None) from None
        if mtime > now - ttl:
            raise LeaseHeld(loc, None)
        stale_token = f"unreadable-{tag}"
    claim = _claim_location(loc, stale_token)
    try:
        won = create_exclusive(claim, lease._encoded())
    except OSError as exc:  # pragma: no cover - e.g. a read-only dir: same as held
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise LeaseHeld(loc, current) from exc
        raise
    if not won:
        raise LeaseHeld(loc, read_lease(loc) or current)
    if supports_conditional_replace(loc):
        replaced = replace_if_match(loc, lease._encoded(), tag)
    else:
        # No conditional overwrite (local, GCS, Azure): the claim serialises takers; check
        # the record is still the stale one, then overwrite. The window left is a holder
        # whose lease had already expired renewing in between; keep_alive prevents that.
        again = read_tagged(loc)
        replaced = again is not None and again[1] == tag
        if replaced:
            _replace(loc, lease._encoded())
    if not replaced:
        claim.delete()  # released or replaced meanwhile: not ours to take
        if read_tagged(loc) is None and create_exclusive(loc, lease._encoded()):
            return lease
        raise LeaseHeld(loc, read_lease(loc))
    lease.took_over = current or {"token": stale_token}
    lease._claim = claim
    prefix = f".{loc.name}.takeover-"
    for name in loc.parent.listdir():
        if name.startswith(prefix) and name != claim.name:
            (loc.parent / name).delete()  # claims on tokens that are gone can never win again
    return lease
