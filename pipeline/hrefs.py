"""The href policy: which asset hrefs of a plan the build may open at all.

Asset hrefs come from third-party catalogs, so they are untrusted: without a check an
href can name a local file outside the catalog (``/home/me/secret.tif``), a device that
blocks the build forever (``/dev/stdin``), a GDAL virtual file system chain
(``/vsicurl/...``, ``/vsizip/...``) or a host on the machine's own network
(``http://127.0.0.1``, the ``169.254.169.254`` cloud metadata address, ``10.x``,
``192.168.x``). :func:`href_refusal` says, without opening anything and without
contacting the host, why an href must not be read; the readers turn that into an
``href_not_allowed`` reject.

What is allowed comes from two places. The plan records an :class:`HrefScope` of its
source (a static catalog's root directories and the URL schemes the source can produce;
see :func:`source_scope`), written into the plan file's metadata by the planner. The
user widens it with :class:`HrefPolicy` fields (``--allow-href-root``, ``--allow-host``,
``--allow-private-hosts``, ``--allow-scheme`` on the build CLI). See docs/security.md.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import socket
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = [
    "DEFAULT_SCHEMES",
    "PLAN_SCOPE_KEY",
    "REMOTE_SCHEMES",
    "HrefPolicy",
    "HrefScope",
    "href_refusal",
    "plan_scope",
    "scope_metadata",
    "source_scope",
]

#: Schemes GDAL reads natively with range requests (see ``pipeline.readers.gdal_path``).
REMOTE_SCHEMES: tuple[str, ...] = ("http", "https", "s3", "gs", "az")
#: Schemes allowed when no source declared its own: local files plus the remote ones.
DEFAULT_SCHEMES: tuple[str, ...] = ("file", *REMOTE_SCHEMES)
#: Plan-file (Parquet schema) metadata key holding the JSON of the source's HrefScope.
PLAN_SCOPE_KEY = b"terraloom:href_scope"
#: Schemes whose "host" is a network host (for s3/gs/az it is a bucket name).
_HOST_SCHEMES = ("http", "https", "ftp", "ftps")
#: Pseudo file systems that are never sample data, whatever root is allowed.
_SYSTEM_DIRS = ("/dev", "/proc", "/sys")

Resolver = Callable[[str], Iterable[str]]


def _norm_root(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _lower_unique(values: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        v = str(v).strip().lower()
        if v and v not in out:
            out.append(v)
    return tuple(out)


@dataclass(frozen=True)
class HrefScope:
    """Where a source's hrefs may legitimately point; recorded in the plan by the planner.

    ``roots``: directories local hrefs must lie under (a static catalog's own
    directory; empty for an API source). ``schemes``: URL schemes the source produces
    (a plain path counts as ``file``).
    """

    roots: tuple[str, ...] = ()
    schemes: tuple[str, ...] = DEFAULT_SCHEMES

    def __post_init__(self) -> None:
        object.__setattr__(self, "roots", tuple(dict.fromkeys(_norm_root(r) for r in self.roots)))
        object.__setattr__(self, "schemes", _lower_unique(self.schemes))

    def to_json(self) -> str:
        return json.dumps({"roots": list(self.roots), "schemes": list(self.schemes)})

    @classmethod
    def from_json(cls, text: str | bytes) -> HrefScope:
        """Parse a recorded scope; anything malformed is a ValueError (the plan is bad)."""
        try:
            doc = json.loads(text)
            roots, schemes = doc["roots"], doc["schemes"]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"malformed href scope in the plan metadata: {exc}") from None
        if not (isinstance(roots, list) and isinstance(schemes, list)) or not all(
            isinstance(v, str) for v in [*roots, *schemes]
        ):
            raise ValueError("malformed href scope in the plan metadata: expected lists of strings")
        return cls(tuple(roots), tuple(schemes))


@dataclass(frozen=True)
class HrefPolicy:
    """The hrefs a build may open; frozen, hashable and JSON-able (part of BuildConfig).

    ``roots`` None means no source declared where its local files are (a caller handing
    plan rows to ``build_block`` directly): local files are allowed anywhere but system
    directories. ``run_build`` always scopes the policy with the plan's
    :class:`HrefScope` (:meth:`scoped`), so a build from a plan file reads local files
    only under the catalog's root and the user's ``roots``.
    """

    #: Extra directories local files may be read from (``--allow-href-root``).
    roots: tuple[str, ...] | None = None
    #: Host names or addresses admitted even when loopback/private (``--allow-host``).
    hosts: tuple[str, ...] = ()
    #: Admit every loopback, link-local and private-range host (``--allow-private-hosts``).
    allow_private_hosts: bool = False
    #: Schemes the plan's source declared; None: :data:`DEFAULT_SCHEMES`.
    source_schemes: tuple[str, ...] | None = None
    #: Schemes allowed on top of the source's (``--allow-scheme``, e.g. ``memory``).
    extra_schemes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.roots, (str, os.PathLike)) or isinstance(self.hosts, str):
            raise TypeError("HrefPolicy roots and hosts are tuples of strings")
        if self.roots is not None:
            object.__setattr__(
                self, "roots", tuple(dict.fromkeys(_norm_root(r) for r in self.roots))
            )
        object.__setattr__(self, "hosts", _lower_unique(h.strip("[]") for h in self.hosts))
        if self.source_schemes is not None:
            object.__setattr__(self, "source_schemes", _lower_unique(self.source_schemes))
        object.__setattr__(self, "extra_schemes", _lower_unique(self.extra_schemes))

    @property
    def schemes(self) -> tuple[str, ...]:
        base = DEFAULT_SCHEMES if self.source_schemes is None else self.source_schemes
        return _lower_unique((*base, *self.extra_schemes))

    def scoped(self, scope: HrefScope | None) -> HrefPolicy:
        """This policy for a plan whose source declared ``scope`` (None: nothing declared,
        so local files only under the user's roots, schemes the defaults)."""
        scope = scope if scope is not None else HrefScope()
        return replace(
            self,
            roots=(*(self.roots or ()), *scope.roots),
            source_schemes=scope.schemes,
        )


def _scheme(href: str) -> str:
    scheme = urlparse(href).scheme.lower()
    return "file" if len(scheme) <= 1 else scheme  # plain path (or a Windows drive letter)


def _local_path(href: str) -> str:
    if _scheme(href) == "file" and href.lower().startswith("file:"):
        return unquote(urlparse(href).path)
    return href


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _local_refusal(href: str, policy: HrefPolicy) -> str | None:
    path = _local_path(href)
    if path.lower().startswith("/vsi"):
        return f"GDAL virtual file system path {path.split('/')[1]!r} in a catalog href"
    absolute = os.path.abspath(path)
    real = os.path.realpath(absolute)
    for candidate in (absolute, real):
        if any(_under(candidate, d) for d in _SYSTEM_DIRS):
            return f"{candidate} is a system path (devices and pseudo files are never read)"
    try:
        st = os.stat(real)
    except (OSError, ValueError):
        st = None  # missing: the read reports it as unreachable
    if st is not None and not stat.S_ISREG(st.st_mode):
        return f"{real} is not a regular file"
    if policy.roots is not None and not any(_under(real, r) for r in policy.roots):
        allowed = ", ".join(policy.roots) or "none"
        return (
            f"local file {real} is outside the catalog root and allowed roots ({allowed}); "
            "widen with --allow-href-root"
        )
    return None


@functools.lru_cache(maxsize=1024)
def _resolve(host: str) -> tuple[str, ...]:
    """Addresses of a host name (a DNS lookup only; nothing is sent to the host)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return ()  # unresolvable: the read itself fails as unreachable
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def _non_public(address: str) -> str | None:
    """Why an address is on the machine's own networks, or None for a public one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None


def _host_refusal(host: str, policy: HrefPolicy, resolve: Resolver) -> str | None:
    host = host.lower().strip("[]")
    if not host:
        return "URL has no host"
    if host in policy.hosts or policy.allow_private_hosts:
        return None
    kind = _non_public(host)
    if kind is not None:
        return f"host {host} is a {kind} address; widen with --allow-host {host}"
    for address in resolve(host):
        kind = _non_public(address)
        if kind is not None:
            return f"host {host} resolves to the {kind} address {address}; widen with --allow-host {host}"
    return None


def href_refusal(href: str, policy: HrefPolicy, *, resolve: Resolver = _resolve) -> str | None:
    """Why ``href`` must not be read under ``policy`` (one line), or None when it may.

    Opens nothing and contacts no host: a local path is checked with ``stat``, a host
    name is resolved (DNS only) so a name that points at a private address is caught.
    ``resolve`` stands in for the DNS lookup in tests.
    """
    if not isinstance(href, str) or not href:
        return "empty href"
    try:
        return _refusal(href, policy, resolve)
    except ValueError as exc:  # urlparse on a malformed URL (e.g. an unclosed IPv6 bracket)
        return f"malformed href: {exc}"


def _refusal(href: str, policy: HrefPolicy, resolve: Resolver) -> str | None:
    if href.lower().startswith("/vsi"):
        return f"GDAL virtual file system path {href.split('/')[1]!r} in a catalog href"
    scheme = _scheme(href)
    if scheme not in policy.schemes:
        return (
            f"scheme {scheme!r} is not one the source declares ({', '.join(policy.schemes)}); "
            "widen with --allow-scheme"
        )
    if scheme == "file":
        return _local_refusal(href, policy)
    if scheme in _HOST_SCHEMES:
        return _host_refusal(urlparse(href).hostname or "", policy, resolve)
    return None


# --------------------------------------------------------------------------- scopes


def source_scope(source: Any) -> HrefScope:
    """The scope of a planning source: a static catalog's directories and the schemes
    each kind of source produces (an unknown source gets remote schemes only)."""
    from terraloom.pipeline.sources.earthengine import EarthEngineSource
    from terraloom.pipeline.sources.static import StaticSource

    if isinstance(source, StaticSource):
        roots = tuple(dict.fromkeys(str(os.path.dirname(_norm_root(p))) for p in source.paths))
        return HrefScope(roots, DEFAULT_SCHEMES)
    if isinstance(source, EarthEngineSource):
        return HrefScope((), ("ee", "https"))
    return HrefScope((), REMOTE_SCHEMES)


def scope_metadata(scope: HrefScope) -> dict[bytes, bytes]:
    """Parquet schema metadata recording ``scope`` in a plan file."""
    return {PLAN_SCOPE_KEY: scope.to_json().encode()}


def plan_scope(metadata: Mapping[bytes, bytes] | None) -> HrefScope | None:
    """The scope recorded in a plan's schema metadata, None when none was recorded."""
    raw = (metadata or {}).get(PLAN_SCOPE_KEY)
    return None if raw is None else HrefScope.from_json(raw)
