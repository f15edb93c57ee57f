"""Publishing a corpus: STAC, Croissant, a dataset card, statistics, checksums, TerraMesh shards.

``publish_corpus(corpus, out, config)`` writes ``out/<version>/``; ``verify_published``
checks one; ``ingest_terramesh`` reads a TerraMesh-layout dataset into a terraloom corpus.
"""

from terraloom.pipeline.publish.config import (
    CorpusFacts,
    PublishConfig,
    PublishInputError,
    load_corpus,
)
from terraloom.pipeline.publish.publish import PublishSummary, add_publish_parser, publish_corpus
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
    "add_publish_parser",
    "ingest_terramesh",
    "load_corpus",
    "publish_corpus",
    "verify_published",
]
