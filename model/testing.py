"""A tiny, *learnable* toy world for tests and benches: token store + corpus, fixed seed.

Each sample has a latent class ``c``; its 264 px tile is split into quadrants whose class
is ``(c + quadrant) % n_classes``. Every modality is a deterministic function of the local
class (image codes from a per-modality code book with 10 % noise, pixels from per-class band
levels plus noise, GEO bins and a caption from ``c``), so any modality predicts the others
and a model that learns lowers its loss quickly.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terraloom.schemas.layouts import (
    CAPTION_MAX_TOKENS,
    TOKEN_MODALITIES,
    create_corpus_store,
    create_token_store,
)
from terraloom.schemas.modalities import CROP_PX, PATCH_PX, SAMPLE_PX, Layout, get_modality


@dataclass(frozen=True)
class ToyWorld:
    tokens: Path  # token-store root holding <split>.zarr
    corpus: Path  # corpus root holding <split>.zarr
    classes: dict[str, np.ndarray]  # split -> (n,) latent class per row


def _quadrant_class(c: np.ndarray, y: np.ndarray, x: np.ndarray, n_classes: int) -> np.ndarray:
    half = SAMPLE_PX // 2
    return (c[..., None, None] + 2 * (y >= half) + (x >= half)) % n_classes


def make_toy_world(
    root: str | os.PathLike[str],
    n_samples: int = 32,
    n_crops: int = 2,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    pixel_modalities: tuple[str, ...] = ("S2L2A", "S1GRD"),
    n_classes: int = 4,
    shard_samples: int = 16,
    noise: float = 0.1,
    seed: int = 0,
) -> ToyWorld:
    """Write ``<root>/tokens/<split>.zarr`` and ``<root>/corpus/<split>.zarr``."""
    root = Path(root)
    classes = {}
    for k, split in enumerate(splits):
        rng = np.random.default_rng([seed, k])
        book = np.random.default_rng([seed, 999])  # shared across splits: same world
        c = rng.integers(0, n_classes, n_samples)
        classes[split] = c
        _write_tokens(
            root / "tokens" / f"{split}.zarr",
            split,
            c,
            n_crops,
            n_classes,
            shard_samples,
            noise,
            rng,
            book,
        )
        _write_corpus(
            root / "corpus" / f"{split}.zarr",
            split,
            c,
            pixel_modalities,
            n_classes,
            shard_samples,
            rng,
        )
    return ToyWorld(root / "tokens", root / "corpus", classes)


def _crops(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    crops = np.zeros((n, k, 5), np.int32)
    crops[..., 0] = rng.integers(0, SAMPLE_PX - CROP_PX + 1, (n, k))
    crops[..., 1] = rng.integers(0, SAMPLE_PX - CROP_PX + 1, (n, k))
    crops[..., 2:4] = CROP_PX
    crops[..., 4] = rng.integers(0, 4, (n, k))  # flip bits: 1 left-right, 2 top-bottom
    return crops


def _write_tokens(
    path: Path,
    split: str,
    c: np.ndarray,
    k: int,
    n_classes: int,
    shard: int,
    noise: float,
    rng: np.random.Generator,
    book: np.random.Generator,
) -> None:
    n = len(c)
    g = create_token_store(path, n, k, shard_samples=shard, split=split)
    crops = _crops(rng, n, k)
    grid = CROP_PX // PATCH_PX
    py, px = np.divmod(np.arange(grid * grid), grid)
    cy = py * PATCH_PX + PATCH_PX // 2  # patch centres inside the (flipped) crop
    cx = px * PATCH_PX + PATCH_PX // 2
    flip = crops[..., 4, None]
    centre_y = crops[..., 0, None] + np.where(flip & 2, CROP_PX - 1 - cy, cy)
    centre_x = crops[..., 1, None] + np.where(flip & 1, CROP_PX - 1 - cx, cx)
    q = (
        c[:, None, None] + 2 * (centre_y >= SAMPLE_PX // 2) + (centre_x >= SAMPLE_PX // 2)
    ) % n_classes
    for name in TOKEN_MODALITIES:
        m = get_modality(name)
        vocab = int(m.vocab_size or 1)
        if m.layout is Layout.IMAGE:
            codes = book.integers(0, vocab, n_classes)[q]
            noisy = rng.random(codes.shape) < noise
            codes = np.where(noisy, rng.integers(0, vocab, codes.shape), codes)
            g[name][:] = codes.astype(np.uint16)
        elif m.layout is Layout.VECTOR:  # GEO: lat bin then lon bin, from the class
            ids = np.stack([100 + c * 7, 720 + 300 + c * 11], -1)
            g[name][:] = np.repeat(ids[:, None], k, 1).astype(np.uint16)
        else:  # CAPTION: a short class-specific sentence
            lens = 6 + c % 5
            ids = np.zeros((n, CAPTION_MAX_TOKENS), np.int64)
            for r in range(n):
                ids[r, : lens[r]] = 100 + 17 * c[r] + np.arange(lens[r]) * 3
            g[name][:] = np.repeat(ids[:, None], k, 1).astype(np.uint16)
            g[f"{name}_len"][:] = np.repeat(lens[:, None], k, 1).astype(np.uint16)
    g["crops"][:] = crops
    g["valid"][:] = np.ones(n, bool)


def _write_corpus(
    path: Path,
    split: str,
    c: np.ndarray,
    pixel_modalities: tuple[str, ...],
    n_classes: int,
    shard: int,
    rng: np.random.Generator,
) -> None:
    n = len(c)
    g = create_corpus_store(
        path,
        n,
        shard_samples=shard,
        split=split,
        modality_names=tuple(dict.fromkeys(pixel_modalities)),
    )
    yy, xx = np.mgrid[0:SAMPLE_PX, 0:SAMPLE_PX]
    q = _quadrant_class(c, yy, xx, n_classes)  # (n, H, W)
    for name in pixel_modalities:
        m = get_modality(name)
        levels = np.random.default_rng([zlib.crc32(name.encode()), 7]).normal(
            0, 1, (n_classes, m.n_bands)
        )
        mean = np.asarray(m.mean, np.float32)[None, :, None, None]
        std = np.asarray(m.std, np.float32)[None, :, None, None]
        lv = levels[q].transpose(0, 3, 1, 2).astype(np.float32)  # (n, C, H, W)
        x = mean + std * (lv + 0.1 * rng.standard_normal(lv.shape, np.float32))
        lo, hi = m.value_range
        x = np.clip(x, lo + (1 if m.nodata == 0 else 0), hi)
        g[name][:] = x.astype(m.np_dtype)
    g["valid"][:] = np.ones(n, bool)


def _ddp_worker(rank: int, world: int, port: int, cfgs_json: str, max_steps: int | None) -> None:
    """One torchrun-like process: env rendezvous on localhost, gloo, one CPU thread; runs
    each config in turn in the same process group."""
    import json

    import torch
    import torch.distributed as dist

    from terraloom.model.config import TrainConfig, from_dict
    from terraloom.model.train import train

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        for item in json.loads(cfgs_json):
            cfg = from_dict(TrainConfig, item)
            result = train(cfg, resume=False, max_steps=max_steps, progress=False, echo=False)
            if rank == 0:
                (Path(cfg.out_dir) / "losses.json").write_text(json.dumps(result.losses))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_data_parallel(
    cfgs: Sequence[Any], world: int = 2, max_steps: int | None = None
) -> list[list[float]]:
    """Train each config in ``world`` local CPU processes (gloo), one after the other in
    the same processes; rank 0's per-step losses of each run.

    A test/smoke helper equivalent to ``torchrun --nproc-per-node world``.
    """
    import json
    import socket

    import torch.multiprocessing as mp

    from terraloom.model.config import to_dict

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    payload = json.dumps([to_dict(c) for c in cfgs])
    mp.spawn(_ddp_worker, args=(world, port, payload, max_steps), nprocs=world, join=True)
    return [json.loads((Path(c.out_dir) / "losses.json").read_text()) for c in cfgs]
