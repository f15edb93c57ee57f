"""Which kind of terraloom store a location holds: a corpus, a token store, or neither.

Commands that read one kind and are handed the other (``tokenize encode --corpus tokens/``,
``pipeline verify tokens/``) must say so in one line before they write anything, instead of
failing deep inside on a missing array. The kind is the ``format`` attribute each split
group records in its ``zarr.json`` (``schemas.layouts``), read as plain JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from terraloom.schemas.layouts import CORPUS_FORMAT, TOKENS_FORMAT

__all__ = ["CORPUS", "TOKENS", "WrongStoreError", "expect_store_kind", "store_kind"]

CORPUS = "corpus"
TOKENS = "token store"
_KINDS = {CORPUS_FORMAT: CORPUS, TOKENS_FORMAT: TOKENS}


class WrongStoreError(ValueError):
    """A corpus where a token store is expected, or the other way round."""


def _group_format(path: Path) -> str | None:
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    fmt = attrs.get("format") if isinstance(attrs, dict) else None
    return fmt if isinstance(fmt, str) else None


def store_kind(location: str | os.PathLike[str]) -> str | None:
    """``"corpus"``, ``"token store"`` or None (not local, absent, or neither).

    ``location`` is a store root (holding ``<split>.zarr`` groups) or one split group.
    """
    path = Path(location)
    if "://" in str(location) or not path.is_dir():
        return None
    fmt = _group_format(path)
    if fmt is None:
        for child in sorted(path.glob("*.zarr")):
            fmt = _group_format(child)
            if fmt is not None:
                break
    return _KINDS.get(fmt) if fmt else None


def expect_store_kind(location: str | os.PathLike[str], expected: str) -> None:
    """Raise :class:`WrongStoreError` when ``location`` holds the other kind of store."""
    kind = store_kind(location)
    if kind is not None and kind != expected:
        raise WrongStoreError(f"{location} is a {kind}, not a {expected}")
