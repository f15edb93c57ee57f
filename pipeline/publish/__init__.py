"""Publishing a corpus: STAC, Croissant, a dataset card, statistics, checksums, TerraMesh shards.

``publish_corpus(corpus, out, config, tokens=...)`` writes ``out/<version>/`` (any location:
a local folder, ``s3://``, ``memory://`` ...) and commits it with a write-once marker;
``verify_published`` checks one; ``ingest_terramesh`` reads a TerraMesh-layout dataset into
a terraloom corpus. The command line (``terraloom-pipeline publish``, ``verify --published``)
is in ``terraloom.pipeline.cli``.
"""

from terraloom.pipeline.publish.config import (
    CorpusFacts,
    PublishConfig,
    PublishInputError,
    load_corpus,
)
from terraloom.pipeline.publish.publish import PublishSummary, publish_corpus, version_root
from terraloom.pipeline.publish.verify import PublishedReport, verify_published
from terraloom.pipeline.publish.webdataset import (
    IngestSummary,
    TerraMeshFormatError,
    ingest_terramesh,
)

__all__ = [
    "CorpusFacts",
    "IngestSummary",
    "PublishConfig",
    "PublishInputError",
    "PublishSummary",
    "PublishedReport",
    "TerraMeshFormatError",
    "ingest_terramesh",
    "load_corpus",
    "publish_corpus",
    "verify_published",
    "version_root",
]
