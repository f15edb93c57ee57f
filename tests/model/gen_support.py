"""Shared fixtures of the generation / TiM / evaluation tests.

A toy corpus (``tokenize_jobs.testing.make_toy_corpus``: land-cover regions driving every
modality) with an ``index.parquet``, tiny real tokenizers (untrained FSQ-VAEs with narrow
nets and the GEO bins) and the token store the real
encode job writes from them, on 64 px crops (16 tokens per image) so that every model
pass is cheap. Built once per test process under a lock, read-only afterwards.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from terraloom.model.config import ModelConfig
from terraloom.model.transformer import TerraloomModel

MODALITIES = ("S2L2A", "S1GRD", "DEM", "LULC", "GEO")
CROP = 64
N_CROPS = 2
SPLITS = {"train": 8, "val": 3}


@dataclass(frozen=True)
class Stack:
    corpus: Path
    tokenizers: Path
    tokens: Path


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread while a module of these tests runs.

    The ops here are small; on a shared 2-core machine (xdist workers, other jobs) several
    spinning OpenMP threads per process make them many times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model_config(**kw: object) -> ModelConfig:
    base: dict[str, object] = dict(
        dim=32,
        enc_depth=2,
        dec_depth=1,
        heads=2,
        image_px=CROP,
        pixel_inputs=("S2L2A", "S1GRD"),
        token_inputs=("S2L2A", "S1GRD", "DEM", "LULC", "GEO", "CAPTION"),
        targets=("S2L2A", "S1GRD", "DEM", "LULC", "GEO", "CAPTION"),
    )
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def tiny_model(seed: int = 0, **kw: object) -> TerraloomModel:
    torch.manual_seed(seed)
    return TerraloomModel(tiny_model_config(**kw)).eval()


def _build(base: Path) -> None:
    from terraloom.schemas.modalities import get_modality
    from terraloom.tokenize_jobs.encode import EncodeConfig, encode
    from terraloom.tokenize_jobs.testing import make_toy_corpus
    from terraloom.tokenize_jobs.tokenizers.geo import GeoTokenizer
    from terraloom.tokenize_jobs.tokenizers.image import FSQVAE, FSQVAEConfig
    from terraloom.tokenize_jobs.tokenizers.io import save_geo_tokenizer, save_image_tokenizer
    from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig

    corpus = base / "corpus"
    make_toy_corpus(
        corpus, SPLITS, seed=0, splits=tuple(SPLITS), shard_samples=8, modalities=MODALITIES
    )
    ids, splits, rows = [], [], []
    for split in SPLITS:
        g = zarr.open_group(str(corpus / f"{split}.zarr"), mode="r")
        for r in np.flatnonzero(np.asarray(g["valid"][:])):
            ids.append(f"{split}-{int(r):03d}")
            splits.append(split)
            rows.append(int(r))
    pq.write_table(
        pa.table({"sample_id": ids, "split": splits, "row": np.asarray(rows, np.int64)}),
        corpus / "index.parquet",
    )
    net = ConvNetConfig(width=8, channel_mult=(1, 1, 2, 2), blocks=(0, 0, 0, 0))
    toks = base / "tokenizers"
    for i, name in enumerate(MODALITIES):
        out = toks / name.lower()
        if get_modality(name).is_image:
            torch.manual_seed(100 + i)
            save_image_tokenizer(FSQVAE(FSQVAEConfig.for_modality(name, net=net)).eval(), out)
        else:
            save_geo_tokenizer(GeoTokenizer(), out)
    encode(
        corpus,
        toks,
        base / "tokens",
        EncodeConfig(
            n_crops=N_CROPS,
            crop_px=CROP,
            batch=32,
            device="cpu",
            modalities=MODALITIES,
            progress=False,
        ),
    )


def shared_root(tmp_path_factory: object) -> Path:
    """The session's temp root, shared by xdist workers (their basetemps are its children)."""
    base = Path(tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def toy_stack(tmp_root: Path) -> Stack:
    """Build (once per directory, under a lock) and return the toy corpus + tokenizers + tokens."""
    base = tmp_root / "gen_stack"
    base.mkdir(parents=True, exist_ok=True)
    done = base / ".done"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                _build(base)
                done.write_text(str(os.getpid()))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return Stack(base / "corpus", base / "tokenizers", base / "tokens")
