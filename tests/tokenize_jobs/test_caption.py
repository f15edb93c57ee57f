from __future__ import annotations

from pathlib import Path

import pytest
import torch

from terraloom.tokenize_jobs.corpus_reader import read_texts
from terraloom.tokenize_jobs.protocol import SequenceTokenizer
from terraloom.tokenize_jobs.tokenizers.caption import CaptionTokenizer, train_wordpiece


@pytest.fixture(scope="module")
def captions(toy_corpus: Path) -> list[str]:
    return read_texts(toy_corpus, "train")


@pytest.fixture(scope="module")
def tok(captions: list[str]) -> CaptionTokenizer:
    return train_wordpiece(captions * 3, vocab_size=512, n_sentinels=8)


def test_specials_have_fixed_ids(tok: CaptionTokenizer) -> None:
    assert isinstance(tok, SequenceTokenizer)
    assert (tok.pad_id, tok.unk_id, tok.sos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.sentinel_ids == list(range(4, 12))
    assert tok.trained_vocab_size <= tok.vocab_size == 512


def test_round_trip_of_corpus_and_unseen_text(tok: CaptionTokenizer, captions: list[str]) -> None:
    texts = [
        *captions,
        "Mostly glaciers (99%); Zurich-like terrain around -12 m, NDVI 0.07 #tag.",
        "a  b [S_3]",
    ]
    ids, lengths = tok.encode_batch(texts, max_len=256)
    assert ids.dtype == torch.int64 and ids.shape == (len(texts), 256)
    assert (ids[:, 0] == tok.sos_id).all()
    assert all(ids[i, n - 1] == tok.eos_id for i, n in enumerate(lengths.tolist()))
    assert all((ids[i, n:] == 0).all() for i, n in enumerate(lengths.tolist()))
    assert tok.decode_batch(ids, lengths) == texts
    # the corpus vocabulary was learned: whole words, not characters, and no UNK
    n_tok = int(lengths[0]) - 2
    assert n_tok <= len(captions[0].split()) + 2
    assert not (ids[: len(captions)] == tok.unk_id).any()


def test_characters_outside_the_alphabet_become_unk(tok: CaptionTokenizer) -> None:
    ids = tok.encode("trees Zürich crops")
    assert tok.unk_id in ids
    assert tok.decode(ids) == "trees[UNK] crops"


def test_truncation_keeps_eos(tok: CaptionTokenizer, captions: list[str]) -> None:
    ids, lengths = tok.encode_batch(captions[:2], max_len=5)
    assert lengths.tolist() == [5, 5]
    assert (ids[:, 4] == tok.eos_id).all()


def test_save_and_reload_gives_identical_ids(
    tok: CaptionTokenizer, captions: list[str], tmp_path: Path
) -> None:
    sha = tok.save(tmp_path / "tokenizer.json")
    again = CaptionTokenizer.from_file(tmp_path / "tokenizer.json", tok.vocab_size, tok.n_sentinels)
    assert again.identity["sha256"] == sha
    a, la = tok.encode_batch(captions, 64)
    b, lb = again.encode_batch(captions, 64)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_too_small_vocabulary_is_rejected(captions: list[str]) -> None:
    with pytest.raises(ValueError):
        train_wordpiece(captions, vocab_size=50)
