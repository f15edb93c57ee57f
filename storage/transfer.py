"""Copies between a location and local disk: read-through caches and staged outputs.

Some readers need local files: the token loader memory-maps chunk files, tokenizers and
checkpoints are loaded with ``safetensors``/``torch.load`` from a path, and training keeps a
run directory it appends to. Rather than teach each of them object-store I/O, a stage copies
what it reads to a local cache once (:func:`download_tree`, keyed by URL under
:func:`cache_dir`) and writes outputs locally before publishing them (:func:`upload_tree`,
files in a given order so that the object that commits the others is written last).

Both are incremental by size: a file already present with the remote size is not copied
again, so a re-run of a finished copy transfers nothing. Local writes go to a temp name and
are renamed, so a copy killed midway never leaves a torn file under a real name.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from terraloom.storage.location import Location

__all__ = ["cache_dir", "cache_root", "download_file", "download_tree", "upload_tree"]

#: Environment variable naming the root of terraloom's local caches.
CACHE_ENV = "TERRALOOM_CACHE"


def cache_root() -> Path:
    """``$TERRALOOM_CACHE``, else ``$XDG_CACHE_HOME/terraloom``, else ``~/.cache/terraloom``."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "terraloom"


def cache_dir(location: Location, kind: str) -> Path:
    """The local cache folder of a remote location: ``<cache root>/<kind>/<name>-<hash>``.

    The hash is of the URL (never of storage options, which may hold credentials), so two
    different stores with one name never share a cache folder.
    """
    digest = hashlib.sha256(location.url.encode("utf-8")).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in location.name) or "root"
    return cache_root() / kind / f"{name}-{digest}"


def download_file(src: Location, dest: Path) -> int:
    """Copy one object to ``dest`` (temp name, then rename); returns bytes copied."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        data = src.read_bytes()
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return len(data)


def _needs_copy(src: Location, dest: Path) -> bool:
    try:
        return dest.stat().st_size != src.size()
    except FileNotFoundError:
        return True


def download_tree(
    src: Location,
    dest: Path,
    *,
    include: Callable[[str], bool] | None = None,
) -> int:
    """Mirror every object below ``src`` (``include(relname)`` to filter) into ``dest``;
    files present with the remote size are kept. Returns bytes copied."""
    copied = 0
    for rel in src.walk_files():
        if include is not None and not include(rel):
            continue
        target = dest.joinpath(*rel.split("/"))
        item = src / rel
        if _needs_copy(item, target):
            copied += download_file(item, target)
    return copied


def upload_tree(src: Path, dest: Location, names: Iterable[str] | None = None) -> int:
    """Write local files under ``src`` to ``dest`` in the order given (``names``: relative
    ``/`` names; default every file, sorted). Returns bytes written."""
    if names is None:
        names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    written = 0
    for rel in names:
        data = src.joinpath(*rel.split("/")).read_bytes()
        (dest / rel).write_bytes(data)
        written += len(data)
    return written
