"""The tiny reference corpus published once per session (quicklooks for a few samples only),
and a token store of it written the way ``tokenize encode`` commits one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
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


def write_token_store(
    corpus: Path, out: Path, splits: dict[str, int], shard_samples: int, seed: int = 5
) -> dict[str, dict[str, np.ndarray]]:
    """A committed token store of ``corpus`` (S2L2A and DEM codes, one crop); its arrays."""
    from terraloom.schemas.layouts import create_token_store
    from terraloom.storage.location import Location
    from terraloom.tokenize_jobs.encode import write_shard

    rng = np.random.default_rng(seed)
    mods = ("S2L2A", "DEM")
    identities = {m: {"id": f"fsq-{m.lower()}", "version": "1", "sha256": "ab" * 32} for m in mods}
    written: dict[str, dict[str, np.ndarray]] = {}
    for split, n in splits.items():
        group = create_token_store(
            out / f"{split}.zarr",
            n,
            1,
            shard_samples=shard_samples,
            split=split,
            modality_names=mods,
        )
        group.attrs.update(
            {
                "tokenizers": identities,
                "crop_seed": seed,
                "corpus": os.path.relpath(corpus / f"{split}.zarr", out),
            }
        )
        arrays = {name: group[name] for name in (*mods, "crops", "valid")}
        full = {
            name: rng.integers(0, 1000, arr.shape).astype(arr.dtype)
            if name != "valid"
            else np.ones(arr.shape, bool)
            for name, arr in arrays.items()
        }
        for shard, lo in enumerate(range(0, n, shard_samples)):
            hi = min(n, lo + shard_samples)
            blocks = {name: v[lo:hi] for name, v in full.items()}
            write_shard(
                Location.parse(out / f"{split}.zarr"),
                arrays,
                shard,
                lo,
                hi,
                blocks,
                identities,
                seed,
            )
        written[split] = full
    return written
