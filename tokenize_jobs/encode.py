"""The pre-tokenization job: corpus split stores -> token split stores.

Three overlapping stages per split, so the device never waits on I/O:

1. **read** (background threads, ``prefetch`` whole corpus shards ahead): decode the
   shard's image arrays, pin them, draw the crops, and run the CPU-only sequence
   tokenizers (GEO bins, CAPTION WordPiece) on the shard's valid rows;
2. **encode** (main thread): one batched host-to-device copy per modality of whole
   264 px samples, crops cut on the device with one gather, every image tokenizer in
   inference mode (bf16 autocast on CUDA), codes copied back asynchronously;
3. **write** (a background thread): scatter the valid rows into full shard blocks,
   write them into the token store, checksum them, then commit the shard with an
   atomic marker.

Work is assigned by whole corpus shards (token chunk = corpus shard), so ranks of a
``torchrun`` job never touch the same file; committed shards are skipped, so a killed
job resumes and a finished job re-run does nothing. A resume checks each committed
shard before it skips it (every chunk file present with the size its marker recorded;
``verify_committed`` compares the checksums too) and re-encodes, saying so, the shards
that fail; the end of a split re-checks every shard it leaves committed. One job at a time
writes an output: rank 0 holds its lease (``storage.lease``), a second job is refused with
one line. Rows stay aligned with the corpus: invalid corpus rows keep ``valid = False``
and zero tokens/crops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraloom.schemas.layouts import (
    CAPTION_MAX_TOKENS,
    SPLITS,
    TOKEN_MODALITIES,
    create_token_store,
)
from terraloom.schemas.modalities import CROP_PX, SAMPLE_PX, Layout, get_modality
from terraloom.storage.lease import Lease, LeaseHeld, LeaseLost
from terraloom.storage.lease import acquire as acquire_lease
from terraloom.tokenize_jobs.crops import apply_crops, draw_crops, row_key
from terraloom.tokenize_jobs.store import (
    COMMITS_DIR,
    LEN_SUFFIX,
    commit_problem,
    drop_commit,
    read_commits,
    shard_checksums,
    shard_file_sizes,
    write_commit,
)

log = logging.getLogger(__name__)

UINT16_MAX = 65535


class EncodeError(ValueError):
    """A user-facing problem with the inputs of the job (the CLI exits with code 2)."""


class TokenizerMismatchError(EncodeError):
    """The store was written with other tokenizers than the ones given."""


class EncodeBusyError(EncodeError):
    """Another encode job holds the output's lease (one line; the CLI exits with code 2)."""


#: The output's lease (``storage.lease``): one encode job at a time writes a token store.
LEASE_NAME = "lease.json"
#: Lease time-to-live; rank 0 renews it every third of this while the job runs, so only a
#: dead job's lease expires (on the same host a dead pid frees it at once).
LEASE_TTL_S = 120.0


@dataclass(frozen=True)
class EncodeConfig:
    """Knobs of the encode job (the CLI flags)."""

    n_crops: int = 4
    crop_px: int = CROP_PX
    #: Crops per tokenizer forward pass.
    batch: int = 64
    device: str = "cpu"
    #: Global seed of the crop generator (stored in the store attributes).
    seed: int = 0
    #: bf16 autocast of the image tokenizers; ``None`` = on for CUDA, off elsewhere.
    bf16: bool | None = None
    compile: bool = False
    #: Corpus shards read ahead of the device.
    prefetch: int = 2
    read_threads: int = 2
    #: Token modalities to encode; ``None`` = every token modality of the registry.
    modalities: tuple[str, ...] | None = None
    #: Splits to encode; ``None`` = every ``<split>.zarr`` in the corpus directory.
    splits: tuple[str, ...] | None = None
    progress: bool = True
    #: Cut crops on the device after one copy of whole samples (``None``: yes, except on
    #: the CPU, where the reader threads cut them).
    crop_on_device: bool | None = None
    #: Stop after this many shards per rank (tests and benchmarks); ``None`` = all.
    max_shards: int | None = None
    #: On resume, re-read every committed shard and compare its checksums (a flipped byte),
    #: not only the chunk files' presence and sizes.
    verify_committed: bool = False

    def __post_init__(self) -> None:
        if self.n_crops < 1:
            raise EncodeError(f"--crops must be >= 1, got {self.n_crops}")
        if not 16 <= self.crop_px <= SAMPLE_PX or self.crop_px % 16:
            raise EncodeError(
                f"--crop-size must be a multiple of 16 in 16..{SAMPLE_PX}, got {self.crop_px}"
            )
        if self.batch < 1 or self.prefetch < 1 or self.read_threads < 1:
            raise EncodeError("--batch, --prefetch and --read-threads must be >= 1")

    @property
    def modality_names(self) -> tuple[str, ...]:
        if self.modalities is None:
            return TOKEN_MODALITIES
        names = {get_modality(m).name for m in self.modalities}
        unknown = names - set(TOKEN_MODALITIES)
        if unknown:
            raise EncodeError(
                f"{sorted(unknown)} have no tokens; token modalities: {list(TOKEN_MODALITIES)}"
            )
        return tuple(m for m in TOKEN_MODALITIES if m in names)


@dataclass
class SplitReport:
    split: str
    n_samples: int
    n_shards: int
    already_committed: int
    #: committed shards that failed their check on resume and were re-encoded: (shard, why)
    redone: list[tuple[int, str]] = field(default_factory=list)
    encoded_shards: int = 0
    encoded_rows: int = 0
    valid_rows: int = 0
    seconds: float = 0.0

    @property
    def samples_per_s(self) -> float:
        return self.encoded_rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EncodeReport:
    splits: list[SplitReport] = field(default_factory=list)

    @property
    def encoded_shards(self) -> int:
        return sum(s.encoded_shards for s in self.splits)


# --------------------------------------------------------------------------- tokenizers


def load_tokenizers(
    directory: str | os.PathLike[str], modality_names: Sequence[str] = TOKEN_MODALITIES
) -> dict[str, Any]:
    """``tokenizers/<modality lowercase>/`` for each modality, via ``load_tokenizer`` (on the CPU)."""
    from terraloom.tokenize_jobs.tokenizers.io import load_tokenizer

    root = Path(directory)
    if not root.is_dir():
        raise EncodeError(f"tokenizer directory {root} does not exist")
    out: dict[str, Any] = {}
    for name in modality_names:
        path = root / get_modality(name).name.lower()
        if not path.is_dir():
            raise EncodeError(
                f"no {name} tokenizer at {path} (train it with `terraloom-tokenize train`, or pass --modalities)"
            )
        try:
            tok = load_tokenizer(path)
        except (OSError, ValueError, KeyError) as exc:
            raise EncodeError(f"cannot load the {name} tokenizer from {path}: {exc}") from exc
        out[name] = tok
    return out


def tokenizer_identities(tokenizers: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {k: str(v) for k, v in dict(tok.identity).items()}
        for name, tok in sorted(tokenizers.items())
    }


def check_tokenizers(
    tokenizers: Mapping[str, Any], modality_names: Sequence[str], crop_px: int
) -> None:
    """Every modality has a tokenizer that fits the store (ids fit uint16, patches fit the crop)."""
    for name in modality_names:
        tok = tokenizers.get(name)
        if tok is None:
            raise EncodeError(f"no tokenizer given for {name}; have {sorted(tokenizers)}")
        ident = getattr(tok, "identity", None)
        if not isinstance(ident, Mapping) or not {"id", "version", "sha256"} <= set(ident):
            raise EncodeError(f"the {name} tokenizer has no identity {{id, version, sha256}}")
        if int(tok.vocab_size) > UINT16_MAX + 1:
            raise EncodeError(
                f"the {name} tokenizer has {tok.vocab_size} ids; the token store holds uint16"
            )
        if get_modality(name).is_image and crop_px % int(tok.patch_size):
            raise EncodeError(
                f"crop size {crop_px} is not a multiple of the {name} patch size {tok.patch_size}"
            )


# --------------------------------------------------------------------------- corpus


def corpus_splits(corpus_dir: str | os.PathLike[str]) -> list[str]:
    """Splits present in a corpus directory (``<split>.zarr``), known splits first."""
    root = Path(corpus_dir)
    found = sorted(
        p.name[: -len(".zarr")] for p in root.glob("*.zarr") if (p / "zarr.json").is_file()
    )
    return [s for s in SPLITS if s in found] + [s for s in found if s not in SPLITS]


def sample_keys(corpus_dir: str | os.PathLike[str], split: str, n_samples: int) -> np.ndarray:
    """Crop-seeding key of each row: the ``sample_id`` from ``index.parquet``, or
    :func:`~tokenize_jobs.crops.row_key` for rows (or corpora) without an index entry."""
    keys = np.array([row_key(split, r) for r in range(n_samples)], dtype=object)
    index = Path(corpus_dir) / "index.parquet"
    if index.is_file():
        import pyarrow.parquet as pq

        table = pq.ParquetFile(index).read(columns=["sample_id", "split", "row"])
        sel = np.asarray(table.column("split").to_numpy(zero_copy_only=False)) == split
        rows = np.asarray(table.column("row").to_numpy())[sel]
        ids = np.asarray(table.column("sample_id").to_numpy(zero_copy_only=False))[sel]
        ok = (rows >= 0) & (rows < n_samples)
        keys[rows[ok]] = ids[ok]
    return keys


def _caption_text(row: np.ndarray) -> str:
    return bytes(np.asarray(row, np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")


@dataclass
class ShardInput:
    """One corpus shard ready for the device: pinned pixels of its valid rows, crops, and
    the (already computed, CPU) sequence tokens."""

    shard: int
    lo: int
    hi: int
    valid: np.ndarray  # (hi - lo,) bool
    crops: np.ndarray  # (n_valid, K, 5) int32
    #: modality -> (n_valid, C, 264, 264) stored values (pinned; cropped on the device), or
    #: with ``precut`` the (n_valid * K, C, h, w) float32 crops (CPU jobs crop in the reader)
    pixels: dict[str, torch.Tensor]
    #: modality -> ids (n_valid, L), lengths (n_valid,)
    sequences: dict[str, tuple[np.ndarray, np.ndarray]]
    precut: bool = False

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


def _host_tensor(values: np.ndarray, pin: bool) -> torch.Tensor:
    """Stored values as a (pinned) tensor; uint16 travels as its int16 bit pattern
    (fully supported on every device) and is widened on the device."""
    arr = np.ascontiguousarray(values)
    if arr.dtype == np.uint16:
        arr = arr.view(np.int16)
    t = torch.from_numpy(arr)
    return t.pin_memory() if pin else t


def _device_values(t: torch.Tensor, stored: np.dtype, device: torch.device) -> torch.Tensor:
    x = t.to(device, non_blocking=True)
    if stored == np.uint16:
        return (x.to(torch.int32) & 0xFFFF).to(torch.float32)
    return x


def read_shard(
    group: Mapping[str, Any],
    shard: int,
    shard_samples: int,
    n_samples: int,
    keys: np.ndarray,
    tokenizers: Mapping[str, Any],
    modality_names: Sequence[str],
    cfg: EncodeConfig,
    pin: bool = False,
    precut: bool = False,
) -> ShardInput:
    """Read one corpus shard and prepare everything that does not need the device.

    ``precut`` (CPU jobs, where the "device" is these same cores): cut the crops here,
    converting to float32 in the same copy, so the encoding thread only runs models.
    """
    lo, hi = shard * shard_samples, min((shard + 1) * shard_samples, n_samples)
    valid = np.asarray(group["valid"][lo:hi], bool)
    idx = np.flatnonzero(valid)
    crops = draw_crops(list(keys[lo + idx]), cfg.n_crops, cfg.crop_px, SAMPLE_PX, cfg.seed)
    pixels: dict[str, torch.Tensor] = {}
    sequences: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in modality_names:
        m = get_modality(name)
        if not len(idx):
            continue
        values = np.asarray(group[name][lo:hi])[idx]
        if m.is_image and precut:
            flat = crops.reshape(-1, 5)
            src = np.repeat(np.arange(len(idx)), cfg.n_crops)
            pixels[name] = torch.from_numpy(apply_crops(values, flat, src, out_dtype=np.float32))
            continue
        if m.is_image:
            pixels[name] = _host_tensor(values, pin)
            continue
        tok = tokenizers[name]
        if m.layout is Layout.VECTOR:
            max_len = int(m.length or 2)
            try:
                ids, lengths = tok.encode_batch(values.astype(np.float64), max_len)
            except ValueError as exc:
                raise EncodeError(f"{name} of rows {lo}..{hi - 1}: {exc}") from exc
        else:
            max_len = CAPTION_MAX_TOKENS
            ids, lengths = tok.encode_batch([_caption_text(r) for r in values], max_len)
        sequences[name] = (
            _check_ids(name, np.asarray(ids), tok.vocab_size, lo),
            np.asarray(lengths, np.int64),
        )
    return ShardInput(shard, lo, hi, valid, crops, pixels, sequences, precut)


def _check_ids(name: str, ids: np.ndarray, vocab_size: int, lo: int) -> np.ndarray:
    if ids.size and (ids.min() < 0 or ids.max() >= min(int(vocab_size), UINT16_MAX + 1)):
        raise EncodeError(
            f"{name} tokenizer returned ids outside [0, {vocab_size}) in the shard at row {lo}"
        )
    return ids


# --------------------------------------------------------------------------- device stage


@dataclass
class ShardCodes:
    """Device results of a shard, copied back asynchronously (``ready`` when done)."""

    inp: ShardInput
    codes: dict[str, torch.Tensor]  # modality -> (n_valid * K, T) int32, host
    ready: Callable[[], None]


def _image_encoder(tok: Any, cfg: EncodeConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    fn: Callable[[torch.Tensor], torch.Tensor] = tok.encode
    if cfg.compile:
        # every tokenizer's encode shares one code object, so each modality is a
        # recompile of the same frame: allow them all before dynamo falls back to eager
        import torch._dynamo

        dcfg = torch._dynamo.config
        key = "recompile_limit" if hasattr(dcfg, "recompile_limit") else "cache_size_limit"
        setattr(dcfg, key, max(int(getattr(dcfg, key)), 64))
        fn = torch.compile(fn, dynamic=False)
    return fn


def encode_images(
    inp: ShardInput,
    encoders: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    cfg: EncodeConfig,
    device: torch.device,
) -> ShardCodes:
    """Crop on the device (unless the reader pre-cut them) and run every image tokenizer
    over the shard's valid crops.

    Crops are ordered row-major (row, crop) and fed in micro-batches of ``cfg.batch``;
    with ``cfg.compile`` the last micro-batch is padded to the fixed batch size so the
    compiled graph is reused.
    """
    n, k = inp.n_valid, cfg.n_crops
    flat = inp.crops.reshape(n * k, 5)
    src = np.repeat(np.arange(n), k)
    bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    pin = device.type == "cuda"
    codes: dict[str, torch.Tensor] = {}
    for name, encode in encoders.items():
        if n == 0:
            continue
        x = inp.pixels[name]
        if not inp.precut:
            x = _device_values(x, get_modality(name).np_dtype, device)
        outs = []
        for a in range(0, n * k, cfg.batch):
            b = min(a + cfg.batch, n * k)
            xc = x[a:b] if inp.precut else apply_crops(x, flat[a:b], src[a:b])
            if cfg.compile and b - a < cfg.batch:
                xc = torch.cat([xc, xc[-1:].expand(cfg.batch - (b - a), *xc.shape[1:])])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                c = encode(xc)
            outs.append(c[: b - a].reshape(b - a, -1).to(torch.int32))
        dev_codes = torch.cat(outs)
        host = torch.empty(dev_codes.shape, dtype=torch.int32, pin_memory=pin)
        host.copy_(dev_codes, non_blocking=pin)
        codes[name] = host
    if device.type == "cuda":
        event = torch.cuda.Event()
        event.record()
        return ShardCodes(inp, codes, event.synchronize)
    return ShardCodes(inp, codes, lambda: None)


def assemble_shard(
    res: ShardCodes,
    tokenizers: Mapping[str, Any],
    modality_names: Sequence[str],
    n_crops: int,
    crop_px: int,
) -> dict[str, np.ndarray]:
    """Full shard blocks of every store array (invalid rows: zeros, ``valid`` False)."""
    res.ready()
    inp = res.inp
    rows = inp.hi - inp.lo
    idx = np.flatnonzero(inp.valid)
    n = len(idx)
    t_img = (crop_px // 16) ** 2
    out: dict[str, np.ndarray] = {}
    for name in modality_names:
        m = get_modality(name)
        if m.is_image:
            block = np.zeros((rows, n_crops, t_img), np.uint16)
            if n:
                c = res.codes[name].numpy()
                if c.shape[1] != t_img:
                    raise EncodeError(
                        f"{name} tokenizer gave {c.shape[1]} tokens per crop, expected {t_img}"
                    )
                block[idx] = _check_ids(name, c, tokenizers[name].vocab_size, inp.lo).reshape(
                    n, n_crops, t_img
                )
            out[name] = block
        else:
            length = int(m.length or 2) if m.layout is Layout.VECTOR else CAPTION_MAX_TOKENS
            block = np.zeros((rows, n_crops, length), np.uint16)
            if n:
                ids, lengths = inp.sequences[name]
                block[idx] = ids[:, None, :length]
            out[name] = block
            if m.layout is Layout.TEXT:
                lens = np.zeros((rows, n_crops), np.uint16)
                if n:
                    lens[idx] = lengths[:, None]
                out[name + LEN_SUFFIX] = lens
    crops = np.zeros((rows, n_crops, 5), np.int32)
    crops[idx] = inp.crops
    out["crops"] = crops
    out["valid"] = inp.valid.copy()
    return out


# --------------------------------------------------------------------------- store


def _relpath(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(target.resolve(), start.resolve())
    except ValueError:  # other drive on Windows
        return str(target)


def _describe(ident: Mapping[str, Any] | None) -> str:
    if not ident:
        return "none"
    return (
        f"{ident.get('id')} version {ident.get('version')} (sha256 {str(ident.get('sha256'))[:12]})"
    )


def open_store(
    out_split: Path,
    corpus_split: Path,
    n_samples: int,
    shard_samples: int,
    modality_names: Sequence[str],
    identities: Mapping[str, Mapping[str, str]],
    cfg: EncodeConfig,
    split: str,
) -> Any:
    """Create (template-first) or reopen the split's token store and refuse mismatches."""
    try:
        group = create_token_store(
            out_split,
            n_samples=n_samples,
            n_crops=cfg.n_crops,
            crop_px=cfg.crop_px,
            shard_samples=shard_samples,
            split=split,
            modality_names=tuple(modality_names),
        )
    except ValueError as exc:
        raise EncodeError(
            f"{exc}. Encode into a new --out directory, or use the store's --crops/--crop-size/--modalities."
        ) from exc
    attrs = dict(group.attrs)
    stored = attrs.get("tokenizers") or {}
    if stored:
        diffs = [
            f"{m}: store has {_describe(stored.get(m))}, given {_describe(identities.get(m))}"
            for m in modality_names
            if dict(stored.get(m) or {}) != dict(identities.get(m) or {})
        ]
        if diffs:
            raise TokenizerMismatchError(
                f"refusing to encode into {out_split}: it was written with other tokenizers ({'; '.join(diffs)}). Encode into a new --out directory, or delete the store to re-encode it."
            )
        if attrs.get("crop_seed") != cfg.seed:
            raise EncodeError(
                f"refusing to encode into {out_split}: its crops were drawn with seed {attrs.get('crop_seed')}, not {cfg.seed}"
            )
        return group
    group.attrs.update(
        {
            "tokenizers": {m: dict(identities[m]) for m in modality_names},
            "crop_seed": cfg.seed,
            "sample_px": SAMPLE_PX,
            "corpus": _relpath(corpus_split, out_split.parent),
            "flip": "bit 0 (1) mirrors x (left-right), bit 1 (2) mirrors y (top-bottom), applied after cutting",
        }
    )
    return group


def write_shard(
    store_path: Path,
    arrays: Mapping[str, Any],
    shard: int,
    lo: int,
    hi: int,
    blocks: Mapping[str, np.ndarray],
    identities: Mapping[str, Mapping[str, str]],
    seed: int,
) -> Path:
    """Write a shard's blocks, checksum them, then commit the shard atomically."""
    for name, block in blocks.items():
        arrays[name][lo:hi] = block
    record = {
        "rows": [lo, hi],
        "n_valid": int(np.asarray(blocks["valid"]).sum()),
        "checksums": shard_checksums(blocks),
        "sizes": shard_file_sizes(store_path, shard),
        "tokenizers": {m: str(i.get("sha256")) for m, i in sorted(identities.items())},
        "crop_seed": seed,
    }
    return write_commit(store_path, shard, record)


# --------------------------------------------------------------------------- distribution


@dataclass
class Dist:
    """Rank/world of a ``torchrun`` job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
            owns = True
        return cls(rank, world, local, owns)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def agree(self, error: EncodeError | None) -> EncodeError | None:
        """Share rank 0's error (or None) with every rank, so all fail or go on together."""
        if self.world <= 1:
            return error
        import torch.distributed as dist

        box: list[Any] = [
            None if error is None else (isinstance(error, TokenizerMismatchError), str(error))
        ]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return None
        mismatch, message = box[0]
        return TokenizerMismatchError(message) if mismatch else EncodeError(message)

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _device(cfg: EncodeConfig, dist_: Dist) -> torch.device:
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EncodeError(
                "--device cuda requested but CUDA is not available (use --device cpu)"
            )
        if dev.index is None:
            dev = torch.device("cuda", dist_.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


# --------------------------------------------------------------------------- driver


def _prefetched(
    fn: Callable[[int], ShardInput], shards: Sequence[int], depth: int, threads: int
) -> Iterator[ShardInput]:
    """Yield ``fn(shard)`` in order while up to ``depth`` later shards load in threads."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tokens-read") as pool:
        pending: deque[Future[ShardInput]] = deque()
        it = iter(shards)
        for s in it:
            pending.append(pool.submit(fn, s))
            if len(pending) > depth:
                break
        while pending:
            fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            try:
                yield fut.result()
            except BaseException:
                for f in pending:
                    f.cancel()
                raise


class _Writer:
    """One background thread that assembles, writes and commits shards in order."""

    def __init__(self, work: Callable[[ShardCodes], None], depth: int = 2) -> None:
        self._q: queue.Queue[ShardCodes | None] = queue.Queue(maxsize=depth)
        self._work = work
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tokens-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._work(item)
                except BaseException as exc:  # surfaced in the main thread
                    self._error = exc

    def put(self, item: ShardCodes) -> None:
        self._raise()
        self._q.put(item)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def encode_split(
    corpus_split: Path,
    out_split: Path,
    tokenizers: Mapping[str, Any],
    cfg: EncodeConfig,
    keys: np.ndarray | None = None,
    dist_: Dist | None = None,
) -> SplitReport:
    """Encode one corpus split store into one token split store (this rank's shards)."""
    import zarr

    d = dist_ or Dist()
    split = out_split.name[: -len(".zarr")] if out_split.name.endswith(".zarr") else out_split.name
    try:
        corpus = zarr.open_group(str(corpus_split), mode="r")
        c_attrs: dict[str, Any] = dict(corpus.attrs)
        n_samples, shard_samples = int(c_attrs["n_samples"]), int(c_attrs["shard_samples"])
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise EncodeError(f"{corpus_split} is not a corpus split store: {exc!r}") from exc
    names = cfg.modality_names
    missing = [m for m in names if m not in corpus.array_keys()] + (
        [] if "valid" in corpus.array_keys() else ["valid"]
    )
    if missing:
        raise EncodeError(f"corpus {corpus_split} lacks arrays {missing}")
    check_tokenizers(tokenizers, names, cfg.crop_px)
    identities = tokenizer_identities({m: tokenizers[m] for m in names})
    device = _device(cfg, d)

    error: EncodeError | None = None
    if d.rank == 0:
        try:
            open_store(
                out_split, corpus_split, n_samples, shard_samples, names, identities, cfg, split
            )
        except EncodeError as exc:
            error = exc
    error = d.agree(error)
    if error is not None:
        raise error
    if d.rank != 0:  # every rank checks for itself too (the attrs are on disk now)
        open_store(out_split, corpus_split, n_samples, shard_samples, names, identities, cfg, split)

    n_shards = -(-n_samples // shard_samples) if n_samples else 0
    # each rank checks its share of the committed shards and withdraws the commits that fail
    redone = recheck_commits(
        out_split, n_samples, shard_samples, full=cfg.verify_committed, rank=d.rank, world=d.world
    )
    for shard, why in redone:
        log.warning(
            "%s: committed shard %d failed its check (%s); re-encoding it", split, shard, why
        )
    d.barrier()  # every failed commit is withdrawn before anyone lists them
    committed = set(read_commits(out_split))
    d.barrier()  # everyone has listed the commits before anyone writes new ones
    todo = [k for k in range(n_shards) if k not in committed][d.rank :: d.world]
    if cfg.max_shards is not None:
        todo = todo[: cfg.max_shards]
    report = SplitReport(split, n_samples, n_shards, len(committed & set(range(n_shards))), redone)
    if not todo:
        d.barrier()
        _check_finished(out_split, n_samples, shard_samples, d)
        return report

    if keys is None:
        keys = sample_keys(corpus_split.parent, split, n_samples)
    image_names = [m for m in names if get_modality(m).is_image]
    with torch.inference_mode():
        encoders = {}
        for m in image_names:
            tok = tokenizers[m].to(device)
            if isinstance(getattr(tok, "model", None), torch.nn.Module):
                tok.model.eval()
            encoders[m] = _image_encoder(tok, cfg)
        group = zarr.open_group(str(out_split), mode="r+")
        corpus_arrays = {name: corpus[name] for name in (*names, "valid")}
        arrays = {
            name: zarr.open_array(str(out_split / name), mode="r+").with_config(
                {"write_empty_chunks": True}
            )
            for name in group.array_keys()
        }

        def write(res: ShardCodes) -> None:
            blocks = assemble_shard(res, tokenizers, names, cfg.n_crops, cfg.crop_px)
            write_shard(
                out_split,
                arrays,
                res.inp.shard,
                res.inp.lo,
                res.inp.hi,
                blocks,
                identities,
                cfg.seed,
            )
            report.encoded_shards += 1
            report.encoded_rows += res.inp.hi - res.inp.lo
            report.valid_rows += res.inp.n_valid
            bar.update(1)

        def read(shard: int) -> ShardInput:
            return read_shard(
                corpus_arrays,
                shard,
                shard_samples,
                n_samples,
                keys,
                tokenizers,
                names,
                cfg,
                pin=device.type == "cuda",
                precut=not cfg.crop_on_device
                if cfg.crop_on_device is not None
                else device.type == "cpu",
            )

        from tqdm import tqdm

        bar = tqdm(
            total=len(todo),
            desc=f"encode {split}",
            unit="shard",
            disable=not cfg.progress or d.rank != 0,
        )
        t0 = time.perf_counter()
        writer = _Writer(write)
        try:
            for inp in _prefetched(read, todo, cfg.prefetch, cfg.read_threads):
                writer.put(encode_images(inp, {m: encoders[m] for m in image_names}, cfg, device))
        finally:
            writer.close()
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        report.seconds = time.perf_counter() - t0
    d.barrier()
    _check_finished(out_split, n_samples, shard_samples, d)
    return report


def recheck_commits(
    out_split: Path,
    n_samples: int,
    shard_samples: int,
    *,
    full: bool = False,
    rank: int = 0,
    world: int = 1,
) -> list[tuple[int, str]]:
    """Check this rank's share of the committed shards; withdraw the commits that fail.

    A marker says a shard was complete when it was written, not that it still is: a chunk
    file deleted or truncated since (or, with ``full``, a flipped byte) would otherwise be
    skipped on every resume and trained on. Returns (shard, why) of each withdrawn commit.
    """
    n_shards = -(-n_samples // shard_samples) if n_samples else 0
    failed: list[tuple[int, str]] = []
    for shard, record in sorted(read_commits(out_split).items()):
        if not 0 <= shard < n_shards or shard % world != rank:
            continue
        rows = (shard * shard_samples, min((shard + 1) * shard_samples, n_samples))
        why = commit_problem(out_split, shard, record, rows, full=full)
        if why is not None:
            drop_commit(out_split, shard)
            failed.append((shard, why))
    return failed


def _check_finished(out_split: Path, n_samples: int, shard_samples: int, d: Dist) -> None:
    """A split whose shards are all committed is re-checked (cheaply) before it is reported
    done: a shard changed by someone else while this job ran is an error, not a success."""
    if d.rank != 0:
        return
    n_shards = -(-n_samples // shard_samples) if n_samples else 0
    commits = read_commits(out_split)
    if any(k not in commits for k in range(n_shards)):
        return  # not finished (max_shards): the next run checks and completes it
    bad = []
    for k in range(n_shards):
        rows = (k * shard_samples, min((k + 1) * shard_samples, n_samples))
        why = commit_problem(out_split, k, commits[k], rows)
        if why is not None:
            bad.append(f"shard {k}: {why}")
    if bad:
        raise EncodeError(
            f"{out_split} changed while it was being encoded ({'; '.join(bad[:3])}); is another encode writing to it? Re-run to repair it."
        )


def encode(
    corpus_dir: str | os.PathLike[str],
    tokenizers: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    cfg: EncodeConfig | None = None,
) -> EncodeReport:
    """Encode every split of ``corpus_dir`` into ``out_dir/<split>.zarr`` (resumable).

    ``tokenizers`` is a directory of tokenizer folders (``s2l2a/``, ``geo/`` ...) or a
    mapping modality -> tokenizer object. Under ``torchrun`` each rank encodes its own
    shards; a store written by other tokenizers raises :class:`TokenizerMismatchError`.
    """
    cfg = cfg or EncodeConfig()
    corpus_root, out_root = Path(corpus_dir), Path(out_dir)
    if not corpus_root.is_dir():
        raise EncodeError(f"corpus directory {corpus_root} does not exist")
    splits = list(cfg.splits) if cfg.splits is not None else corpus_splits(corpus_root)
    if not splits:
        raise EncodeError(f"no <split>.zarr corpus stores in {corpus_root}")
    for s in splits:
        if not (corpus_root / f"{s}.zarr" / "zarr.json").is_file():
            raise EncodeError(f"corpus split {corpus_root / (s + '.zarr')} does not exist")
    d = Dist.from_env(cfg.device)
    lease: Lease | None = None
    try:
        toks = (
            dict(tokenizers)
            if isinstance(tokenizers, Mapping)
            else load_tokenizers(tokenizers, cfg.modality_names)
        )
        out_root.mkdir(parents=True, exist_ok=True)
        busy: EncodeError | None = None
        if d.rank == 0:  # the job's ranks share rank 0's lease
            try:
                lease = acquire_encode_lease(out_root)
            except EncodeError as exc:
                busy = exc
        busy = d.agree(busy)
        if busy is not None:
            raise busy
        report = EncodeReport()
        with lease.keep_alive() if lease is not None else contextlib.nullcontext():
            for s in splits:
                report.splits.append(
                    encode_split(
                        corpus_root / f"{s}.zarr", out_root / f"{s}.zarr", toks, cfg, dist_=d
                    )
                )
        if lease is not None:
            try:
                lease.renew()  # still ours: no other job wrote meanwhile
            except LeaseLost as exc:
                raise EncodeBusyError(str(exc)) from exc
        return report
    finally:
        if lease is not None:
            lease.release()
        d.close()


def lease_path(out_dir: str | os.PathLike[str]) -> Path:
    """``tokens/_commits/lease.json``: beside the commit markers it guards."""
    return Path(out_dir) / COMMITS_DIR / LEASE_NAME


def acquire_encode_lease(out_dir: str | os.PathLike[str], ttl: float = LEASE_TTL_S) -> Lease:
    """The exclusive lease of one encode job on ``out_dir``; :class:`EncodeBusyError` (one
    line: who holds it, until when) while another live job holds it. A stale lease (expired,
    or of a dead process on this host) is taken over."""
    try:
        return acquire_lease(lease_path(out_dir), {"job": "terraloom-tokenize encode"}, ttl=ttl)
    except LeaseHeld as exc:
        raise EncodeBusyError(f"another encode is writing this token store: {exc}") from exc
