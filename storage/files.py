"""Files written with the user's umask, whatever library writes them.

``safetensors`` creates its files with mode 0600, so weights written on a shared file
system are unreadable to the rest of a team while every other output follows the umask
(usually 0644). :func:`save_safetensors` is the one way terraloom writes safetensors: it
writes, then gives the file the mode ``open()`` would have given it.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["apply_umask", "current_umask", "is_disk_full", "save_safetensors"]

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
    """``safetensors.torch.save_file`` with the user's umask instead of mode 0600."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata else None)
    apply_umask(path)
    return path


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
