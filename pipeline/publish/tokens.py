"""A token store published beside its corpus, so the model pretrains from the dataset itself.

The token store (``tokenize_jobs`` encode output: ``<split>.zarr`` groups with rows aligned to
the corpus rows, plus ``_commits/`` markers without which the loader treats rows as invalid)
is copied to ``tokens/`` of the published version. Each split group records where its corpus
is (the ``corpus`` attribute, a path relative to the token store); the published copy points
it at the published corpus (``../<split>.zarr``), so ``tokens/`` and the version root are a
matching token store and corpus wherever the dataset is downloaded to.

The pipeline may not import ``tokenize_jobs`` (stage order), so the store is recognised and
checked from its Zarr metadata as plain JSON (``schemas.layouts`` names the format).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from terraloom.pipeline.publish.config import CorpusFacts, PublishInputError
from terraloom.pipeline.publish.files import VersionFiles
from terraloom.schemas.layouts import TOKENS_FORMAT
from terraloom.storage.location import Location, LocationError

TOKENS_DIR = "tokens"
COMMITS_DIR = "_commits"


@dataclass(frozen=True)
class TokenFacts:
    """A token store that matches the corpus being published."""

    path: Location
    splits: tuple[str, ...]
    attrs: dict[str, dict[str, Any]]  # split -> group attributes
    fingerprint: str


def _group_attrs(loc: Location) -> dict[str, Any] | None:
    try:
        meta = json.loads((loc / "zarr.json").read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return attrs if isinstance(attrs, dict) else None


def load_tokens(tokens: str | os.PathLike[str] | Location, facts: CorpusFacts) -> TokenFacts:
    """Check that ``tokens`` is a committed token store of ``facts``'s corpus; PublishInputError if not.

    Rows are aligned with the corpus, so every corpus split with samples needs a split group
    of the same length; a store encoded from another corpus (its recorded corpus path exists
    and is not this one) is refused.
    """
    try:
        loc = Location.parse(tokens)
    except LocationError as exc:
        raise PublishInputError(f"--tokens: {exc}") from exc
    splits, attrs = [], {}
    for split in facts.splits:
        a = _group_attrs(loc / f"{split}.zarr")
        if a is None:
            continue
        if a.get("format") != TOKENS_FORMAT:
            raise PublishInputError(
                f"--tokens {loc}: {split}.zarr is not a token store ({a.get('format')!r})"
            )
        n = int(facts.manifest["splits"][split]["n_samples"])
        if int(a.get("n_samples", -1)) != n:
            raise PublishInputError(
                f"--tokens {loc}: {split}.zarr has {a.get('n_samples')} rows, the corpus {n}; "
                "encode this corpus"
            )
        _check_origin(loc, split, a, facts)
        splits.append(split)
        attrs[split] = a
    if not splits:
        raise PublishInputError(
            f"--tokens {loc}: no token store of the corpus splits ({', '.join(facts.splits)})"
        )
    missing = [s for s in facts.splits if s not in splits and facts.accepted(s)]
    if missing:
        raise PublishInputError(f"--tokens {loc}: splits {', '.join(missing)} are not encoded")
    return TokenFacts(loc, tuple(splits), attrs, _fingerprint(loc, splits))


def _check_origin(loc: Location, split: str, attrs: dict[str, Any], facts: CorpusFacts) -> None:
    """Refuse a store whose recorded corpus exists and is another one than ``facts``'s."""
    rel = attrs.get("corpus")
    if not isinstance(rel, str) or not rel or not loc.is_local or not facts.path.is_local:
        return
    recorded = rel if os.path.isabs(rel) else os.path.join(loc.path, rel)
    recorded = os.path.normpath(recorded)
    mine = os.path.normpath(os.path.join(facts.path.path, f"{split}.zarr"))
    if os.path.isdir(recorded) and os.path.realpath(recorded) != os.path.realpath(mine):
        raise PublishInputError(
            f"--tokens {loc}: {split}.zarr was encoded from {recorded}, not from {mine}"
        )


def _fingerprint(loc: Location, splits: list[str]) -> str:
    """Identity of the store's content: its metadata documents and commit markers (which
    hold the sha256 of every shard's arrays), plus every file's name and size."""
    h = hashlib.sha256()
    for split in splits:
        for rel in (loc / f"{split}.zarr").walk_files():
            h.update(f"{split}.zarr/{rel}".encode())
            obj = loc / f"{split}.zarr" / rel
            h.update(obj.read_bytes() if rel.endswith("zarr.json") else str(obj.size()).encode())
        for rel in (loc / COMMITS_DIR / split).walk_files():
            h.update(f"{COMMITS_DIR}/{split}/{rel}".encode())
            h.update((loc / COMMITS_DIR / split / rel).read_bytes())
    return h.hexdigest()


def _point_at_published_corpus(split: str) -> Any:
    def transform(rel: str, data: bytes) -> bytes | None:
        if rel != "zarr.json":  # only the split group's own metadata names the corpus
            return None
        meta = json.loads(data)
        meta.setdefault("attributes", {})["corpus"] = f"../{split}.zarr"
        return (json.dumps(meta, indent=2) + "\n").encode()

    return transform


def copy_tokens(tokens: TokenFacts, files: VersionFiles) -> None:
    """Copy the split groups and their commit markers to ``tokens/``."""
    for split in tokens.splits:
        files.copy_tree(
            tokens.path / f"{split}.zarr",
            f"{TOKENS_DIR}/{split}.zarr",
            transform=_point_at_published_corpus(split),
        )
        files.copy_tree(tokens.path / COMMITS_DIR / split, f"{TOKENS_DIR}/{COMMITS_DIR}/{split}")
