"""Shared fixtures of the encode/store/verify tests: a toy corpus and tiny real tokenizers.

The tokenizers are real FSQ-VAE tokenizers (issue 6's model, untrained, fixed seed,
narrow nets) plus the GEO bins and a WordPiece trained on the toy captions, saved in the
``tokenizers/<modality>/`` layout the CLI loads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import zarr

from terraloom.schemas.layouts import TOKEN_MODALITIES
from terraloom.schemas.modalities import get_modality
from terraloom.tokenize_jobs.testing import make_toy_corpus
from terraloom.tokenize_jobs.tokenizers.caption import train_wordpiece
from terraloom.tokenize_jobs.tokenizers.geo import GeoTokenizer
from terraloom.tokenize_jobs.tokenizers.image import FSQVAE, FSQVAEConfig
from terraloom.tokenize_jobs.tokenizers.io import (
    save_caption_tokenizer,
    save_geo_tokenizer,
    save_image_tokenizer,
)
from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig

REPO = Path(__file__).resolve().parents[2]
TINY_NET = ConvNetConfig(width=8, channel_mult=(1, 1, 2, 2), blocks=(0, 0, 0, 0))
N_SAMPLES = 22  # shards of 8, 8, 6 rows
SHARD = 8
INVALID_ROWS = (3, 9, 10, 21)


def make_corpus(root: Path, seed: int = 0, with_index: bool = True) -> Path:
    """A one-split toy corpus with invalid rows inside shards and a partial last shard."""
    make_toy_corpus(
        root,
        {"train": N_SAMPLES},
        seed=seed,
        splits=("train",),
        shard_samples=SHARD,
        modalities=TOKEN_MODALITIES,
    )
    g = zarr.open_group(str(root / "train.zarr"), mode="r+")
    valid = np.asarray(g["valid"][:]).copy()
    valid[list(INVALID_ROWS)] = False
    g["valid"][:] = valid
    if with_index:
        rows = np.flatnonzero(valid)
        table = pa.table(
            {
                "sample_id": [f"451U_946L-{r:03d}" for r in rows],
                "split": ["train"] * len(rows),
                "row": rows.astype(np.int64),
            }
        )
        pq.write_table(table, root / "index.parquet")
    return root


def make_tokenizers(
    root: Path, corpus: Path, seed: int = 0, modalities: tuple[str, ...] = TOKEN_MODALITIES
) -> Path:
    """Tiny real tokenizers for every token modality under ``root/<modality>/``."""
    for i, name in enumerate(modalities):
        m = get_modality(name)
        out = root / name.lower()
        if m.is_image:
            torch.manual_seed(seed * 100 + i)
            save_image_tokenizer(FSQVAE(FSQVAEConfig.for_modality(name, net=TINY_NET)).eval(), out)
        elif name == "GEO":
            save_geo_tokenizer(GeoTokenizer(), out)
        else:
            g = zarr.open_group(str(corpus / "train.zarr"), mode="r")
            caps = [bytes(r).rstrip(b"\0").decode() for r in np.asarray(g["CAPTION"][:])]
            save_caption_tokenizer(
                train_wordpiece(caps, vocab_size=512, n_sentinels=4, min_frequency=1), out
            )
    return root


def run_cli(
    *args: str, torchrun: int = 0, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m terraloom.tokenize_jobs ...`` (optionally under torchrun) from the repo root."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            "-m",
            "terraloom.tokenize_jobs",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "terraloom.tokenize_jobs", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(g[name][...]) for name in sorted(g.array_keys())}


# the reference run of every test module: 3 crops of 64 px (16 tokens), batches of 16
CROPS, CROP_SIZE, BATCH = 3, 64, 16
ENCODE_ARGS = (
    "--crops",
    str(CROPS),
    "--crop-size",
    str(CROP_SIZE),
    "--batch",
    str(BATCH),
    "--device",
    "cpu",
    "--no-progress",
)


def shared(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Corpus, tokenizers and one encoded store, built once per test session (read-only:
    tests that change them work on copies)."""
    from terraloom.tokenize_jobs.encode import EncodeConfig, encode

    base = tmp_path_factory.getbasetemp() / "encode_shared"
    paths = {
        "corpus": base / "corpus",
        "tokenizers": base / "tokenizers",
        "tokens": base / "tokens",
    }
    if not (base / "done").exists():
        make_corpus(paths["corpus"])
        make_tokenizers(paths["tokenizers"], paths["corpus"])
        encode(
            paths["corpus"],
            paths["tokenizers"],
            paths["tokens"],
            EncodeConfig(n_crops=CROPS, crop_px=CROP_SIZE, batch=BATCH, progress=False),
        )
        (base / "done").touch()
    return paths
