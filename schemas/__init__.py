"""The contracts shared by every terraloom stage: modality registry, table schemas, store layouts.

No I/O beyond creating and validating stores; importing this package is cheap. The package
does not re-export names that equal a submodule's (``modalities()`` stays in
:mod:`terraloom.schemas.modalities`), so ``terraloom.schemas.modalities`` is always the module.
"""

from terraloom.schemas.layouts import (
    CORPUS_FORMAT_VERSION,
    CORPUS_MODALITIES,
    DEFAULT_SHARD_SAMPLES,
    TOKEN_MODALITIES,
    TOKENS_FORMAT_VERSION,
    ArraySpec,
    StoreLayout,
    corpus_layout,
    create_corpus_store,
    create_token_store,
    token_layout,
    validate_corpus,
    validate_tokens,
)
from terraloom.schemas.modalities import (
    CROP_PX,
    MODALITY_NAMES,
    PATCH_PX,
    REGISTRY,
    RESOLUTION_M,
    SAMPLE_PX,
    Band,
    Layout,
    Modality,
    Resampling,
    Scale,
    TokenizerKind,
    UnknownModalityError,
    get_modality,
)
from terraloom.schemas.tables import (
    INDEX_SCHEMA,
    PLAN_SCHEMA,
    REJECTS_SCHEMA,
    RejectReason,
    read_table,
    write_geoparquet,
)

__all__ = [
    "CORPUS_FORMAT_VERSION",
    "CORPUS_MODALITIES",
    "CROP_PX",
    "DEFAULT_SHARD_SAMPLES",
    "INDEX_SCHEMA",
    "MODALITY_NAMES",
    "PATCH_PX",
    "PLAN_SCHEMA",
    "REGISTRY",
    "REJECTS_SCHEMA",
    "RESOLUTION_M",
    "SAMPLE_PX",
    "TOKEN_MODALITIES",
    "TOKENS_FORMAT_VERSION",
    "ArraySpec",
    "Band",
    "Layout",
    "Modality",
    "RejectReason",
    "Resampling",
    "Scale",
    "StoreLayout",
    "TokenizerKind",
    "UnknownModalityError",
    "corpus_layout",
    "create_corpus_store",
    "create_token_store",
    "get_modality",
    "read_table",
    "token_layout",
    "validate_corpus",
    "validate_tokens",
    "write_geoparquet",
]
