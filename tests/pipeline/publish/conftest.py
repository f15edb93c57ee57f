"""The tiny reference corpus published once per session (quicklooks for a few samples only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def published(
    tiny_reference: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    from terraloom.pipeline.publish import PublishConfig, publish_corpus

    dest = tmp_path_factory.mktemp("published")
    config = PublishConfig(name="tiny-corpus", version="1.0.0", quicklooks=4, gallery_samples=4)
    summary = publish_corpus(tiny_reference["out"], dest, config)
    return {"dest": dest, "root": Path(summary.root), "summary": summary, "config": config}
