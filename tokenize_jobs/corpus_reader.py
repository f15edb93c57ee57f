"""Read crops of one modality from a corpus split (``<corpus>/<split>.zarr``).

A crop is ``(top, left, h, w, flip)`` - the token store's ``crops`` record, cut with
:mod:`tokenize_jobs.crops` (``flip`` bit 0 mirrors x, bit 1 mirrors y). The training
batch of a step is a pure function of ``(seed, step, rank)``, so a resumed or re-run
job sees exactly the same data without saving sampler state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from terraloom.schemas.modalities import CROP_PX, SAMPLE_PX, get_modality
from terraloom.storage.location import Location
from terraloom.tokenize_jobs.crops import apply_crops

DEFAULT_CACHE_BYTES = 1 << 30


def split_path(corpus: str | os.PathLike[str] | Location, split: str) -> Location:
    """``<corpus>/<split>.zarr`` (a local path or any location)."""
    return Location.parse(corpus) / f"{split}.zarr"


def open_split(corpus: str | os.PathLike[str] | Location, split: str) -> Any:
    """Open a corpus split read-only, with a clear error when it is missing. The corpus may
    be on any location: zarr reads it through the store the location gives."""
    import zarr

    path = split_path(corpus, split)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"no corpus split {split!r} at {path} (expected a Zarr v3 group)")
    return zarr.open_group(path.zarr_store(read_only=True), mode="r")


def valid_rows(group: Any) -> np.ndarray:
    """Row numbers that hold data (the ``valid`` array)."""
    return np.flatnonzero(np.asarray(group["valid"][:], dtype=bool))


def read_rows(group: Any, name: str, rows: np.ndarray) -> np.ndarray:
    """Rows of one array in the given order (reads each needed row once)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        arr = group[name]
        return np.empty((0, *arr.shape[1:]), dtype=arr.dtype)
    uniq, inverse = np.unique(rows, return_inverse=True)
    arr = group[name]
    # Contiguous runs read as slices: zarr's orthogonal integer indexing is far slower.
    breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
    parts = [np.asarray(arr[int(run[0]) : int(run[-1]) + 1]) for run in np.split(uniq, breaks)]
    return np.concatenate(parts)[inverse]


def random_crops(
    rng: np.random.Generator,
    n: int,
    crop_px: int = CROP_PX,
    sample_px: int = SAMPLE_PX,
    flips: bool = True,
) -> np.ndarray:
    """(n, 5) int32 crops: uniform top/left, random flips (none when ``flips`` is False)."""
    if crop_px > sample_px:
        raise ValueError(f"crop {crop_px} px is larger than the sample {sample_px} px")
    top = rng.integers(0, sample_px - crop_px + 1, n)
    left = rng.integers(0, sample_px - crop_px + 1, n)
    flip = rng.integers(0, 4, n) if flips else np.zeros(n, np.int64)
    size = np.full(n, crop_px)
    return np.stack([top, left, size, size, flip], axis=1).astype(np.int32)


def crop_batch(samples: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """(B, C, H, W) samples and (B, 5) crops of one size -> (B, C, h, w)."""
    return apply_crops(samples, crops)


#: Rows read at once by :meth:`CropSampler.fixed_batches`.
_FIXED_READ_ROWS = 32


@dataclass
class CropSampler:
    """Random crops with flips of one modality for training.

    Rows come from the valid rows of the split, sharded by rank
    (``rows[rank::world_size]``). Small splits are held in memory
    (``cache_bytes``); large ones are read per batch.
    """

    corpus: str | os.PathLike[str]
    split: str
    modality: str
    crop_px: int = CROP_PX
    batch_size: int = 8
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    flips: bool = True
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def __post_init__(self) -> None:
        self.name = get_modality(self.modality).name
        self.group = open_split(self.corpus, self.split)
        if self.name not in self.group:
            raise KeyError(f"corpus split {self.split!r} has no {self.name} array")
        rows = valid_rows(self.group)
        self.all_rows = rows
        self.rows = rows[self.rank :: self.world_size]
        if self.rows.size == 0:
            raise ValueError(
                f"no valid rows of split {self.split!r} for rank {self.rank}/{self.world_size}"
            )
        arr = self.group[self.name]
        self.sample_px = int(arr.shape[-1])
        nbytes = int(self.rows.size * np.prod(arr.shape[1:]) * np.dtype(arr.dtype).itemsize)
        self._cache = (
            read_rows(self.group, self.name, self.rows) if nbytes <= self.cache_bytes else None
        )

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(stored values (B, C, crop, crop), crops (B, 5)) for a training step."""
        return self._draw(np.random.default_rng([self.seed, step, self.rank]))

    def fixed_batches(self, n_batches: int) -> np.ndarray:
        """``n_batches`` x ``batch_size`` crops for statistics before training: drawn
        with seed keys of another length than any step's (so no step repeats them), from
        all valid rows and without the rank, so every rank of a DDP run gets the very
        same crops."""
        rng = np.random.default_rng([self.seed, max(n_batches, 1)])
        n = max(n_batches, 1) * self.batch_size
        rows = np.sort(rng.choice(self.all_rows.size, min(n, self.all_rows.size), replace=False))
        src = np.sort(rng.integers(0, rows.size, n))  # each crop's row, grouped by row
        crops = random_crops(rng, n, self.crop_px, self.sample_px, self.flips)
        out = []
        for lo in range(0, rows.size, _FIXED_READ_ROWS):  # bounded memory: a few rows at a time
            hi = min(lo + _FIXED_READ_ROWS, rows.size)
            sel = (src >= lo) & (src < hi)
            if sel.any():
                samples = read_rows(self.group, self.name, self.all_rows[rows[lo:hi]])
                out.append(apply_crops(samples, crops[sel], src=src[sel] - lo))
        return np.concatenate(out)

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.integers(0, self.rows.size, self.batch_size)
        crops = random_crops(rng, self.batch_size, self.crop_px, self.sample_px, self.flips)
        if self._cache is not None:
            samples = self._cache[pick]
        else:
            samples = read_rows(self.group, self.name, self.rows[pick])
        return crop_batch(samples, crops), crops


def read_texts(corpus: str | os.PathLike[str], split: str, name: str = "CAPTION") -> list[str]:
    """Decoded utf-8 captions of the valid rows (zero padding stripped)."""
    group = open_split(corpus, split)
    data = read_rows(group, name, valid_rows(group))
    return [
        bytes(row).rstrip(b"\x00").decode("utf-8", errors="replace")
        for row in np.asarray(data, np.uint8)
    ]
