"""terraloom tokenize_jobs: tokenizer models, tokenizer training and the pre-tokenization
job that turns a corpus into a token store.

The public names are imported lazily so that ``python -m tokenize_jobs --help`` and
light users (the token store reader) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_tokenizer": "tokenize_jobs.tokenizers.io",
    "tokenizer_dir": "tokenize_jobs.tokenizers.io",
    "FSQImageTokenizer": "tokenize_jobs.tokenizers.image",
    "GeoTokenizer": "tokenize_jobs.tokenizers.geo",
    "CaptionTokenizer": "tokenize_jobs.tokenizers.caption",
    "TrainConfig": "tokenize_jobs.train",
    "train_tokenizer": "tokenize_jobs.train",
    "make_toy_corpus": "tokenize_jobs.testing",
    "CropSampler": "tokenize_jobs.corpus_reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenize_jobs' has no attribute {name!r}")
