"""storage/kind.py: a corpus and a token store are told apart from their attributes."""

from __future__ import annotations

from pathlib import Path

import pytest

from terraloom.schemas.layouts import create_corpus_store, create_token_store
from terraloom.storage.kind import CORPUS, TOKENS, WrongStoreError, expect_store_kind, store_kind


def test_store_kind(tmp_path: Path) -> None:
    create_corpus_store(tmp_path / "corpus" / "val.zarr", n_samples=2, shard_samples=2)
    create_token_store(tmp_path / "tokens" / "train.zarr", 2, 1, crop_px=32, shard_samples=2)
    assert store_kind(tmp_path / "corpus") == CORPUS
    assert store_kind(tmp_path / "corpus" / "val.zarr") == CORPUS
    assert store_kind(tmp_path / "tokens") == TOKENS
    assert store_kind(tmp_path / "nothing") is None and store_kind(tmp_path) is None
    expect_store_kind(tmp_path / "corpus", CORPUS)
    expect_store_kind(tmp_path / "empty", TOKENS)  # unknown: the command's own checks decide
    with pytest.raises(WrongStoreError, match="tokens is a token store, not a corpus"):
        expect_store_kind(tmp_path / "tokens", CORPUS)
