"""Commits that hold without rename: write-once markers and conditional writes per backend.

Object stores have no atomic rename, so a block (a Zarr shard, a token shard, a finished
table) is committed by a small *marker object written after the data it commits*: readers
trust the data only when its marker exists, and a resume skips exactly the committed blocks.
The marker is created with *create-if-absent*, so two writers racing for one block cannot
both commit it; the loser learns so (``False`` / :class:`AlreadyCommitted`) and must not
overwrite the winner's marker.

What each backend offers, and what is used:

=========  ===================================  ====================================  ===========
backend    create-if-absent (``write_once``)    replace-if-unchanged (leases)         tested on
=========  ===================================  ====================================  ===========
local      hard link of a finished temp file    none (rename under a claim file)      local disk
           (``link`` fails if the name exists;
           whole content or nothing; ``O_EXCL``
           where links are not supported)
s3         PUT ``If-None-Match: *``             PUT / DELETE ``If-Match: <etag>``     moto server
           (s3fs ``pipe_file(mode="create")``)  (``pipe_file(IfMatch=)``,
                                                ``call_s3("delete_object", IfMatch=)``)
gs         ``ifGenerationMatch=0`` (gcsfs       not exposed by gcsfs: plain write     not tested
           ``pipe_file(mode="create")``)        under a claim object (see lease.py)   (no server)
az/abfs    ``If-None-Match: *`` (adlfs          not used: plain write under a claim   not tested
           ``pipe_file(mode="create")``)                                              (no server)
memory     a process-wide lock                  the same lock                         in process
=========  ===================================  ====================================  ===========

An S3-compatible server that ignores ``If-None-Match`` (some older gateways) silently
overwrites: there, two writers of one block can both "win". terraloom's blocks are written
deterministically from the plan, so both write the same bytes; the lease keeps a second job
out in the first place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from terraloom.storage.location import Location, LocationError

#: Serialises check-and-write on fsspec's in-process memory store (it has no conditions).
_MEMORY_LOCK = threading.RLock()
#: S3 answers 409 ConditionalRequestConflict to concurrent conditional writes: retry.
_CONFLICT_RETRIES = 8


class AlreadyCommitted(FileExistsError):
    """The marker exists: another writer committed this block first."""

    def __init__(self, location: Location) -> None:
        self.location = location
        super().__init__(f"{location} is already committed")


def _error_code(exc: BaseException) -> str:
    """The S3 error code behind an s3fs exception (``PreconditionFailed``, ...), or ''."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        resp = getattr(cur, "response", None)
        if isinstance(resp, dict):
            code = resp.get("Error", {}).get("Code")
            if code:
                return str(code)
        cur = cur.__cause__ or cur.__context__
    return ""


def _s3_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an s3fs call, retrying S3's 409 ConditionalRequestConflict (a concurrent
    conditional write on the same key is in flight; the retry gets the definite answer)."""
    for attempt in range(_CONFLICT_RETRIES):
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            if _error_code(exc) != "ConditionalRequestConflict" or attempt == _CONFLICT_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _local_create(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists. The content is written to a temp
    file first and then hard-linked to its name, which fails if the name exists: a reader
    (or a resume after SIGKILL) never sees a marker without its whole content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        return _local_create_excl(path, data)  # a file system without hard links
    finally:
        tmp.unlink(missing_ok=True)


def _local_create_excl(path: Path, data: bytes) -> bool:
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


def create_exclusive(location: Location | str | os.PathLike[str], data: bytes) -> bool:
    """Create the object with ``data`` if nothing is there; ``False`` if something is.

    Atomic on every writable backend (see the module table): of several concurrent callers,
    on one host or many, exactly one gets ``True``.
    """
    loc = Location.parse(location)
    if loc.read_only:
        raise LocationError(f"{loc} is read-only ({loc.scheme}://)")
    data = bytes(data)
    if loc.is_local:
        return _local_create(loc.local_path, data)
    fs = loc.fs
    if loc.scheme == "memory":
        with _MEMORY_LOCK:
            if fs.exists(loc.path):
                return False
            fs.pipe_file(loc.path, data)
            return True
    try:
        if loc.scheme == "s3":
            _s3_call(fs.pipe_file, loc.path, data, mode="create")
        else:  # gs: ifGenerationMatch=0; az/abfs: If-None-Match: *
            fs.pipe_file(loc.path, data, mode="create")
    except FileExistsError:
        return False
    except OSError as exc:
        if _error_code(exc) == "PreconditionFailed":
            return False
        raise
    return True


def write_once(
    location: Location | str | os.PathLike[str], data: bytes | str, *, exist_ok: bool = True
) -> bool:
    """Commit by creating the write-once marker at ``location`` (after the data it commits).

    Returns ``True`` when this call committed, ``False`` when a marker was already there (or
    raises :class:`AlreadyCommitted` with ``exist_ok=False``). Never overwrites a marker.
    """
    loc = Location.parse(location)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if create_exclusive(loc, payload):
        return True
    if not exist_ok:
        raise AlreadyCommitted(loc)
    return False


def is_committed(location: Location | str | os.PathLike[str]) -> bool:
    """Whether the marker at ``location`` exists."""
    return Location.parse(location).exists()


# ---- conditional replace / delete (what leases need beyond create-if-absent) ----------


def supports_conditional_replace(location: Location) -> bool:
    """Whether :func:`replace_if_match` / :func:`delete_if_match` are atomic here (S3 and
    memory); elsewhere callers must serialise through a claim object (see lease.py)."""
    return location.scheme in ("s3", "memory")


def read_tagged(location: Location) -> tuple[bytes, str] | None:
    """``(content, version tag)`` of the object, ``None`` if absent.

    The tag (S3 ETag, GCS generation, memory content hash, local stat) is taken *before* the
    content is read: a conditional write on it succeeds only if nothing changed since the
    tag, so a content/tag mismatch from a concurrent write fails safe.
    """
    if location.is_local:
        try:
            st = os.stat(location.path)
            data = Path(location.path).read_bytes()
        except FileNotFoundError:
            return None
        return data, f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"
    fs = location.fs
    if location.scheme == "memory":
        with _MEMORY_LOCK:
            if not fs.exists(location.path):
                return None
            data = bytes(fs.cat_file(location.path))
        return data, hashlib.sha256(data).hexdigest()
    try:
        info = fs.info(location.path)
        data = bytes(fs.cat_file(location.path))
    except FileNotFoundError:
        return None
    tag = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("mtime")
    return data, str(tag or "")


def _memory_if_match(location: Location, tag: str, act: Callable[[Any], Any]) -> bool:
    """memory://: run ``act(fs)`` only if the object exists with version ``tag`` (its SHA-256),
    atomically under the process-wide memory lock; ``False`` otherwise."""
    fs = location.fs
    with _MEMORY_LOCK:
        if not fs.exists(location.path):
            return False
        if hashlib.sha256(bytes(fs.cat_file(location.path))).hexdigest() != tag:
            return False
        act(fs)
        return True


def replace_if_match(location: Location, data: bytes, tag: str) -> bool:
    """Overwrite only if the object still has version ``tag``; ``False`` if it changed or is
    gone. Only where :func:`supports_conditional_replace`."""
    if location.scheme == "memory":
        return _memory_if_match(location, tag, lambda fs: fs.pipe_file(location.path, bytes(data)))
    if location.scheme == "s3":
        try:
            _s3_call(location.fs.pipe_file, location.path, bytes(data), IfMatch=tag)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _error_code(exc) in ("PreconditionFailed", "NoSuchKey", "404"):
                return False
            raise
        return True
    raise LocationError(f"{location.scheme}:// has no conditional replace")


def delete_if_match(location: Location, tag: str) -> bool:
    """Delete only if the object still has version ``tag``; ``False`` otherwise.

    S3 endpoints without conditional deletes (answering ``NotImplemented``) fall back to a
    check-then-delete, the same window as on backends without conditions."""
    if location.scheme == "memory":
        return _memory_if_match(location, tag, lambda fs: fs.rm_file(location.path))
    if location.scheme == "s3":
        fs = location.fs
        bucket, key, _ = fs.split_path(location.path)
        try:
            _s3_call(fs.call_s3, "delete_object", Bucket=bucket, Key=key, IfMatch=tag)
        except FileNotFoundError:
            return False
        except OSError as exc:
            code = _error_code(exc)
            if code in ("PreconditionFailed", "NoSuchKey"):
                return False
            if code not in ("NotImplemented", "InvalidArgument"):
                raise
            got = read_tagged(location)
            if got is None or got[1] != tag:
                return False
            fs.rm_file(location.path)
        fs.invalidate_cache(location.path)
        return True
    raise LocationError(f"{location.scheme}:// has no conditional delete")
