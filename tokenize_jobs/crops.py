"""Deterministic crop drawing and cutting, shared by the encode job and the model loader.

A crop is five integers ``(top, left, h, w, flip)`` in the 264 x 264 px frame of a corpus
sample. Crop 0 of every sample is the centred, unflipped crop; crops 1.. are drawn at
random positions with a random flip from a generator seeded by a stable hash of
``(seed, sample key, crop index)``, so any re-run, any rank and any process draws the
same crops without coordination, and the model loader can cut the pixel crop that
matches a stored token crop.

``flip`` is a bit field applied *after* cutting: bit 0 (value 1) mirrors left-right
(reverses x), bit 1 (value 2) mirrors top-bottom (reverses y); 3 does both (a 180 degree
rotation).

The sample key is the corpus ``sample_id`` (from ``index.parquet``); for corpora without
an index (toy corpora), :func:`row_key` builds ``"<split>/row-<row>"`` instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from terraloom.schemas.modalities import CROP_PX, SAMPLE_PX

CROP_FIELDS = ("top", "left", "h", "w", "flip")
FLIP_X = 1
"""Mirror left-right (reverse the x axis)."""
FLIP_Y = 2
"""Mirror top-bottom (reverse the y axis)."""

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def row_key(split: str, row: int) -> str:
    """Fallback sample key for corpora without ``index.parquet``."""
    return f"{split}/row-{int(row)}"


def _stream_seed(key: str, crop: int, seed: int) -> int:
    """A 64-bit seed from a stable hash (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256(
        f"terraloom-crop\x00{int(seed)}\x00{key}\x00{int(crop)}".encode()
    ).digest()
    return int.from_bytes(digest[:8], "little")


def centre_crop(crop_px: int = CROP_PX, sample_px: int = SAMPLE_PX) -> np.ndarray:
    """The (5,) int32 centred, unflipped crop."""
    off = (sample_px - crop_px) // 2
    return np.array([off, off, crop_px, crop_px, 0], np.int32)


def draw_crops(
    keys: Sequence[str],
    n_crops: int,
    crop_px: int = CROP_PX,
    sample_px: int = SAMPLE_PX,
    seed: int = 0,
) -> np.ndarray:
    """(len(keys), n_crops, 5) int32 crops; crop 0 centred, the others seeded random.

    Each crop depends only on ``(seed, key, crop index, crop_px, sample_px)``, never on
    the other samples of the batch.
    """
    if n_crops < 1:
        raise ValueError(f"n_crops must be >= 1, got {n_crops}")
    if not 0 < crop_px <= sample_px:
        raise ValueError(f"crop size {crop_px} must be in 1..{sample_px}")
    out = np.empty((len(keys), n_crops, 5), np.int32)
    out[:, 0] = centre_crop(crop_px, sample_px)
    span = sample_px - crop_px + 1
    for i, key in enumerate(keys):
        for k in range(1, n_crops):
            rng = np.random.Generator(np.random.PCG64(_stream_seed(key, k, seed)))
            top, left = rng.integers(0, span, size=2)
            flip = rng.integers(0, 4)
            out[i, k] = (top, left, crop_px, crop_px, flip)
    return out


def apply_crop(pixels: ArrayT, crop: Sequence[int] | np.ndarray | torch.Tensor) -> ArrayT:
    """Cut one crop from ``(..., H, W)`` pixels (numpy or torch) and apply its flip."""
    top, left, h, w, flip = (int(v) for v in crop)
    if top < 0 or left < 0 or top + h > pixels.shape[-2] or left + w > pixels.shape[-1]:
        raise ValueError(f"crop {(top, left, h, w)} outside a {tuple(pixels.shape[-2:])} image")
    out = pixels[..., top : top + h, left : left + w]
    if isinstance(out, torch.Tensor):
        dims = [d for bit, d in ((FLIP_X, -1), (FLIP_Y, -2)) if flip & bit]
        return out.flip(dims) if dims else out
    if flip & FLIP_X:
        out = out[..., :, ::-1]
    if flip & FLIP_Y:
        out = out[..., ::-1, :]
    return out


def _check_crops(crops: np.ndarray, height: int, width: int) -> tuple[int, int]:
    """Validate (B, 5) crops against an image size; return their shared (h, w)."""
    if crops.ndim != 2 or crops.shape[1] != 5:
        raise ValueError(f"crops must be (B, 5), got shape {crops.shape}")
    if len(crops) == 0:
        return 0, 0
    h, w = int(crops[0, 2]), int(crops[0, 3])
    if (crops[:, 2] != h).any() or (crops[:, 3] != w).any():
        raise ValueError("apply_crops needs crops of one size")
    top, left = crops[:, 0], crops[:, 1]
    if (top < 0).any() or (left < 0).any() or (top + h > height).any() or (left + w > width).any():
        raise ValueError(f"a crop lies outside the {(height, width)} image")
    return h, w


def _gather_crops(
    pixels: torch.Tensor, cn: np.ndarray, sn: np.ndarray, h: int, w: int
) -> torch.Tensor:
    """The accelerator path of :func:`apply_crops`: one advanced-indexing gather."""
    dev = pixels.device
    ct = torch.as_tensor(cn, device=dev)
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    top, left, flip = ct[:, 0:1], ct[:, 1:2], ct[:, 4:5]
    ys = torch.where((flip & FLIP_Y) > 0, top + (h - 1) - ar_h, top + ar_h)
    xs = torch.where((flip & FLIP_X) > 0, left + (w - 1) - ar_w, left + ar_w)
    bi = torch.as_tensor(sn, device=dev)[:, None, None]
    # (N, H, W, C)[b, y, x] -> (B, h, w, C): one gather, then channels first again
    out = pixels.permute(0, 2, 3, 1)[bi, ys[:, :, None], xs[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def apply_crops(
    pixels: ArrayT,
    crops: np.ndarray,
    src: np.ndarray | None = None,
    out_dtype: np.dtype | type | None = None,
) -> ArrayT:
    """Vectorised :func:`apply_crop`: ``(N, C, H, W)`` pixels, ``(B, 5)`` crops -> ``(B, C, h, w)``.

    Crop ``i`` is cut from sample ``src[i]`` (default ``i``), so K crops of N samples are
    cut without repeating the samples first. All crops share one ``(h, w)``. Works on
    numpy arrays and torch tensors on any device: one gather kernel on accelerators
    (the encode job copies whole samples once and cuts crops on the device), a copy
    loop into one preallocated array on the CPU (3x faster there than a gather).
    ``out_dtype`` (numpy input only) converts while copying, in the same single pass.
    """
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be (N, C, H, W), got shape {tuple(pixels.shape)}")
    cn = np.asarray(crops, np.int64)
    cn = cn.reshape(-1, 5) if cn.size else cn.reshape(0, 5)
    h, w = _check_crops(cn, int(pixels.shape[-2]), int(pixels.shape[-1]))
    b, c = len(cn), int(pixels.shape[1])
    sn = np.arange(b) if src is None else np.asarray(src, np.int64).reshape(-1)
    if len(sn) != b or (b and (sn.min() < 0 or sn.max() >= pixels.shape[0])):
        raise ValueError(f"src must hold {b} sample indices in 0..{pixels.shape[0] - 1}")
    if isinstance(pixels, torch.Tensor) and pixels.device.type != "cpu" and b:
        return _gather_crops(pixels, cn, sn, h, w)
    if isinstance(pixels, torch.Tensor):
        out = torch.empty((b, c, h, w), dtype=pixels.dtype, device=pixels.device)
        for i in range(b):
            out[i].copy_(apply_crop(pixels[int(sn[i])], cn[i]))
        return out
    out_n = np.empty((b, c, h, w), out_dtype or pixels.dtype)
    for i in range(b):
        out_n[i] = apply_crop(pixels[int(sn[i])], cn[i])
    return out_n
