"""One corpus shard through the encode job's stages: read (pixels, crops, sequence
tokens on the CPU), encode (image tokenizers on the device) and assemble (the shard's
full blocks of every token-store array).

Pure per-shard work; ``tokenize_jobs.encode`` runs these stages overlapped (reader
threads, the device loop, a writer thread) and owns the store, commits and leases.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from terraloom.schemas.layouts import CAPTION_MAX_TOKENS, SPLITS
from terraloom.schemas.modalities import SAMPLE_PX, Layout, get_modality
from terraloom.storage.location import Location
from terraloom.tokenize_jobs.crops import apply_crops, draw_crops, row_key
from terraloom.tokenize_jobs.encode_config import UINT16_MAX, EncodeConfig, EncodeError
from terraloom.tokenize_jobs.store import LEN_SUFFIX

# --------------------------------------------------------------------------- tokenizers


def tokenizer_identities(tokenizers: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {k: str(v) for k, v in dict(tok.identity).items()}
        for name, tok in sorted(tokenizers.items())
    }


def tokenizer_fsq_groups(tokenizers: Mapping[str, Any]) -> dict[str, list[int]]:
    """FSQ grouping of each image tokenizer (its code digits that are one scalar): the token
    store records it so that training's ordinal targets follow the codes actually stored,
    wherever the store is read from (the tokenizers' folders need not travel with it)."""
    out: dict[str, list[int]] = {}
    for name, tok in sorted(tokenizers.items()):
        groups = getattr(getattr(tok, "config", None), "fsq_groups", None)
        if groups is not None:
            out[name] = [int(g) for g in groups]
    return out


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


def corpus_splits(corpus_dir: str | os.PathLike[str] | Location) -> list[str]:
    """Splits present in a corpus directory (``<split>.zarr``), known splits first."""
    root = Location.parse(corpus_dir)
    found = sorted(
        n[: -len(".zarr")]
        for n in root.listdir()
        if n.endswith(".zarr") and (root / f"{n}/zarr.json").exists()
    )
    return [s for s in SPLITS if s in found] + [s for s in found if s not in SPLITS]


def sample_keys(
    corpus_dir: str | os.PathLike[str] | Location, split: str, n_samples: int
) -> np.ndarray:
    """Crop-seeding key of each row: the ``sample_id`` from ``index.parquet``, or
    :func:`~tokenize_jobs.crops.row_key` for rows (or corpora) without an index entry."""
    keys = np.array([row_key(split, r) for r in range(n_samples)], dtype=object)
    index = Location.parse(corpus_dir) / "index.parquet"
    if index.exists() and not index.is_dir():
        import pyarrow.parquet as pq

        fs, path = index.arrow_filesystem()
        with fs.open_input_file(path) as f:
            table = pq.ParquetFile(f).read(columns=["sample_id", "split", "row"])
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


def image_encoder(tok: Any, cfg: EncodeConfig) -> Callable[[torch.Tensor], torch.Tensor]:
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
