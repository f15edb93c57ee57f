"""tokens: a token store published beside its corpus; the model's loader reads it from there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from terraloom.pipeline.publish import PublishConfig, PublishInputError, publish_corpus
from terraloom.pipeline.publish.checksums import read_sums
from terraloom.pipeline.publish.croissant import validate_croissant
from terraloom.pipeline.publish.stac import validate_stac
from terraloom.pipeline.publish.verify import verify_published
from tests.pipeline.publish.conftest import write_token_store

CONFIG = PublishConfig(name="tiny-corpus", formats=("zarr",), quicklooks=0, gallery_samples=0)


def _splits(tiny_reference: dict[str, Any]) -> dict[str, int]:
    manifest = json.loads((tiny_reference["out"] / "_build" / "manifest.json").read_text())
    return {s: int(v["n_samples"]) for s, v in manifest["splits"].items()}


def test_tokens_are_published_listed_described_and_loadable(
    tiny_reference: dict[str, Any], tmp_path: Path
) -> None:
    from terraloom.tokenize_jobs.store import TokenStore

    corpus = tiny_reference["out"]
    written = write_token_store(corpus, tmp_path / "tokens", _splits(tiny_reference), 4)
    summary = publish_corpus(corpus, tmp_path / "pub", CONFIG, tokens=tmp_path / "tokens")
    root = Path(summary.root)
    assert summary.tokens and verify_published(root).ok
    assert validate_stac(root) == [] and validate_croissant(root) == []
    sums = read_sums(root / "SHA256SUMS")
    assert "tokens/train.zarr/zarr.json" in sums and "tokens/_commits/val/shard-000000.json" in sums
    assert any(k.startswith("tokens/train.zarr/S2L2A/c/") for k in sums)
    # the published copy names the published corpus, so the pair works wherever it is put
    attrs = json.loads((root / "tokens" / "val.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["corpus"] == "../val.zarr" and attrs["tokenizers"]["DEM"]["id"] == "fsq-dem"
    for split, arrays in written.items():
        store = TokenStore(root / "tokens" / f"{split}.zarr", mode="zarr")
        rows = np.arange(store.n_samples)
        assert store.committed_shards() == set(
            range(-(-store.n_samples // 4))
        )  # commits came along
        assert store.valid_rows.tolist() == rows.tolist()
        got = store.batch(rows, np.zeros_like(rows), ("S2L2A", "DEM"))
        np.testing.assert_array_equal(got["DEM"].numpy(), arrays["DEM"][:, 0].astype(np.int64))
        np.testing.assert_array_equal(got["crops"].numpy(), arrays["crops"][:, 0])
    coll = json.loads((root / "stac" / "collection.json").read_text())
    assert coll["assets"]["tokens-val"]["href"] == "../tokens/val.zarr"
    croissant = json.loads((root / "croissant.json").read_text())
    sets = {d["@id"]: d for d in croissant["distribution"]}
    assert sets["tokens-train"]["includes"][0] == "tokens/train.zarr/**"
    card = (root / "README.md").read_text()
    assert "data.tokens=tokens" in card and "fsq-s2l2a" in card
    # publishing again with the same token store is a no-op, with another one a clash
    assert publish_corpus(corpus, tmp_path / "pub", CONFIG, tokens=tmp_path / "tokens").skipped
    with pytest.raises(PublishInputError, match="new --version"):
        publish_corpus(corpus, tmp_path / "pub", CONFIG)


def test_a_token_store_of_another_corpus_is_refused(
    tiny_reference: dict[str, Any], tmp_path: Path
) -> None:
    splits = {s: n + 1 for s, n in _splits(tiny_reference).items()}  # rows do not line up
    write_token_store(tiny_reference["out"], tmp_path / "tokens", splits, 4)
    with pytest.raises(PublishInputError, match="rows, the corpus"):
        publish_corpus(tiny_reference["out"], tmp_path / "pub", CONFIG, tokens=tmp_path / "tokens")
    assert not (tmp_path / "pub").exists() or not any((tmp_path / "pub").iterdir())
