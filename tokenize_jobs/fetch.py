"""A token store on a location, copied to local disk once: the loader's read-through cache.

The training loader memory-maps chunk files (``store.TokenStore``), which needs them on a
local disk. ``fetch_token_store`` copies a store from any location (``s3://``, ``gs://``,
``memory://``...) to a local folder, *by commit*: it lists the remote commit markers first,
copies the chunk objects of each committed shard, and writes that shard's marker locally
last, so a local shard is trusted only when its whole data arrived (the same rule as on the
remote side). Shards whose local marker equals the remote one are not copied again, so a
second fetch of an unchanged store copies nothing but the small metadata; a shard redone
remotely (its marker changed) is copied anew; one withdrawn remotely is withdrawn locally.

Used by ``terraloom-tokenize fetch SRC --out DIR`` (users with local NVMe copy once) and by
the training loader, which fetches a token store URL into the local cache
(``storage.transfer.cache_dir``) before it opens it. Concurrent fetches into one folder
(the ranks of one host) are serialised by a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from terraloom.storage.location import Location
from terraloom.storage.transfer import cache_dir, download_file
from terraloom.tokenize_jobs.store import (
    COMMITS_DIR,
    drop_commit,
    read_commits,
    shard_files,
    write_commit,
)

__all__ = ["FetchReport", "fetch_token_store", "local_token_store", "token_splits"]

LOCK_NAME = ".fetch.lock"


@dataclass
class FetchReport:
    """What one fetch did: per split the shards copied and kept, and the bytes copied."""

    root: Path
    copied: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    withdrawn: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    notes: list[str] = field(default_factory=list)


def token_splits(root: Location) -> list[str]:
    """``<split>.zarr`` groups of a token store root."""
    return [
        n[: -len(".zarr")]
        for n in root.listdir()
        if n.endswith(".zarr") and (root / f"{n}/zarr.json").exists()
    ]


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / LOCK_NAME, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fetch_split(src: Location, dest: Path, report: FetchReport) -> None:
    split = src.name[: -len(".zarr")]
    remote = read_commits(src)  # the snapshot this fetch copies; later commits wait
    local_split = dest / src.name
    # metadata first (small; always refreshed: attributes are written after creation)
    report.bytes += download_file(src / "zarr.json", local_split / "zarr.json")
    arrays = shard_files(src)
    for name in arrays:
        report.bytes += download_file(src / f"{name}/zarr.json", local_split / name / "zarr.json")
    local = read_commits(local_split)
    withdrawn = [k for k in local if k not in remote]
    for k in withdrawn:
        drop_commit(local_split, k)
    copied = kept = 0
    for shard, record in sorted(remote.items()):
        if local.get(shard) == record:
            kept += 1
            continue
        if shard in local:
            drop_commit(local_split, shard)  # a redone shard: uncommitted until it arrives
        for info in arrays.values():
            key = info.chunk_key(shard)
            try:
                report.bytes += download_file(src / key, local_split.joinpath(*key.split("/")))
            except FileNotFoundError:  # never written: zarr reads the fill value
                local_split.joinpath(*key.split("/")).unlink(missing_ok=True)
        payload = {k: v for k, v in record.items() if k not in ("commit_version", "shard")}
        write_commit(local_split, shard, payload)
        copied += 1
    report.copied[split] = copied
    report.kept[split] = kept
    report.withdrawn[split] = len(withdrawn)


def fetch_token_store(
    src: str | os.PathLike[str] | Location,
    dest: str | os.PathLike[str],
    splits: Sequence[str] | None = None,
) -> FetchReport:
    """Copy the committed shards of ``src`` (a token store root) into the local ``dest``."""
    root = Location.parse(src)
    out = Path(dest)
    found = token_splits(root)
    if not found:
        raise FileNotFoundError(f"{root} holds no token store (no <split>.zarr with zarr.json)")
    wanted = list(splits) if splits is not None else found
    missing = [s for s in wanted if s not in found]
    if missing:
        raise FileNotFoundError(f"{root} has no split(s) {missing}; it holds {found}")
    report = FetchReport(out)
    with _locked(out):
        if (root / f"{COMMITS_DIR}/lease.json").exists():
            # an encode is writing: only its committed shards are copied (said, not refused)
            report.notes.append(
                f"an encode is writing {root}; only its committed shards were copied"
            )
        for s in wanted:
            _fetch_split(root / f"{s}.zarr", out, report)
        (out / "fetched.json").write_text(
            json.dumps({"source": str(root), "splits": wanted}, indent=1) + "\n"
        )
    return report


def local_token_store(
    root: str | os.PathLike[str] | Location, splits: Sequence[str] | None = None
) -> Path:
    """A token store root as a local path: itself when local, else its read-through copy in
    the local cache (fetched now; committed shards already there are not copied again)."""
    loc = Location.parse(root)
    if loc.is_local:
        return loc.local_path
    dest = cache_dir(loc, "tokens")
    fetch_token_store(loc, dest, splits)
    return dest
