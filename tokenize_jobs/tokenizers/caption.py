"""CAPTION tokenizer: WordPiece trained with Hugging Face ``tokenizers`` on corpus captions.

Words are split on spaces with a SentencePiece-style marker (``▁``) instead of BERT's
punctuation splitting, and the decoder strips ``##`` and fuses pieces, so
``decode(encode(text)) == text`` for any NFC text without a leading space (numbers like
``0.61`` and ``(21%);`` come back exactly). Printable ASCII is always in the alphabet, so
unseen words degrade to characters; a word with a character outside the alphabet
becomes one ``[UNK]`` (decoded as ``[UNK]``, without its leading space). Ids: PAD = 0 (the token
store's zero padding), UNK, SOS, EOS, then the sentinel tokens used for span masking.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from terraloom.tokenize_jobs.protocol import TOKENIZER_FORMAT_VERSION

PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
DEFAULT_SENTINELS = 32
_ALPHABET = [c for c in string.printable if not c.isspace()]


def sentinel_tokens(n: int) -> list[str]:
    return [f"[S_{i}]" for i in range(n)]


def _new_tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(
        models.WordPiece(
            unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=True
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("##", ""),
            decoders.Replace("▁", " "),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return tok


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    n_sentinels: int = DEFAULT_SENTINELS,
    min_frequency: int = 2,
) -> CaptionTokenizer:
    """Train a WordPiece vocabulary (at most ``vocab_size`` ids, specials included)."""
    from tokenizers import trainers

    specials = [PAD, UNK, SOS, EOS, *sentinel_tokens(n_sentinels)]
    if vocab_size < len(specials) + 2 * len(_ALPHABET):
        raise ValueError(f"vocab_size {vocab_size} is too small for the specials and the alphabet")
    # Seed both word-initial and continuation forms of every printable character.
    seed = [" ".join(_ALPHABET), " ".join("a" + c for c in _ALPHABET)]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        continuing_subword_prefix="##",
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    tok = _new_tokenizer()
    tok.train_from_iterator(_chain(seed, texts), trainer)
    return CaptionTokenizer(tok, vocab_size=vocab_size, n_sentinels=n_sentinels)


def _chain(first: Sequence[str], rest: Iterable[str]) -> Iterable[str]:
    yield from first
    for t in rest:
        if t:
            yield t


class CaptionTokenizer:
    """WordPiece behind the ``SequenceTokenizer`` protocol.

    ``vocab_size`` is the configured capacity (every id is below it); the trained
    vocabulary may be smaller when the corpus has fewer distinct pieces
    (``trained_vocab_size``).
    """

    modality = "CAPTION"

    def __init__(self, tokenizer, vocab_size: int, n_sentinels: int, sha256: str = "") -> None:  # type: ignore[no-untyped-def]
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self.n_sentinels = int(n_sentinels)
        self.trained_vocab_size = int(tokenizer.get_vocab_size())
        if self.trained_vocab_size > self.vocab_size:
            raise ValueError(
                f"trained vocabulary {self.trained_vocab_size} exceeds vocab_size {self.vocab_size}"
            )
        ids = [tokenizer.token_to_id(t) for t in (PAD, UNK, SOS, EOS)]
        if ids != [0, 1, 2, 3]:
            raise ValueError(f"special tokens must have ids 0..3, got {ids}")
        self.pad_id, self.unk_id, self.sos_id, self.eos_id = ids
        self.sentinel_ids = [tokenizer.token_to_id(t) for t in sentinel_tokens(self.n_sentinels)]
        self.identity = {
            "id": "CAPTION-wordpiece",
            "version": f"{TOKENIZER_FORMAT_VERSION}.{(sha256 or self.digest())[:12]}",
            "sha256": sha256 or self.digest(),
        }

    def to_json(self) -> str:
        return str(self.tokenizer.to_str())

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path) -> str:
        """Write ``tokenizer.json``; return its sha256."""
        Path(path).write_text(self.to_json(), encoding="utf-8")
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int, n_sentinels: int) -> CaptionTokenizer:
        from tokenizers import Tokenizer

        sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return cls(Tokenizer.from_file(str(path)), vocab_size, n_sentinels, sha256=sha)

    def encode(self, text: str) -> list[int]:
        """Text -> ids without SOS/EOS."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; PAD/SOS/EOS dropped, sentinels and ``[UNK]`` kept visible."""
        drop = {self.pad_id, self.sos_id, self.eos_id}
        return str(
            self.tokenizer.decode(
                [int(i) for i in ids if int(i) not in drop], skip_special_tokens=False
            )
        )

    def encode_batch(self, values: object, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (ids (B, max_len) PAD(0)-padded as SOS ... EOS, lengths (B,)).

        Sequences longer than ``max_len`` are truncated but always end with EOS.
        """
        if max_len < 2:
            raise ValueError("max_len must leave room for SOS and EOS")
        texts = [values] if isinstance(values, str) else list(values)  # type: ignore[call-overload]
        encoded = self.tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)
        ids = torch.full((len(texts), max_len), self.pad_id, dtype=torch.int64)
        lengths = torch.zeros(len(texts), dtype=torch.int64)
        for i, enc in enumerate(encoded):
            seq = [self.sos_id, *enc.ids[: max_len - 2], self.eos_id]
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
            lengths[i] = len(seq)
        return ids, lengths

    def decode_batch(self, ids: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        ids = torch.as_tensor(ids)
        lengths = torch.as_tensor(lengths)
        return [self.decode(row[: int(n)]) for row, n in zip(ids.tolist(), lengths.tolist())]
