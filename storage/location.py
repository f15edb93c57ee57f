"""Store locations: a local path or a URL, parsed and checked before anything is written.

Every store terraloom reads or writes (plan, corpus, token store, tokenizers, runs) is
addressed by a :class:`Location`. Cloud runners share no disk, so a location must be able to
name an object store; users type locations by hand, so a typo must be refused before a job
starts, never turned into a local folder named ``s3:`` (``Path("s3://b/k")`` is the relative
path ``s3:/b/k``, which is how outputs used to vanish).

Accepted forms:

==========================================  =============================================
``/abs/path``, ``rel/path``, ``file:///p``  the local file system (kept a plain path: memory
                                            mapping and ``O_EXCL`` keep working)
``s3://bucket/key``                         S3 or any S3-compatible endpoint (``s3fs``)
``gs://bucket/key``                         Google Cloud Storage (``gcsfs``)
``az://container/key``, ``abfs://...``      Azure Blob / ADLS Gen2 (``adlfs``)
``memory://name/key``                       fsspec's in-process memory store (tests)
``https://host/path`` (also ``http://``)    read-only
==========================================  =============================================

Credentials and endpoints come from the standard environment, read by the backend libraries
themselves (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``/``AWS_REGION``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``), plus ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), which is passed explicitly so that fsspec's filesystem cache keys on
it. Extra *storage options* (``--storage-option key=value``) override them; they travel with a
Location to workers (pickled) but are never part of its ``str``, ``repr`` or equality, and
anything written to a store must go through :func:`terraloom.storage.redact.redact`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import pyarrow.fs
    from fsspec import AbstractFileSystem
    from zarr.abc.store import Store

#: Schemes a location may use, and the optional extra that brings each backend.
SCHEMES: dict[str, str | None] = {
    "file": None,
    "memory": None,
    "s3": "s3",
    "gs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "https": None,
    "http": None,
}
#: Schemes whose locations are written to (``https``/``http`` are read-only).
WRITABLE = frozenset({"file", "memory", "s3", "gs", "az", "abfs"})
#: Object stores: no directories, no rename, whole-object PUTs.
OBJECT_STORES = frozenset({"s3", "gs", "az", "abfs"})

_BACKEND = {"s3": "s3fs", "gs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_SCHEME_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
_ABFS_NETLOC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(@[A-Za-z0-9][A-Za-z0-9.\-]*)?$")
_ACCEPTED = "a local path or one of file://, s3://, gs://, az://, abfs://, memory://, https://"


class LocationError(ValueError):
    """A location that cannot be used; ``str()`` is one line for users (CLIs exit 2)."""


def _refuse(text: str, why: str) -> LocationError:
    shown = text if len(text) <= 200 else text[:197] + "..."
    return LocationError(f"bad location {shown!r}: {why}")


def _check_key(text: str, key: str) -> str:
    """The key part of a remote URL without leading/trailing slashes; refuses ``.``/``..``
    and empty segments (``a//b``), which object stores would keep as literal, unreachable-by-
    path names."""
    key = key.strip("/")
    if key:
        for seg in key.split("/"):
            if seg in ("", ".", ".."):
                raise _refuse(text, f"empty, '.' or '..' path segment in {key!r}")
    return key


@dataclass(frozen=True)
class Location:
    """Where a store (or one object of it) lives.

    ``scheme`` is ``"file"`` for local paths (``path`` absolute, OS form) and otherwise the
    URL scheme with ``path`` in fsspec's form (``bucket/key`` for object stores, ``/name/key``
    for ``memory``, the whole URL for ``https``). Build one with :meth:`parse`.
    """

    scheme: str
    path: str
    storage_options: Mapping[str, Any] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    # ---- construction -------------------------------------------------------------
    @classmethod
    def parse(
        cls,
        where: str | os.PathLike[str] | Location,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Location:
        """A Location from a path or URL; :class:`LocationError` (one line) if malformed.

        Nothing is created or contacted: parsing is pure, so a CLI can refuse a typo before
        it writes anything.
        """
        if isinstance(where, Location):
            if storage_options:
                return cls(where.scheme, where.path, {**where.storage_options, **storage_options})
            return where
        opts = dict(storage_options or {})
        # A PathLike is parsed as its text too: ``Path("s3://b/k")`` is "s3:/b/k", a URL
        # mangled by a ``type=Path`` argument, and refused like the typo it looks like.
        text = os.fspath(where) if isinstance(where, os.PathLike) else where
        if not isinstance(text, str):
            raise LocationError(f"bad location {where!r}: expected a path or URL string")
        if not text.strip():
            raise cls._empty()
        if text != text.strip() or any(c in text for c in "\n\r\t\0"):
            raise _refuse(text, "leading/trailing whitespace or control characters")
        m = _SCHEME_PREFIX.match(text)
        if m is None:
            return cls("file", os.path.abspath(os.path.expanduser(text)), opts)
        scheme = m.group(1).lower()
        if "://" not in text[: m.end() + 2]:
            # "s3:/x", "s3:bucket", "ftp:/x": a mistyped URL, never a folder called "s3:".
            # A relative path whose first name merely contains a colon ("run:1/x") stays a
            # path unless it spells a known scheme or a slash follows the colon.
            if scheme in SCHEMES or text[m.end() : m.end() + 1] == "/" or text == m.group(0):
                raise _refuse(text, f"malformed URL; expected {scheme}://... ({_ACCEPTED})")
            return cls("file", os.path.abspath(text), opts)
        if scheme not in SCHEMES:
            raise _refuse(text, f"unknown scheme {scheme!r}; use {_ACCEPTED}")
        try:
            parts = urlsplit(text)
        except ValueError as exc:
            raise _refuse(text, f"malformed URL ({exc})") from None
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise _refuse(text, "no host")
            return cls(scheme, text, opts)
        if parts.query or parts.fragment:
            raise _refuse(text, "'?' and '#' are not allowed in a store URL")
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise _refuse(text, "file:// URLs name a local path: file:///abs/path")
            path = unquote(parts.path)
            if not path.startswith("/"):
                raise _refuse(text, "file:// needs an absolute path: file:///abs/path")
            return cls("file", os.path.abspath(path), opts)
        if scheme == "memory":
            key = _check_key(text, parts.netloc + parts.path)
            if not key:
                raise _refuse(text, "no name after memory://")
            return cls("memory", "/" + key, opts)
        # object stores: scheme://bucket/key
        netloc = parts.netloc
        if not netloc:
            raise _refuse(text, f"no bucket; expected {scheme}://bucket/path")
        pattern = _ABFS_NETLOC if scheme in ("abfs", "az") else _BUCKET
        if not pattern.match(netloc):
            raise _refuse(text, f"invalid bucket/container name {netloc!r}")
        key = _check_key(text, unquote(parts.path))
        return cls(scheme, f"{netloc}/{key}" if key else netloc, opts)

    @classmethod
    def _empty(cls) -> LocationError:
        return LocationError("bad location '': empty; give a local path or a URL")

    def with_options(self, storage_options: Mapping[str, Any]) -> Location:
        """The same place with more (overriding) storage options."""
        return Location(self.scheme, self.path, {**self.storage_options, **storage_options})

    # ---- naming -------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def is_object_store(self) -> bool:
        return self.scheme in OBJECT_STORES

    @property
    def read_only(self) -> bool:
        return self.scheme not in WRITABLE

    @property
    def url(self) -> str:
        """``s3://bucket/key``, ``memory://name/key``, ``file:///abs``; what fsspec, zarr and
        xarray accept."""
        if self.scheme in ("http", "https"):
            return self.path
        if self.scheme == "file":
            return Path(self.path).as_uri()
        if self.scheme == "memory":
            return "memory://" + self.path.lstrip("/")
        return f"{self.scheme}://{self.path}"

    @property
    def local_path(self) -> Path:
        """The plain path of a local location (:class:`LocationError` for a remote one)."""
        if not self.is_local:
            raise LocationError(f"{self} is not on the local file system")
        return Path(self.path)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name if not self.is_local else Path(self.path).name

    @property
    def parent(self) -> Location:
        if self.is_local:
            return Location("file", str(Path(self.path).parent), self.storage_options)
        if self.scheme in ("http", "https"):
            raise LocationError(f"{self} has no parent location")
        head, sep, _ = self.path.rstrip("/").rpartition("/")
        if not sep or (self.scheme == "memory" and not head):
            raise LocationError(f"{self} is a bucket root; it has no parent")
        return Location(self.scheme, head, self.storage_options)

    def __truediv__(self, child: str) -> Location:
        """``loc / "a/b"``: a location inside this one; ``..``, absolute and empty parts are
        refused so a name read from a store can never point outside it."""
        if not isinstance(child, str) or not child:
            raise LocationError(f"cannot join {child!r} to {self}")
        segs = child.split("/")
        if child.startswith("/") or any(s in ("", ".", "..") for s in segs) or "\0" in child:
            raise LocationError(f"cannot join {child!r} to {self}: must be a relative name")
        if self.scheme in ("http", "https"):
            base = self.path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
            return Location(self.scheme, f"{base}/{child}", self.storage_options)
        if self.is_local:
            return Location("file", os.path.join(self.path, *segs), self.storage_options)
        return Location(self.scheme, f"{self.path.rstrip('/')}/{child}", self.storage_options)

    def __str__(self) -> str:
        return self.path if self.is_local else self.url

    def __fspath__(self) -> str:
        """Local locations pass wherever a path does; a remote one refuses (no silent
        ``s3:`` folder)."""
        return str(self.local_path)

    # ---- file system ----------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """The fsspec options this location is opened with: environment, then storage
        options. Contains credentials when given: never write or print it unredacted."""
        return {**_env_options(self.scheme), **self.storage_options}

    @property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem for this location (fsspec caches instances per options)."""
        import fsspec

        if self.is_local:
            return fsspec.filesystem("file")
        backend = _BACKEND.get(self.scheme)
        try:
            return fsspec.filesystem(self.scheme, **self.options())
        except ImportError as exc:
            extra = SCHEMES.get(self.scheme)
            raise LocationError(
                f"{self.scheme}:// needs {backend or 'a backend'}: pip install 'terraloom[{extra}]'"
            ) from exc

    def _writable(self) -> None:
        if self.read_only:
            raise LocationError(f"{self} is read-only ({self.scheme}://)")

    # ---- bytes, text, JSON ----------------------------------------------------------
    def read_bytes(self) -> bytes:
        if self.is_local:
            return Path(self.path).read_bytes()
        return bytes(self.fs.cat_file(self.path))

    def write_bytes(self, data: bytes) -> None:
        """Write (replace) the object. On object stores a PUT is atomic: a reader sees the old
        or the new object, never a torn one; locally the bytes go straight to the file."""
        self._writable()
        if self.is_local:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).write_bytes(data)
            return
        self.fs.pipe_file(self.path, bytes(data))

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    def write_json(self, obj: Any, *, indent: int | None = 2) -> None:
        self.write_text(json.dumps(obj, indent=indent, sort_keys=True) + "\n")

    # ---- listing and metadata -------------------------------------------------------
    def exists(self) -> bool:
        if self.is_local:
            return os.path.exists(self.path)
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        if self.is_local:
            return os.path.isdir(self.path)
        return bool(self.fs.isdir(self.path))

    def size(self) -> int:
        if self.is_local:
            return os.stat(self.path).st_size
        return int(self.fs.size(self.path))

    def mtime(self) -> float:
        """Last-modified time (seconds since the epoch)."""
        if self.is_local:
            return os.stat(self.path).st_mtime
        return float(self.fs.modified(self.path).timestamp())

    def listdir(self) -> list[str]:
        """Names of the direct children, sorted; ``[]`` when there is nothing there."""
        if self.is_local:
            try:
                return sorted(os.listdir(self.path))
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        own = self.path.rstrip("/")
        names = {PurePosixPath(str(e)).name for e in entries if str(e).rstrip("/") != own}
        return sorted(n for n in names if n)

    def walk_files(self) -> list[str]:
        """Every object below this location, as ``/``-relative names, sorted."""
        return sorted(self.file_sizes())

    def file_sizes(self) -> dict[str, int]:
        """Size of every object below this location by ``/``-relative name: local files
        stat'ed, an object store's from one recursive listing (a page per 1,000 objects)
        instead of a HEAD per object. Empty if nothing is there."""
        if self.is_local:
            root = Path(self.path)
            if not root.is_dir():
                return {}
            return {
                p.relative_to(root).as_posix(): p.stat().st_size
                for p in root.rglob("*")
                if p.is_file()
            }
        own = self.path.rstrip("/")
        try:
            found = self.fs.find(own, detail=True)
        except FileNotFoundError:
            return {}
        sizes: dict[str, int] = {}
        for name, info in found.items():
            key = str(name)
            if self.scheme == "memory" and not key.startswith("/"):
                key = "/" + key
            if key.startswith(own + "/") and info.get("type", "file") != "directory":
                sizes[key[len(own) + 1 :]] = int(info.get("size") or 0)
        return sizes

    def delete(self, *, recursive: bool = False, missing_ok: bool = True) -> None:
        """Remove the object (or, with ``recursive``, everything below this location)."""
        self._writable()
        if self.is_local:
            p = Path(self.path)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                if not missing_ok:
                    raise
                return
            if stat.S_ISDIR(st.st_mode):
                if not recursive:
                    raise IsADirectoryError(self.path)
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
            return
        fs = self.fs
        if not fs.exists(self.path):
            if not missing_ok:
                raise FileNotFoundError(str(self))
            return
        fs.rm(self.path, recursive=recursive)

    def makedirs(self) -> None:
        """Create the local directory; a no-op on object stores (they have no directories)."""
        self._writable()
        if self.is_local:
            os.makedirs(self.path, exist_ok=True)

    def open(self, mode: str = "rb") -> Any:
        """A file object (``rb``/``wb``); a local write creates the parent folders."""
        if any(c in mode for c in "wax+"):
            self._writable()
            if self.is_local:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if self.is_local:
            return open(self.path, mode)  # noqa: SIM115 - the caller owns the handle
        return self.fs.open(self.path, mode)

    # ---- adapters for zarr, pyarrow, geopandas, xarray -------------------------------
    def zarr_store(self, *, read_only: bool = False) -> Store:
        """A zarr v3 store rooted here: ``LocalStore`` for local paths (fast path), else
        ``FsspecStore`` on the async backend (sync ones, e.g. memory, are wrapped by zarr)."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.path, read_only=read_only)
        if not read_only:
            self._writable()
        try:
            return FsspecStore.from_url(
                self.url, storage_options=self.options(), read_only=read_only
            )
        except ImportError as exc:
            raise LocationError(
                f"{self.scheme}:// needs {_BACKEND.get(self.scheme)}: "
                f"pip install 'terraloom[{SCHEMES.get(self.scheme)}]'"
            ) from exc

    def arrow_filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """``(filesystem, path)`` for ``pyarrow.parquet.read_table/write_table`` and
        ``geopandas.read_parquet(path, filesystem=...)``."""
        import pyarrow.fs as pafs

        if self.is_local:
            return pafs.LocalFileSystem(), self.path
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs)), self.path

    def xarray_args(self) -> tuple[str, dict[str, Any]]:
        """``(url, storage_options)`` for ``xarray.open_zarr(url, storage_options=...)``."""
        if self.is_local:
            return self.path, {}
        return self.url, self.options()


def _env_options(scheme: str) -> dict[str, Any]:
    """Options taken from the environment that the backend would not key its cache on.

    s3fs/botocore read credentials and region themselves; the endpoint is passed explicitly
    so that switching ``AWS_ENDPOINT_URL`` (a test server, MinIO, R2) gets a new filesystem
    instead of fsspec's cached one for the previous endpoint. Listing caches are off on
    object stores: another worker may have written an object since we last listed.
    """
    if scheme == "s3":
        opts: dict[str, Any] = {"use_listings_cache": False}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        return opts
    if scheme in ("gs", "az", "abfs"):
        return {"use_listings_cache": False}
    return {}


def parse_storage_options(pairs: Iterable[str] | None) -> dict[str, Any]:
    """``--storage-option key=value`` items -> fsspec options (a CLI helper).

    ``a.b=v`` nests (``{"a": {"b": "v"}}``, e.g. ``client_kwargs.region_name=eu-west-1``);
    ``true``/``false`` become booleans and plain integers ints; everything else stays text
    (a secret made of digits is still a key's value: only whole-integer values are
    converted, and keys named like credentials are always kept as text). A malformed item
    is a :class:`LocationError` naming the key only, never the value.
    """
    from terraloom.storage.redact import is_secret_key

    out: dict[str, Any] = {}
    for item in pairs or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key or any(not k for k in key.split(".")):
            raise LocationError(
                f"bad --storage-option {key or '?'!r}: expected key=value (nested keys: a.b=value)"
            )
        conv: Any = value
        if not is_secret_key(key):
            if value.lower() in ("true", "false"):
                conv = value.lower() == "true"
            elif re.fullmatch(r"-?[0-9]{1,18}", value):
                conv = int(value)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise LocationError(f"bad --storage-option {key!r}: {p!r} is already a value")
            node = child
        if isinstance(node.get(leaf), dict):
            raise LocationError(f"bad --storage-option {key!r}: already holds nested options")
        node[leaf] = conv
    return out


def parse_location(
    where: str | os.PathLike[str] | Location, storage_options: Mapping[str, Any] | None = None
) -> Location:
    """:meth:`Location.parse` as a function (CLIs: ``type=parse_location`` in argparse)."""
    return Location.parse(where, storage_options)


def check_locations(items: Sequence[str | os.PathLike[str] | Location | None]) -> list[Location]:
    """Parse every given location of a command at once, before any is used, so a typo in the
    third one cannot leave the first half-written. ``None`` items are skipped."""
    return [Location.parse(w) for w in items if w is not None]
