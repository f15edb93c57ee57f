"""Keep credentials out of everything a job writes or prints.

Configs travel with the stores they built (``_build/manifest.json`` is copied with the
corpus) and appear in error messages, so before a config is stored, compared or shown it
goes through :func:`redact`: the value of every credential-like key becomes
:data:`REDACTED`, header blocks are dropped whole (any header may carry a credential) and
``user:password@`` is cut out of URLs. The key stays, so a reader still sees *that*
credentials were given, never *which*.

Credentials do not change the bytes a job produces, so two configs that differ only in a
secret value compare equal after redaction: a resume with a rotated token is the same job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"

#: Keys whose whole value is a set of HTTP headers (GDAL's ``GDAL_HTTP_HEADERS``, ...).
_HEADER_KEYS = re.compile(r"(^|_)HEADERS?$")
#: Credential-like key names: secrets, tokens, passwords, signatures, and the ``KEY``s that
#: are credentials (access/API/private/account keys, ``*_KEY``, ``*_KEY_ID``), not e.g.
#: a "key" meaning a dictionary or cache key.
_SECRET_KEY = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|(^|_)PWD$|USERPWD|CREDENTIAL|AUTHORIZATION|SIGNATURE"
    r"|(^|_)SAS(_|$)|CONNECTION_STRING|ACCESS_KEY|API_?KEY|PRIVATE_?KEY|ACCOUNT_KEY"
    r"|SSLKEY|(^|_)KEY(_ID)?$|_KEY(_ID)?$|COOKIE",
    re.IGNORECASE,
)
#: A value that carries a credential whatever its key is called.
_SECRET_VALUE = re.compile(
    r"(^|\b)(authorization|proxy-authorization|x-api-key|cookie)\s*:|^\s*(bearer|basic)\s+\S",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    """True for a key whose value is (or may contain) a credential."""
    k = str(key).strip()
    return bool(_SECRET_KEY.search(k) or _HEADER_KEYS.search(k.upper()))


def redact_url(value: str) -> str:
    """``scheme://user:pw@host/...`` -> ``scheme://<redacted>@host/...``; others unchanged."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return REDACTED
    if parts.username is None and parts.password is None:
        return value
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{REDACTED}@{host}", parts.path, parts.query, parts.fragment))


def redact_value(key: str | None, value: Any) -> Any:
    """The value to store for ``key``: :data:`REDACTED` for credentials, else ``value``
    (with URL user info and credential-bearing strings redacted, recursively)."""
    if key is not None and is_secret_key(key):
        return REDACTED if value not in (None, "") else value
    return redact(value)


def _is_pair_list(obj: Any) -> bool:
    return (
        isinstance(obj, list | tuple)
        and bool(obj)
        and all(isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) for p in obj)
    )


def redact(obj: Any) -> Any:
    """A copy of a JSON-like object (dicts, lists, (key, value) pair lists such as
    ``gdal_options``, strings) with every credential replaced by :data:`REDACTED`."""
    if isinstance(obj, Mapping):
        return {k: redact_value(str(k), v) for k, v in obj.items()}
    if _is_pair_list(obj):
        pairs = [[k, redact_value(k, v)] for k, v in obj]
        return pairs if isinstance(obj, list) else tuple(tuple(p) for p in pairs)
    if isinstance(obj, list | tuple):
        items = [redact(x) for x in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, str):
        if _SECRET_VALUE.search(obj):
            return REDACTED
        return redact_url(obj)
    return obj
