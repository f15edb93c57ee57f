"""The files of one published version: written to any location, each hashed as it is written.

A published version may live on local disk or on an object store (``s3://``, ``gs://``,
``memory://`` ...), where there is no rename and no directory to move into place. So every
writer of ``publish`` writes through one :class:`VersionFiles`: it streams each file to its
final name under the version root and records the file's SHA-256 and size while the bytes go
by. ``SHA256SUMS`` then comes from that record without reading anything back, and the
version is committed by a write-once marker written after everything else
(:mod:`terraloom.storage.commit`): readers trust a version only when its marker exists.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from terraloom.storage.location import Location

#: Copy block size: big enough for object-store throughput, small enough to stream.
BLOCK = 8 << 20


class HashingWriter:
    """A write-only binary file that hashes and counts what passes through it.

    Implements what ``tarfile`` (``tell``), ``zipfile`` and ``pyarrow``/``matplotlib``
    writers call on a stream; seeking is not supported, which object-store uploads cannot do
    either, so a writer that needs it fails here on local disk too, not only in the cloud.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return bool(getattr(self.raw, "closed", False))

    def close(self) -> None:  # the owner closes ``raw``
        pass


@dataclass
class VersionFiles:
    """Writes the files of one version under ``root`` and remembers their digests."""

    root: Location
    digests: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def _target(self, rel: str) -> Location:
        if rel in self.digests:
            raise ValueError(f"{rel}: written twice in one published version")
        return self.root / rel

    @contextmanager
    def open(self, rel: str) -> Iterator[HashingWriter]:
        """A binary stream to ``root/rel`` (one PUT, or a multipart upload, remotely)."""
        target = self._target(rel)
        with target.open("wb") as raw:
            w = HashingWriter(raw)
            yield w
        self.digests[rel] = w.sha.hexdigest()
        self.sizes[rel] = w.size

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open(rel) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def copy(
        self, src: Location, rel: str, transform: Callable[[bytes], bytes] | None = None
    ) -> None:
        """Copy one object (``transform`` rewrites a small file's bytes on the way)."""
        if transform is not None:
            self.write_bytes(rel, transform(src.read_bytes()))
            return
        with src.open("rb") as fin, self.open(rel) as fout:
            while block := fin.read(BLOCK):
                fout.write(block)

    def copy_tree(
        self,
        src: Location,
        prefix: str,
        *,
        include: Callable[[str], bool] | None = None,
        transform: Callable[[str, bytes], bytes | None] | None = None,
    ) -> int:
        """Copy every object below ``src`` to ``prefix/<name>``; returns the files copied.

        ``transform(name, data)`` may return new bytes for a file (``None``: unchanged); it is
        only called for files named ``zarr.json`` (small metadata documents).
        """
        n = 0
        for rel in src.walk_files():
            if include is not None and not include(rel):
                continue
            name = f"{prefix}/{rel}"
            if transform is not None and rel.rsplit("/", 1)[-1] == "zarr.json":
                data = (src / rel).read_bytes()
                new = transform(rel, data)
                self.write_bytes(name, data if new is None else new)
            else:
                self.copy(src / rel, name)
            n += 1
        return n

    def add_local(self, path: str | os.PathLike[str], rel: str) -> None:
        """Copy a local file (rendered into a scratch folder) to ``root/rel``."""
        self.copy(Location.parse(Path(path)), rel)


def hash_location(loc: Location) -> str:
    """SHA-256 of one object, streamed."""
    h = hashlib.sha256()
    with loc.open("rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()
