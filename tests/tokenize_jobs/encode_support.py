"""Shared fixtures of the encode/store/verify tests: a toy corpus and tiny real tokenizers.

The tokenizers are real FSQ-VAE tokenizers (issue 6's model, untrained, fixed seed,
narrow nets) plus the GEO bins and a WordPiece trained on the toy captions, saved in the
``tokenizers/<modality>/`` layout the CLI loads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import zarr

from terraloom.schemas.layouts import TOKEN_MODALITIES
from terraloom.schemas.modalities import get_modality
from terraloom.storage.location import Location
from terraloom.tokenize_jobs.store import read_commits
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


def make_corpus(
    root: Path,
    seed: int = 0,
    with_index: bool = True,
    modalities: tuple[str, ...] = TOKEN_MODALITIES,
) -> Path:
    """A one-split toy corpus with invalid rows inside shards and a partial last shard
    (``modalities``: the arrays it holds; fewer make it cheaper to write and upload)."""
    make_toy_corpus(
        root,
        {"train": N_SAMPLES},
        seed=seed,
        splits=("train",),
        shard_samples=SHARD,
        modalities=modalities,
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


def _cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run_cli(
    *args: str, torchrun: int = 0, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m terraloom.tokenize_jobs ...`` (optionally under torchrun) from the repo root."""
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
    return subprocess.run(
        cmd, cwd=REPO, env=_cli_env(), capture_output=True, text=True, timeout=timeout
    )


def encode_argv(corpus: object, tokenizers: object, out: object, *extra: str) -> list[str]:
    """``encode --corpus C --tokenizers T --out O`` plus ``extra`` (paths or URLs)."""
    paths = ["--corpus", str(corpus), "--tokenizers", str(tokenizers), "--out", str(out)]
    return ["encode", *paths, *extra]


def kill_when_committed(
    args: list[str], committed: Callable[[], int], n_commits: int, poll_s: float = 0.02
) -> int:
    """Start the CLI with ``args``, SIGKILL it once ``committed()`` (asked every ``poll_s``)
    reaches ``n_commits``; return ``committed()`` after its death. A hang ends at a deadline
    instead of blocking the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "terraloom.tokenize_jobs", *args],
        cwd=REPO,
        env=_cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if committed() >= n_commits:
                break
            time.sleep(poll_s)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    return committed()


def store_arrays(path: Path | Location) -> dict[str, np.ndarray]:
    """Every array of a Zarr group, on local disk or at a storage location."""
    store = path.zarr_store(read_only=True) if isinstance(path, Location) else str(path)
    g = zarr.open_group(store, mode="r")
    return {name: np.asarray(g[name][...]) for name in sorted(g.array_keys())}


def assert_same_store(a_dir: Path | Location, b_dir: Path | Location) -> None:
    """Two token stores hold the same arrays (``train.zarr``) and the same commits."""
    a, b = store_arrays(a_dir / "train.zarr"), store_arrays(b_dir / "train.zarr")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert read_commits(a_dir / "train.zarr") == read_commits(b_dir / "train.zarr")


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
# the kill-and-resume runs: batches of one crop and one reader, so each shard takes long
# enough for a SIGKILL to land between commits (the later --batch wins)
SLOW_ENCODE_ARGS = (*ENCODE_ARGS, "--batch", "1", "--prefetch", "1", "--read-threads", "1")


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


def slow_reference(env: dict[str, Path]) -> Path:
    """The uninterrupted run of the kill tests' schedule (batches of one crop) on local disk,
    encoded once per session next to the shared store: a resumed run is compared with an
    uninterrupted run of the same schedule."""
    from terraloom.tokenize_jobs.encode import EncodeConfig, encode

    reference = env["tokens"].parent / "reference_batch1"
    if not (reference / "train.zarr").exists():
        encode(
            env["corpus"],
            env["tokenizers"],
            reference,
            EncodeConfig(n_crops=CROPS, crop_px=CROP_SIZE, batch=1, progress=False),
        )
    return reference
