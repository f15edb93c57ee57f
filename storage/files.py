"""Files written with the user's umask, whatever library writes them.

``safetensors`` creates its files with mode 0600, so weights written on a shared file
system are unreadable to the rest of a team while every other output follows the umask
(usually 0644). :func:`save_safetensors` is the one way terraloom writes safetensors: it
writes, then gives the file the mode ``open()`` would have given it, and makes its header
canonical: safetensors serialises ``__metadata__`` from a Rust ``HashMap`` whose order changes
from call to call, so the same weights gave files of different bytes, and a tokenizer's
identity (the sha256 of its weights file) changed from run to run.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "apply_umask",
    "canonicalize_header",
    "current_umask",
    "is_disk_full",
    "save_safetensors",
]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give a regular file the mode a plain ``open(path, "w")`` would have: 0666 & ~umask."""
    os.chmod(path, 0o666 & ~current_umask())


def save_safetensors(
    tensors: Mapping[str, Any],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """``safetensors.torch.save_file`` with the user's umask instead of mode 0600, and bytes
    that depend only on the tensors and the metadata (see :func:`canonicalize_header`)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata else None)
    canonicalize_header(path)
    apply_umask(path)
    return path


def canonicalize_header(path: str | os.PathLike[str]) -> None:
    """Rewrite a safetensors file's JSON header in one order: ``__metadata__`` first with its
    keys sorted, then the tensors by data offset (the layout safetensors already fixes).

    Only the header's bytes change; the data and its offsets stay, so a reader sees the same
    file. The header is rewritten in place, padded with spaces to its old length (as the
    format itself pads), so no copy of the weights is made: compact JSON of the same content
    is never longer than safetensors' own compact header.
    """
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(n))
        canon: dict[str, Any] = {}
        meta = header.pop("__metadata__", None)
        if meta is not None:
            canon["__metadata__"] = dict(sorted(meta.items()))
        canon.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0])))
        text = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > n:
            raise ValueError(f"{path}: canonical safetensors header longer than the written one")
        f.seek(8)
        f.write(text.ljust(n, b" "))


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` or anything in its cause/context chain is ENOSPC.

    Jobs report a full disk as one line that says the output is resumable, instead of a
    traceback; engines wrap a worker's exception (Beam sometimes only in its message), so
    the whole chain and the message text are searched.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        text = str(e)
        if "No space left on device" in text or f"[Errno {errno.ENOSPC}]" in text:
            return True
        e = e.__cause__ or e.__context__
    return False
