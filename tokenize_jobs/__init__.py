"""terraloom tokenize_jobs: tokenizer models, tokenizer training and the pre-tokenization
job that turns a corpus into a token store.

The public names are imported lazily so that ``python -m terraloom.tokenize_jobs --help`` and
light users (the token store reader) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_tokenizer": "terraloom.tokenize_jobs.tokenizers.io",
    "tokenizer_dir": "terraloom.tokenize_jobs.tokenizers.io",
    "FSQImageTokenizer": "terraloom.tokenize_jobs.tokenizers.image",
    "GeoTokenizer": "terraloom.tokenize_jobs.tokenizers.geo",
    "CaptionTokenizer": "terraloom.tokenize_jobs.tokenizers.caption",
    "TrainConfig": "terraloom.tokenize_jobs.train",
    "train_tokenizer": "terraloom.tokenize_jobs.train",
    "CropSampler": "terraloom.tokenize_jobs.corpus_reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenize_jobs' has no attribute {name!r}")
