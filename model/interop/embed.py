"""Encoder embeddings of a trained (or imported) model, per sample and per patch.

``encoder_hidden`` is the encoder's output after its final norm (what TerraMind's backbone
returns and what downstream heads consume), before the decoder's context projection. The
``embed`` job feeds every patch of the centre ``image_px`` crop (224 px for TerraMind's sizes)
of the chosen pixel modalities and
writes the mean over tokens per sample as GeoParquet, following Major TOM's embedding
datasets (id, grid cell, footprint geometry, time, centre, embedding), and optionally all
token embeddings as a Zarr array (sample, token, dim).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from terraloom.model.config import PIXEL_SUFFIX
from terraloom.model.transformer import TerraloomModel
from terraloom.schemas.modalities import get_modality
from terraloom.schemas.tables import GEOMETRY_COLUMN, geo_metadata


def encoder_hidden(model: TerraloomModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, N_in, D) normed encoder output for a batch's ``enc_*`` / ``pix.*`` inputs."""
    pad = batch["enc_pad"]
    mask = model.pad_mask(pad, bool(pad.any()))
    x, emb = model.inputs(batch)
    x = x + emb
    for blk in model.encoder:
        x = blk(x, mask)
    return model.encoder_norm(x)


# --------------------------------------------------------------------------- the embed job

EMBED_FILE = "embeddings.parquet"
PATCH_FILE = "patches.zarr"
PARTS = "parts"


@dataclass(frozen=True)
class EmbedConfig:
    """One embedding run over a corpus split."""

    checkpoint: str
    corpus: str
    out: str
    modalities: tuple[str, ...]
    split: str = "val"
    batch: int = 16
    per_patch: bool = False
    device: str = "auto"
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if not self.modalities:
            raise ValueError("--modalities names at least one pixel modality")


def center_patches(raw: np.ndarray, name: str, crop: int, patch: int) -> np.ndarray:
    """(B, C, S, S) stored values -> (B, (crop/p)^2, C*p*p) normalised patches of the centre
    crop, positions row-major, (c ph pw) inside a patch (the model's pixel layout)."""
    m = get_modality(name)
    off = (raw.shape[-1] - crop) // 2
    x = raw[:, :, off : off + crop, off : off + crop]
    mean = np.asarray(m.mean, np.float32)[None, :, None, None]
    std = np.asarray(m.std, np.float32)[None, :, None, None]
    out = (x.astype(np.float32) - mean) / std
    bad = ~np.isfinite(out)
    if m.nodata is not None and not (isinstance(m.nodata, float) and np.isnan(m.nodata)):
        bad |= x == m.nodata
    out[bad] = 0.0
    b, c = out.shape[:2]
    g = crop // patch
    return (
        out.reshape(b, c, g, patch, g, patch)
        .transpose(0, 2, 4, 1, 3, 5)
        .reshape(b, g * g, c * patch * patch)
    )


def pixel_batch(model: TerraloomModel, pixels: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """An encoder batch with every patch of every given pixel modality as an input."""
    specs = model.specs
    b = next(iter(pixels.values())).shape[0]
    n = specs.n_image_positions
    total = n * len(pixels)
    batch: dict[str, torch.Tensor] = {}
    mods, at = [], 0
    for name, patches in pixels.items():
        key = get_modality(name).name + PIXEL_SUFFIX
        i = specs.input_index(key)
        mods.append(torch.full((b, n), i, dtype=torch.long))
        idx = (torch.arange(b)[:, None] * total + at + torch.arange(n)[None]).reshape(-1)
        batch[f"pix.{key}"] = torch.from_numpy(np.ascontiguousarray(patches.reshape(b * n, -1)))
        batch[f"pix_idx.{key}"] = idx
        at += n
    batch["enc_mod"] = torch.cat(mods, 1)
    batch["enc_pos"] = torch.arange(n).repeat(len(pixels))[None].expand(b, -1).contiguous()
    batch["enc_ids"] = torch.zeros(b, total, dtype=torch.long)
    batch["enc_pad"] = torch.zeros(b, total, dtype=torch.bool)
    return batch


def _index_rows(corpus: str, split: str) -> pa.Table:
    path = Path(corpus) / "index.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no corpus index")
    table = pq.read_table(path)
    table = table.filter(pc.equal(table.column("split"), split))
    if table.num_rows == 0:
        raise ValueError(f"{corpus}: the index has no rows of split {split!r}")
    return table.sort_by("row")


def _device(name: str, rank: int) -> torch.device:
    if name == "auto":
        return torch.device(
            f"cuda:{rank % max(torch.cuda.device_count(), 1)}"
            if torch.cuda.is_available()
            else "cpu"
        )
    return torch.device(name)


def embed(cfg: EmbedConfig) -> dict[str, Any]:
    """Embed every indexed sample of the split; returns counts. Re-running skips finished
    batches (one Parquet part per batch, written atomically); under torchrun each rank
    takes every WORLD_SIZE-th batch and rank 0 joins the parts once all exist."""
    from terraloom.model.interop.weights import weights_dir
    from terraloom.tokenize_jobs.corpus_reader import open_split, read_rows

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    src = weights_dir(cfg.checkpoint)
    model = TerraloomModel.from_pretrained(src, map_location=device).eval()
    names = tuple(get_modality(m).name for m in cfg.modalities)
    for name in names:
        model.specs.input_index(name + PIXEL_SUFFIX)  # KeyError (exit 2) if not an input
    table = _index_rows(cfg.corpus, cfg.split)
    if cfg.max_samples is not None:
        table = table.slice(0, cfg.max_samples)
    group = open_split(cfg.corpus, cfg.split)
    out = Path(cfg.out)
    parts = out / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    n, dim = table.num_rows, model.cfg.dim
    n_tok = model.specs.n_image_positions * len(names)
    patch_arr = None
    if cfg.per_patch:
        import zarr

        path = out / PATCH_FILE
        if rank == 0 and not (path / "zarr.json").exists():
            zarr.create_array(
                str(path),
                shape=(n, n_tok, dim),
                chunks=(1, n_tok, dim),
                dtype="float16",
                attributes={
                    "modalities": list(names),
                    "tokens_per_modality": model.specs.n_image_positions,
                },
            )
        _barrier(world)
        patch_arr = zarr.open_array(str(path), mode="r+")
    rows = table.column("row").to_numpy()
    n_batches = (n + cfg.batch - 1) // cfg.batch
    done = skipped = 0
    for k in range(rank, n_batches, world):
        part = parts / f"part-{k:06d}.parquet"
        if part.exists():
            skipped += 1
            continue
        lo, hi = k * cfg.batch, min(n, (k + 1) * cfg.batch)
        pixels = {
            name: center_patches(
                read_rows(group, name, rows[lo:hi]), name, model.cfg.image_px, model.cfg.patch_px
            )
            for name in names
        }
        batch = {key: v.to(device) for key, v in pixel_batch(model, pixels).items()}
        with torch.inference_mode():
            h = encoder_hidden(model, batch).float().cpu()
        if patch_arr is not None:
            patch_arr[lo:hi] = h.numpy().astype(np.float16)
        _write_part(part, table.slice(lo, hi - lo), h.mean(1).numpy(), names, src)
        done += 1
    _barrier(world)
    written = None
    if rank == 0 and len(list(parts.glob("part-*.parquet"))) == n_batches:
        written = _join(parts, out / EMBED_FILE)
    return {
        "samples": n,
        "batches": n_batches,
        "embedded": done,
        "already_done": skipped,
        "out": str(written or out),
    }


def _barrier(world: int) -> None:
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _write_part(
    path: Path, rows: pa.Table, emb: np.ndarray, names: tuple[str, ...], src: Path
) -> None:
    times = None
    for name in names:
        col = f"time_{name}"
        if col in rows.column_names:
            times = rows.column(col)
            break
    table = pa.table(
        {
            "sample_id": rows.column("sample_id"),
            "grid_cell": rows.column("cell_id"),
            "row": rows.column("row"),
            "timestamp": times
            if times is not None
            else pa.nulls(rows.num_rows, pa.timestamp("us", tz="UTC")),
            "centre_lat": rows.column("center_lat"),
            "centre_lon": rows.column("center_lon"),
            "modalities": pa.array([",".join(names)] * rows.num_rows),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(emb.astype(np.float32).reshape(-1)), emb.shape[1]
            ),
            GEOMETRY_COLUMN: rows.column(GEOMETRY_COLUMN),
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _join(parts: Path, path: Path) -> Path:
    table = pa.concat_tables([pq.read_table(p) for p in sorted(parts.glob("part-*.parquet"))])
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps(geo_metadata(table)).encode()
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path
