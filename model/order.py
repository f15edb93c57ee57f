"""The order a split's samples are served in: a pure function of (seed, epoch, rank, world,
batch index), so that resuming at a batch replays the rest exactly and data-parallel ranks
never share a sample.

Two schemes: :class:`EpochOrder` (true per-sample random order, world-size invariant) and
:class:`BlockOrder` (chunk-level shuffle plus a shuffle window per rank, the WebDataset / 4M
scheme, so that one read of a token-store chunk serves many samples). ``model.data``'s
``MaskedBatches`` reads the rows they name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

_SEED_TAG_ORDER = 0x5EED
_SEED_TAG_BLOCK = 0xB10C
_SEED_TAG_WINDOW = 0x3F1D


class TooFewRowsError(ValueError):
    """A split holds fewer valid rows than one global batch (a validation split may degrade)."""


#: ``MaskedBatches(order=...)``: ``random`` = :class:`EpochOrder`, ``block`` = :class:`BlockOrder`,
#: ``auto`` = random for a store held in RAM, block for one read from disk.
OrderKind = Literal["auto", "random", "block"]
#: default samples per shuffle window of :class:`BlockOrder` (rounded up to whole local batches)
SHUFFLE_BUFFER = 4096


@dataclass(frozen=True)
class _Order:
    """What both orders share: the valid rows, the batch geometry and the rank."""

    rows: np.ndarray  # valid rows of the split
    n_crops: int
    global_batch: int
    seed: int
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % self.world:
            raise ValueError(
                f"global batch {self.global_batch} is not divisible by world size {self.world}"
            )
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is outside world size {self.world}")
        if len(self.rows) < self.global_batch:
            raise TooFewRowsError(
                f"split has {len(self.rows)} valid rows, fewer than one global batch of {self.global_batch}"
            )

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world

    @property
    def batches_per_epoch(self) -> int:
        return len(self.rows) // self.global_batch


@dataclass(frozen=True)
class EpochOrder(_Order):
    """True per-sample random order: each epoch is a permutation of the valid rows; a global
    batch is a contiguous slice of it and rank ``r`` takes its ``r``-th equal part, so a
    global batch (and each sample's masks) is the same whatever the world size."""

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, _SEED_TAG_ORDER])
        return rng.permutation(self.rows), rng.integers(0, self.n_crops, len(self.rows))

    def local_positions(self, index: int) -> np.ndarray:
        """Positions in the epoch of this rank's samples of global batch ``index``."""
        start = index * self.global_batch + self.rank * self.local_batch
        return np.arange(start, start + self.local_batch)


@dataclass(frozen=True)
class Window:
    """One shuffle window of a rank: its samples in the order served and where they lie."""

    #: store rows, crop index and stream position (the mask key) of each sample, as served
    rows: np.ndarray
    crops: np.ndarray
    positions: np.ndarray
    #: each sample's index into the rows that ``spans`` read (``TokenStore.read_spans``)
    slots: np.ndarray
    #: ``(chunk, lo, hi)``: runs of chunk rows holding the window's samples, read in order
    spans: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class BlockOrder(_Order):
    """Chunk-level shuffle plus a shuffle window per rank (the WebDataset / 4M pretraining
    scheme), so that a sample costs a share of one read per chunk instead of a read per array.

    Epoch ``e``: the store chunks (``chunk_rows`` rows each, the token store's shards) that
    hold valid rows are permuted with ``(seed, e)``; their valid rows, concatenated in that
    order, form the epoch's stream. Rank ``r`` takes the ``r``-th of ``world`` contiguous
    parts of ``batches_per_epoch * local_batch`` samples (disjoint; the stream's tail beyond
    ``world`` parts, fewer than one global batch, waits for another epoch, as the random
    order's tail does). A rank's part is cut into windows of ``window_size`` samples (the
    shuffle buffer, whole local batches); each window is permuted and given crop indices with
    ``(seed, e, its start in the stream)``, and served as consecutive local batches. So every
    valid row is seen at most once per epoch (exactly once when the valid rows are a multiple
    of the global batch), the order is a pure function of (seed, epoch, rank, world, batch
    index), and resuming at a batch replays the rest exactly. Unlike :class:`EpochOrder`, a
    sample's rank, batch and mask key depend on the world size.
    """

    chunk_rows: int = 32
    buffer: int = SHUFFLE_BUFFER

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_rows < 1 or self.buffer < 1:
            raise ValueError(
                f"chunk_rows and buffer must be >= 1, got {self.chunk_rows}, {self.buffer}"
            )

    @property
    def window_size(self) -> int:
        """Samples per shuffle window: ``buffer`` rounded up to whole local batches."""
        lb = self.local_batch
        return -(-max(self.buffer, lb) // lb) * lb

    @property
    def rank_samples(self) -> int:
        return self.batches_per_epoch * self.local_batch

    @property
    def windows_per_epoch(self) -> int:
        return -(-self.rank_samples // self.window_size)

    @cached_property
    def _chunks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sorted valid rows, and per chunk holding any: its id, first index, row count."""
        rows = np.sort(np.asarray(self.rows, np.int64))
        ids, starts, counts = np.unique(
            rows // self.chunk_rows, return_index=True, return_counts=True
        )
        return rows, ids, starts, counts

    def chunk_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's chunk permutation (indices into the chunks holding valid rows) and
        the stream offset at which each permuted chunk starts (one more: the total)."""
        _, ids, _, counts = self._chunks
        perm = np.random.default_rng([self.seed, epoch, _SEED_TAG_BLOCK]).permutation(len(ids))
        return perm, np.concatenate([[0], np.cumsum(counts[perm])])

    def locate(self, index: int) -> tuple[int, int]:
        """(window, first sample in it) of this rank's local batch ``index``."""
        w, off = divmod(index * self.local_batch, self.window_size)
        return w, off

    def window(
        self, epoch: int, w: int, chunks: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Window:
        """This rank's window ``w`` of ``epoch`` (``chunks``: :meth:`chunk_order`, if at hand)."""
        if not 0 <= w < self.windows_per_epoch:
            raise IndexError(f"window {w} outside the epoch's {self.windows_per_epoch}")
        perm, cum = chunks if chunks is not None else self.chunk_order(epoch)
        rows, ids, starts, counts = self._chunks
        base = self.rank * self.rank_samples
        lo = base + w * self.window_size
        hi = base + min((w + 1) * self.window_size, self.rank_samples)
        first = int(np.searchsorted(cum, lo, "right")) - 1
        last = int(np.searchsorted(cum, hi, "left"))  # chunks first..last-1 overlap [lo, hi)
        pieces: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        spans: list[tuple[int, int, int]] = []
        n_read = 0
        for k in range(first, last):
            c = int(perm[k])
            a = int(starts[c]) + max(lo - int(cum[k]), 0)
            b = int(starts[c]) + min(hi - int(cum[k]), int(counts[c]))
            seg = rows[a:b]
            top = int(ids[c]) * self.chunk_rows
            r0, r1 = int(seg[0]) - top, int(seg[-1]) - top + 1
            spans.append((int(ids[c]), r0, r1))
            pieces.append(seg)
            slots.append(n_read + seg - (top + r0))
            n_read += r1 - r0
        stream = np.concatenate(pieces)
        slot = np.concatenate(slots)
        rng = np.random.default_rng([self.seed, epoch, _SEED_TAG_WINDOW, lo])
        shuffle = rng.permutation(len(stream))
        crops = rng.integers(0, self.n_crops, len(stream))
        positions = lo + np.arange(len(stream), dtype=np.int64)
        return Window(stream[shuffle], crops, positions, slot[shuffle], tuple(spans))
