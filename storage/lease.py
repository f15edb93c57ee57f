"""Exclusive, expiring leases: one writer at a time prepares (or runs) a job on one output.

A lease is a small JSON object at a fixed path, created with *create-if-absent* and never
overwritten blindly. The same three rules map one-to-one onto an object store's conditional
requests, so a later backend changes the calls, not the protocol:

======================  ====================================  ===============================
operation               local file system (this module)       object store
======================  ====================================  ===============================
acquire                 ``open(O_CREAT | O_EXCL)``            PUT ``If-None-Match: *``
take over a stale one   O_EXCL claim named after its token,   PUT ``If-Match: <stale etag>``
                        then replace it
renew / release         only if the token is still ours       PUT / DELETE ``If-Match: <etag>``
======================  ====================================  ===============================

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
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def read_lease(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The lease record at ``path``; ``None`` when absent; ``{}`` when unreadable (a holder
    between create and write, or a torn file)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


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


def _write_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` if it does not exist; False if it does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _claim_path(path: Path, token: str) -> Path:
    return path.with_name(f".{path.name}.takeover-{token}")


@dataclass
class Lease:
    """A held lease. Use as a context manager, or call :meth:`release` yourself."""

    path: Path
    token: str
    owner: dict[str, Any]
    ttl_s: float
    acquired_at: float
    expires_at: float
    took_over: dict[str, Any] | None = None  # the stale record this lease replaced
    _claim: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _released: bool = False

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

    def _check_ours(self) -> None:
        current = read_lease(self.path)
        if current is None or current.get("token") != self.token:
            raise LeaseLost(
                f"lease {self.path} is no longer ours (it expired and was taken over); "
                "stop and re-run when the other job is done"
            )

    def renew(self) -> None:
        """Push the expiry ``ttl_s`` from now; raises :class:`LeaseLost` if taken over."""
        with self._lock:
            if self._released:
                return
            self._check_ours()
            self.expires_at = time.time() + self.ttl_s
            _replace(self.path, self._encoded())

    def release(self) -> None:
        """Give the lease up (only if it is still ours); idempotent."""
        with self._lock:
            if self._released:
                return
            self._released = True
            current = read_lease(self.path)
            if current is not None and current.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            if self._claim is not None:
                self._claim.unlink(missing_ok=True)

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

        thread = threading.Thread(target=loop, name=f"lease-{self.path.name}", daemon=True)
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
    path: str | os.PathLike[str], owner_info: Mapping[str, Any] | None = None, ttl: float = 300.0
) -> Lease:
    """Take the lease at ``path`` or raise :class:`LeaseHeld`.

    ``owner_info`` (JSON-able, e.g. ``{"job": "build"}``) is stored with pid, host and time;
    keep secrets out of it, the record is a plain file. A stale lease is taken over: only
    one of several processes racing for the same stale lease wins, because each first
    creates (O_EXCL) a claim file named after the stale lease's token.
    """
    if ttl <= 0:
        raise ValueError(f"lease ttl must be > 0, got {ttl}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    owner = {"pid": os.getpid(), "host": socket.gethostname(), **dict(owner_info or {})}
    lease = Lease(path, uuid.uuid4().hex, owner, float(ttl), now, now + ttl)
    if _write_exclusive(path, lease._encoded()):
        return lease
    current = read_lease(path)
    if current is None:  # released between our create and our read: one more try
        if _write_exclusive(path, lease._encoded()):
            return lease
        raise LeaseHeld(path, read_lease(path))
    if current:
        if not is_stale(current):
            raise LeaseHeld(path, current)
        stale_token = str(current.get("token", ""))
    else:
        # Unreadable: a holder between create and write, or one killed right there. Only
        # an unreadable file older than the TTL is stale; its identity is its stat.
        try:
            st = path.stat()
        except FileNotFoundError:
            raise LeaseHeld(path, None) from None
        if st.st_mtime > now - ttl:
            raise LeaseHeld(path, None)
        stale_token = f"unreadable-{st.st_mtime_ns}-{st.st_size}"
    claim = _claim_path(path, stale_token)
    try:
        won = _write_exclusive(claim, lease._encoded())
    except OSError as exc:  # pragma: no cover - e.g. a read-only dir: same as held
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise LeaseHeld(path, current) from exc
        raise
    if not won:
        raise LeaseHeld(path, read_lease(path) or current)
    again = read_lease(path)
    if again is None or (again.get("token") if again else stale_token) != stale_token:
        claim.unlink(missing_ok=True)  # released or replaced meanwhile: not ours to take
        if again is None and _write_exclusive(path, lease._encoded()):
            return lease
        raise LeaseHeld(path, read_lease(path))
    _replace(path, lease._encoded())
    lease.took_over = current or {"token": stale_token}
    lease._claim = claim
    for old in path.parent.glob(f".{path.name}.takeover-*"):
        if old != claim:  # claims on tokens that are gone can never win again
            old.unlink(missing_ok=True)
    return lease
