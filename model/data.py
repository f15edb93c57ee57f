"""Training batches straight from the token store (plus corpus pixels for pixel inputs).

Order is a pure function of (seed, epoch, rank, world, batch index), in one of two schemes.
:class:`EpochOrder` (``random``): each epoch is a permutation of the valid rows with a random
crop index per row; a global batch is a contiguous slice of it and data-parallel rank ``r``
takes the ``r``-th equal part, so batches and masks do not depend on the world size.
:class:`BlockOrder` (``block``, the default for a store read from disk): chunks shuffled,
each rank a disjoint run of them, served through seeded shuffle windows, so that one read of
a chunk serves many samples instead of 11 file reads serving one. Masking randomness is keyed
by (seed, epoch, position in the epoch's stream), so a sample's masks do not depend on the
worker count or resume point. The loader's state is just (epoch, batch).

A batch is built in one vectorised pass: read the token rows of the batch, plan the masks
(needs only availability and sequence lengths), read the corpus pixels only for the
(sample, pixel modality) pairs that received input tokens, cut their crops and gather just
the selected patches, then assemble the static-shape tensors. Token rows come from
``tokenize_jobs.store.TokenStore`` (the one reader of the token store: per sample with
``arrays``, a shuffle window at a time with ``read_spans``). Worker processes hand batches
over as one shared-memory buffer each (:class:`PackedBatch`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from terraloom.model.config import (
    ORDER_KINDS,
    Kind,
    MaskingConfig,
    ModalitySpecs,
    ModelConfig,
    modality_specs,
)
from terraloom.model.masking import SampleKeys, assemble, plan_masks
from terraloom.model.order import (
    SHUFFLE_BUFFER,
    BlockOrder,
    EpochOrder,
    OrderKind,
    Window,
)
from terraloom.model.packed import PackedBatch, PackedItems, worker_init
from terraloom.schemas.modalities import Layout, get_modality
from terraloom.tokenize_jobs.store import ReadMode, TokenStore

_SEED_TAG_MASK = 0x3A5C


# --------------------------------------------------------------------------- corpus pixels


class CorpusPixels:
    """Cuts crops of one corpus split and returns normalised patches at chosen positions."""

    def __init__(self, path: str | os.PathLike[str], crop_px: int, patch_px: int) -> None:
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"{self.path}: not a corpus store (no zarr.json)")
        self._group: Any = zarr.open_group(str(self.path), mode="r")
        self.crop_px = crop_px
        self.patch_px = patch_px
        self._rows: dict[str, Any] = {}

    def _row_reader(self, name: str) -> Any:
        if name not in self._rows:
            if name not in set(self._group.array_keys()):
                raise KeyError(f"{self.path}: corpus has no array {name!r}")
            arr = self._group[name]
            # Basic indexing of one row: zarr's integer-array selection on sharded arrays
            # is orders of magnitude slower than reading rows one by one.
            self._rows[name] = _ShardRows.open(self.path / name) or (
                lambda r, a=arr: np.asarray(a[r])
            )
        return self._rows[name]

    def patches(
        self, modality: str, rows: np.ndarray, crops: np.ndarray, positions: Sequence[np.ndarray]
    ) -> np.ndarray:
        """(T, C*p*p) float32 patches: for each row, the crop's patches at ``positions[i]``."""
        m = get_modality(modality)
        if m.layout is not Layout.IMAGE:
            raise ValueError(f"{modality} has no pixels")
        read_row = self._row_reader(m.name)
        p = self.patch_px
        out: list[np.ndarray] = []
        for k, row in enumerate(np.asarray(rows, np.int64).tolist()):
            pos = np.asarray(positions[k], np.int64)
            if not len(pos):
                continue
            raw = _gather_patches(read_row(row), crops[k], pos, self.crop_px, p)
            out.append(m.normalize(raw).reshape(len(pos), -1))
        if not out:
            return np.zeros((0, m.n_bands * p * p), np.float32)
        return np.concatenate(out)


class _ShardRows:
    """One-row reads of a sharded corpus array (chunk = one sample) without zarr's overhead.

    Reads the shard index (at the shard's end: offset/nbytes per chunk, then a crc32c) once
    per shard and decodes the row's chunk with Blosc; used only when the array's metadata
    is exactly the corpus layout's encoding, else the zarr path is used.
    """

    _EMPTY = 2**64 - 1

    def __init__(
        self,
        root: Path,
        shape: tuple[int, ...],
        shard0: int,
        dtype: np.dtype,
        fill: Any,
        compressed: bool,
    ) -> None:
        self.root, self.shape, self.shard0, self.dtype, self.fill, self.compressed = (
            root,
            shape,
            shard0,
            dtype,
            fill,
            compressed,
        )
        self.suffix = "/0" * (len(shape) - 1)
        self._index: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, root: Path) -> _ShardRows | None:
        import json

        meta = json.loads((root / "zarr.json").read_text())
        codecs = meta.get("codecs", [])
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        inner = conf.get("codecs", [])
        index_codecs = [c.get("name") for c in conf.get("index_codecs", [])]
        shard = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        ok = (
            conf.get("chunk_shape") == [1, *meta["shape"][1:]]
            and shard is not None
            and list(shard[1:]) == list(meta["shape"][1:])
            and inner
            and inner[0].get("name") == "bytes"
            and inner[0].get("configuration", {}).get("endian", "little") == "little"
            and len(inner) <= 2
            and (len(inner) == 1 or inner[1].get("name") == "blosc")
            and index_codecs == ["bytes", "crc32c"]
            and conf.get("index_location", "end") == "end"
            and meta.get("chunk_key_encoding", {}).get("name") == "default"
            and meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
            == "/"
        )
        if not ok:
            return None
        fill = meta.get("fill_value", 0)
        fill = float("nan") if fill == "NaN" else fill
        return cls(
            root,
            tuple(meta["shape"]),
            int(shard[0]),
            np.dtype(meta["data_type"]).newbyteorder("<"),
            fill,
            len(inner) == 2,
        )

    def __call__(self, row: int) -> np.ndarray:
        from numcodecs import blosc

        shard, inner = divmod(int(row), self.shard0)
        path = f"{self.root}/c/{shard}{self.suffix}"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return np.full(self.shape[1:], self.fill, self.dtype)
        try:
            if shard not in self._index:
                n_index = self.shard0 * 16
                size = os.fstat(fd).st_size
                self._index[shard] = np.frombuffer(
                    os.pread(fd, n_index, size - n_index - 4), "<u8"
                ).reshape(-1, 2)
            offset, nbytes = (int(v) for v in self._index[shard][inner])
            if offset == self._EMPTY:
                return np.full(self.shape[1:], self.fill, self.dtype)
            buf = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        raw = blosc.decompress(buf) if self.compressed else buf
        return np.frombuffer(raw, self.dtype).reshape(self.shape[1:])


FLIP_X, FLIP_Y = 1, 2  # crop flip bits (tokenize_jobs.crops): mirror left-right / top-bottom


def _gather_patches(
    x: np.ndarray, crop: np.ndarray, pos: np.ndarray, crop_px: int, p: int
) -> np.ndarray:
    """(C, H, W) sample -> (T, C, p, p) patches at crop positions ``pos``.

    The crop is (top, left, h, w, flip) with ``flip`` a bit field applied after cutting
    (bit 0 mirrors left-right, bit 1 top-bottom), as ``tokenize_jobs.crops.apply_crop``.
    Patches are gathered straight from the sample (no crop copy); a crop whose h/w differ
    from ``crop_px`` is first resized bilinearly.
    """
    top, left, h, w, flip = (int(v) for v in crop)
    if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > x.shape[1] or left + w > x.shape[2]:
        raise ValueError(
            f"crop {tuple(int(v) for v in crop)} does not fit a sample of shape {x.shape[1:]}"
        )
    if (h, w) != (crop_px, crop_px):
        t = torch.from_numpy(
            np.ascontiguousarray(x[:, top : top + h, left : left + w], np.float32)
        )[None]
        x = torch.nn.functional.interpolate(
            t, size=(crop_px, crop_px), mode="bilinear", antialias=True
        )[0].numpy()
        top = left = 0
    g = crop_px // p
    ar = np.arange(p)
    ys = (pos // g)[:, None] * p + ar  # rows/cols inside the (flipped) crop
    xs = (pos % g)[:, None] * p + ar
    if flip & FLIP_Y:
        ys = crop_px - 1 - ys
    if flip & FLIP_X:
        xs = crop_px - 1 - xs
    return x[:, (top + ys)[:, :, None], (left + xs)[:, None, :]].transpose(1, 0, 2, 3)


# --------------------------------------------------------------------------- order + dataset


class MaskedBatches(Dataset):
    """Map-style dataset whose items are whole masked batches, keyed by (epoch, index).

    ``order``: ``"random"`` (:class:`EpochOrder`, per-sample random order, world-size
    invariant), ``"block"`` (:class:`BlockOrder`, chunk shuffle + a shuffle window of
    ``shuffle_buffer`` samples per rank, read a chunk at a time) or ``"auto"`` (random for a
    store held in RAM, where a per-sample read is a memory copy; block for one read from
    disk, where it is 11 file reads). Either way a batch of given (rows, crops, mask keys) is
    the same: :meth:`build` does the masking and assembly for both.
    """

    def __init__(
        self,
        tokens: str | os.PathLike[str],
        corpus: str | os.PathLike[str] | None,
        model: ModelConfig,
        masking: MaskingConfig,
        *,
        global_batch: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        pixel_dtype: torch.dtype = torch.float16,
        shrink_batch: bool = False,
        store_mode: ReadMode = "auto",
        order: OrderKind = "auto",
        shuffle_buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        if order not in ORDER_KINDS:
            raise ValueError(f"order must be one of {', '.join(ORDER_KINDS)}, got {order!r}")
        self.tokens_path = Path(tokens)
        #: ``TokenStore`` read mode (``auto``: in RAM up to 512 MiB, else memory-mapped)
        self.store_mode: ReadMode = store_mode
        self.corpus_path = Path(corpus) if corpus else None
        self.model_cfg = model
        self.masking = masking
        self.specs: ModalitySpecs = modality_specs(model)
        self.pixel_dtype = pixel_dtype
        if any(s.kind is Kind.PIXELS for s in self.specs.inputs) and self.corpus_path is None:
            raise ValueError("the model has pixel inputs but no corpus path was given")
        store = TokenStore(self.tokens_path, mode=store_mode)
        missing = [m for m in self.specs.token_modalities if m not in store.modalities]
        if missing:
            raise ValueError(f"{self.tokens_path}: token store lacks modalities {missing}")
        if store.crop_px != model.image_px:
            raise ValueError(
                f"token store crops are {store.crop_px} px but the model expects {model.image_px}"
            )
        #: the FSQ grouping of each image modality's tokenizer, as the store recorded it
        self.fsq_groups = dict(store.fsq_groups)
        rows = np.flatnonzero(store.valid)
        if shrink_batch and len(rows) < global_batch:  # a small eval split: one smaller batch
            global_batch = max(world, len(rows) // world * world)
        #: the order in use, ``"random"`` or ``"block"`` (``order="auto"`` resolved)
        self.order_kind = (
            ("random" if store.mode == "memory" else "block") if order == "auto" else order
        )
        self.order: EpochOrder | BlockOrder
        if self.order_kind == "block":
            self.order = BlockOrder(
                rows,
                store.n_crops,
                global_batch,
                seed,
                rank,
                world,
                chunk_rows=store.shard_samples,
                buffer=shuffle_buffer,
            )
        else:
            self.order = EpochOrder(rows, store.n_crops, global_batch, seed, rank, world)
        self._store = store
        self._pixels: CorpusPixels | None = None
        self._pid = os.getpid()
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._chunk_cache: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None
        self._window: tuple[int, int, Window, dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return self.order.batches_per_epoch

    def _open(self) -> None:
        if self._pid != os.getpid():  # worker process: fresh handles, same metadata
            # A copy drops the maps and caches (TokenStore.__getstate__) but keeps ``valid``:
            # re-opening would re-read every commit marker (31k at a million samples) per worker.
            self._store = copy.copy(self._store)
            self._pixels = None
            self._window = None
            self._pid = os.getpid()
        if self._pixels is None and self.corpus_path is not None:
            self._pixels = CorpusPixels(
                self.corpus_path, self.model_cfg.image_px, self.model_cfg.patch_px
            )

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        assert isinstance(self.order, EpochOrder)
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, *self.order.epoch(epoch))
        return self._epoch_cache[1], self._epoch_cache[2]

    def _block_window(self, epoch: int, w: int) -> tuple[Window, dict[str, np.ndarray]]:
        """Window ``w`` of ``epoch`` and its token rows, read once per process and window."""
        order = self.order
        assert isinstance(order, BlockOrder)
        if self._window is not None and self._window[:2] == (epoch, w):
            return self._window[2], self._window[3]
        if self._chunk_cache is None or self._chunk_cache[0] != epoch:
            self._chunk_cache = (epoch, order.chunk_order(epoch))
        win = order.window(epoch, w, self._chunk_cache[1])
        self._window = None  # drop the previous window's rows before reading the next
        data = self._store.read_spans(win.spans, self.specs.token_modalities)
        self._window = (epoch, w, win, data)
        return win, data

    def samples(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, crop indices, positions in the epoch) of this rank's batch ``index``: the
        samples :meth:`__getitem__` builds (positions key their masks, :meth:`sample_keys`)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} outside the epoch of {len(self)} batches")
        if isinstance(self.order, BlockOrder):
            w, off = self.order.locate(index)
            if self._chunk_cache is None or self._chunk_cache[0] != epoch:
                self._chunk_cache = (epoch, self.order.chunk_order(epoch))
            win = self.order.window(epoch, w, self._chunk_cache[1])
            sel = slice(off, off + self.order.local_batch)
            return win.rows[sel], win.crops[sel], win.positions[sel]
        perm, crop_of = self._epoch(epoch)
        positions = self.order.local_positions(index)
        return perm[positions], crop_of[positions], positions

    def sample_keys(self, epoch: int, positions: np.ndarray) -> SampleKeys:
        """The masking keys of the samples at ``positions`` of ``epoch`` (counter-based)."""
        return SampleKeys.derive((self.order.seed, epoch, _SEED_TAG_MASK), positions)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} outside the epoch of {len(self)} batches")
        self._open()
        if isinstance(self.order, BlockOrder):
            w, off = self.order.locate(index)
            win, data = self._block_window(epoch, w)
            sel = slice(off, off + self.order.local_batch)
            slots, crop_idx = win.slots[sel], win.crops[sel]
            tok = {name: a[slots, crop_idx].astype(np.int64) for name, a in data.items()}
            keys = self.sample_keys(epoch, win.positions[sel])
            return self.build(win.rows[sel], crop_idx, keys, tok)
        rows, crop_idx, positions = self.samples(epoch, index)
        return self.build(rows, crop_idx, self.sample_keys(epoch, positions))

    def build(
        self,
        rows: np.ndarray,
        crop_idx: np.ndarray,
        keys: SampleKeys,
        tok: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Read, mask and assemble one batch of (row, crop) samples (``tok``: their token
        rows as ``TokenStore.arrays`` returns them, when already read)."""
        self._open()
        specs = self.specs
        if tok is None:
            tok = self._store.arrays(rows, crop_idx, specs.token_modalities)
        b = len(rows)
        seqs = {}
        for name in specs.token_modalities:
            m = get_modality(name)
            if m.is_image:
                continue
            ids = tok[name]
            lens = tok[f"{name}_len"] if f"{name}_len" in tok else np.full(b, ids.shape[1])
            seqs[name] = (ids, np.minimum(lens, ids.shape[1]))
        avail_in = np.ones((b, len(specs.inputs)), bool)
        for i, s in enumerate(specs.inputs):
            if s.kind is Kind.SEQUENCE:
                avail_in[:, i] = seqs[s.modality][1] > 0
        avail_t = np.ones((b, len(specs.targets)), bool)
        for j, t in enumerate(specs.targets):
            if t.kind is Kind.SEQUENCE:
                avail_t[:, j] = seqs[t.modality][1] > 0
        plan = plan_masks(specs, self.masking, keys, avail_in, avail_t, seqs)
        pixels: dict[str, np.ndarray] = {}
        n_img = specs.n_image_positions
        for i, s in enumerate(specs.inputs):
            if s.kind is not Kind.PIXELS:
                continue
            need = np.flatnonzero(plan.n_in[:, i] > 0)
            if not len(need):
                continue
            assert self._pixels is not None
            positions = [np.flatnonzero(plan.in_sel[r, i, :n_img]) for r in need]
            pixels[s.key] = self._pixels.patches(
                s.modality, rows[need], tok["crops"][need], positions
            )
        codes = {name: tok[name] for name in specs.token_modalities if get_modality(name).is_image}
        return assemble(specs, self.masking, plan, codes, pixels, self.pixel_dtype)


# --------------------------------------------------------------------------- loader


class _IndexStream(Sampler):
    """(epoch, batch) keys from a start point, for ``n`` batches (or forever)."""

    def __init__(self, start: tuple[int, int], per_epoch: int, n: int | None) -> None:
        self.start, self.per_epoch, self.n = start, per_epoch, n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, index = self.start
        count = 0
        while self.n is None or count < self.n:
            if index >= self.per_epoch:
                epoch, index = epoch + 1, 0
            yield epoch, index
            index += 1
            count += 1

    def __len__(self) -> int:
        return self.n if self.n is not None else 2**62


@dataclass
class LoaderState:
    epoch: int = 0
    batch: int = 0

    def advance(self, per_epoch: int) -> None:
        self.batch += 1
        if self.batch >= per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0


@dataclass
class TokenLoader:
    """Iterates masked batches in worker processes, pinned, resumable at batch granularity.

    ``state_dict()`` counts only batches handed to the caller, never prefetched ones, so
    saving it with a checkpoint and resuming replays exactly the batches not yet trained on.
    """

    dataset: MaskedBatches
    num_workers: int = 2
    prefetch_factor: int = 4
    pin_memory: bool = False
    max_batches: int | None = None
    state: LoaderState = field(default_factory=LoaderState)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        sampler = _IndexStream(
            (self.state.epoch, self.state.batch), len(self.dataset), self.max_batches
        )
        kwargs: dict[str, Any] = {}
        source: Dataset = self.dataset
        if self.num_workers > 0:
            kwargs.update(
                prefetch_factor=self.prefetch_factor,
                persistent_workers=False,
                worker_init_fn=worker_init,
            )
            source = PackedItems(self.dataset)  # one shared-memory buffer per batch
        loader = DataLoader(
            source,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            **kwargs,
        )
        for batch in loader:
            self.state.advance(len(self.dataset))
            yield batch.unpack() if isinstance(batch, PackedBatch) else batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.state.epoch, "batch": self.state.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = LoaderState(int(state["epoch"]), int(state["batch"]))


def split_path(root: str | os.PathLike[str], split: str) -> Path:
    """``<root>/<split>.zarr``, or ``root`` itself when it already is a split store."""
    root = Path(root)
    if (root / "zarr.json").exists() and root.suffix == ".zarr":
        return root
    return root / f"{split}.zarr"


def local_root(
    root: str | os.PathLike[str],
    kind: str,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """A token store (``kind="tokens"``) or corpus (``"corpus"``) root as a local path.

    A local root is itself: memory-mapping stays the fast path. A URL (``s3://...``) is read
    through the local cache: a token store is fetched commit by commit
    (``tokenize_jobs.fetch``: shards already cached are not copied again, uncommitted ones
    not at all), a corpus mirrored file by file (files present with their remote size are
    kept). A split store URL (``.../train.zarr``) brings only that split.
    """
    from terraloom.storage.location import Location
    from terraloom.storage.transfer import cache_dir, download_tree
    from terraloom.tokenize_jobs.fetch import local_token_store

    loc = Location.parse(root, storage_options)
    if loc.is_local:
        return loc.local_path
    split = loc.name if loc.name.endswith(".zarr") and (loc / "zarr.json").exists() else None
    base = loc.parent if split else loc
    if kind == "tokens":
        local = local_token_store(base, [split[: -len(".zarr")]] if split else None)
    elif kind == "corpus":
        local = cache_dir(base, "corpus")

        def wanted(rel: str) -> bool:  # split stores and top-level tables, not _build/_parts
            top = rel.split("/", 1)[0]
            if split is not None:
                return top == split or "/" not in rel
            return top.endswith(".zarr") or "/" not in rel

        download_tree(base, local, include=wanted)
    else:
        raise ValueError(f"kind must be 'tokens' or 'corpus', got {kind!r}")
    return local / split if split else local
