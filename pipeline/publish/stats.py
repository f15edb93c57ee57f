"""Per-modality band statistics of a corpus: mean, std and exact 1st/99th percentiles.

Published statistics must be reproducible by anyone with numpy, so the percentiles are
exact (numpy's default linear interpolation between order statistics), not sketches, yet
memory stays bounded whatever the corpus size: values are mapped to order-preserving
unsigned integer keys; 8/16-bit dtypes are counted in one pass over a 65,536-bin table,
32-bit dtypes by a two-pass radix selection (high 16 bits, then the low 16 bits of the
few high buckets that hold the wanted ranks). Mean and std accumulate in float64.

Counted pixels: finite values that are not the modality's nodata value, over every
accepted sample of every split (rejected rows are fill values, never data).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terraloom.schemas.modalities import Layout, Modality, get_modality

PERCENTILES = (1.0, 99.0)
_BINS = 1 << 16


@dataclass(frozen=True)
class BandStats:
    """Statistics of one band over the counted pixels."""

    band: str
    count: int
    mean: float
    std: float
    p1: float
    p99: float
    min: float
    max: float


def valid_mask(m: Modality, x: np.ndarray) -> np.ndarray:
    """Pixels that count: finite and not the modality's nodata value."""
    ok = np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else np.ones(x.shape, bool)
    if m.nodata is not None and not (isinstance(m.nodata, float) and np.isnan(m.nodata)):
        ok &= x != np.asarray(m.nodata).astype(x.dtype)
    return ok


def sort_keys(x: np.ndarray) -> np.ndarray:
    """Order-preserving unsigned keys: uint8/16/32 as is; floats by the IEEE bit trick."""
    x = np.ascontiguousarray(x)
    if x.dtype.kind == "u" and x.dtype.itemsize <= 4:
        return x.astype(np.uint32 if x.dtype.itemsize == 4 else np.uint16)
    if x.dtype.kind == "f" and x.dtype.itemsize in (2, 4):
        ut = np.uint16 if x.dtype.itemsize == 2 else np.uint32
        bits: Any = x.view(ut)
        sign = ut(1 << (8 * x.dtype.itemsize - 1))
        return np.where(bits & sign, ~bits, bits | sign).astype(ut)
    raise ValueError(f"no exact percentile keys for dtype {x.dtype}")


def from_keys(keys: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`sort_keys`."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        return keys.astype(dtype)
    ut = np.uint16 if dtype.itemsize == 2 else np.uint32
    k: Any = keys.astype(ut)
    sign = ut(1 << (8 * dtype.itemsize - 1))
    return np.where(k & sign, k & ~sign, ~k).astype(ut).view(dtype)


def _ranks(n: int, q: float) -> tuple[int, int, float]:
    """numpy's 'linear' percentile: order statistics lo, hi and the weight of hi."""
    h = (n - 1) * q / 100.0
    lo = int(np.floor(h))
    return lo, min(lo + 1, n - 1), h - lo


def _kth(cum: np.ndarray, k: int) -> int:
    """Bin holding the k-th (0-based) value given cumulative counts."""
    return int(np.searchsorted(cum, k, side="right"))


BandReader = Callable[[], Iterator[np.ndarray]]
"""Returns a fresh iterator over blocks of one band's counted values (1-D, stored dtype)."""


def band_stats(name: str, dtype: np.dtype, read: BandReader) -> BandStats:
    """Exact statistics of one band from (at most two) passes over its values."""
    dtype = np.dtype(dtype)
    wide = dtype.itemsize == 4
    hist = np.zeros(_BINS, np.int64)
    n, s, ss = 0, 0.0, 0.0
    for v in read():
        if not v.size:
            continue
        k = sort_keys(v)
        hist += np.bincount((k >> 16) if wide else k, minlength=_BINS)
        f = v.astype(np.float64)
        n += f.size
        s += float(f.sum())
        ss += float(np.square(f).sum())
    if n == 0:
        nan = float("nan")
        return BandStats(name, 0, nan, nan, nan, nan, nan, nan)
    mean = s / n
    # Second moment about the mean from the accumulated sums; clip the float error.
    var = max(ss / n - mean * mean, 0.0)
    cum = np.cumsum(hist)
    wanted: set[int] = {0, n - 1}
    plan = {q: _ranks(n, q) for q in PERCENTILES}
    for lo, hi, _ in plan.values():
        wanted |= {lo, hi}
    values: dict[int, float] = {}
    if not wide:
        for r in wanted:
            values[r] = float(from_keys(np.asarray([_kth(cum, r)]), dtype)[0])
    else:
        buckets = {r: _kth(cum, r) for r in wanted}
        sub = {b: np.zeros(_BINS, np.int64) for b in set(buckets.values())}
        for v in read():
            if not v.size:
                continue
            k = sort_keys(v)
            hi16 = k >> 16
            for b, h in sub.items():
                sel = k[hi16 == b] & 0xFFFF
                if sel.size:
                    h += np.bincount(sel, minlength=_BINS)
        for r, b in buckets.items():
            before = int(cum[b - 1]) if b else 0
            low = _kth(np.cumsum(sub[b]), r - before)
            values[r] = float(from_keys(np.asarray([(b << 16) | low], np.uint64), dtype)[0])
    pct: dict[float, float] = {}
    for q, (lo, hi, w) in plan.items():
        v0, v1 = values[lo], values[hi]
        pct[q] = v0 + w * (v1 - v0) if w else v0
    return BandStats(
        name,
        n,
        float(mean),
        float(np.sqrt(var)),
        float(pct[PERCENTILES[0]]),
        float(pct[PERCENTILES[1]]),
        values[0],
        values[n - 1],
    )


def _accepted_rows(index_rows: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for r in index_rows:
        rows.setdefault(r["split"], []).append(int(r["row"]))
    return {k: sorted(v) for k, v in rows.items()}


def corpus_stats(
    corpus: str | os.PathLike[str],
    index_rows: Sequence[dict[str, Any]],
    modality_names: Sequence[str],
) -> dict[str, list[BandStats]]:
    """Statistics of every band of every image modality, over the accepted samples."""
    import zarr

    corpus = Path(corpus)
    rows = _accepted_rows(index_rows)
    groups = {s: zarr.open_group(str(corpus / f"{s}.zarr"), mode="r") for s in rows}
    out: dict[str, list[BandStats]] = {}
    for name in modality_names:
        m = get_modality(name)
        if m.layout is not Layout.IMAGE:
            continue
        per_band: list[BandStats] = []
        for b, band in enumerate(m.band_names):

            def read(b: int = b, m: Modality = m) -> Iterator[np.ndarray]:
                for split, rs in rows.items():
                    arr: Any = groups[split][m.name]
                    for row in rs:
                        x = np.asarray(arr[row, b])
                        yield x[valid_mask(m, x)]

            per_band.append(band_stats(band, m.np_dtype, read))
        out[m.name] = per_band
    return out


def _num(x: float) -> float | None:
    """JSON has no NaN: a band without counted pixels has null statistics."""
    return None if np.isnan(x) else x


def stats_document(stats: dict[str, list[BandStats]]) -> dict[str, Any]:
    """``stats.json``: the corpus statistics beside the registry's normalisation constants."""
    doc: dict[str, Any] = {
        "description": (
            "Per-band statistics over every accepted sample (finite, non-nodata pixels); "
            "percentiles are exact (numpy 'linear'). 'normalisation' holds the mean/std the "
            "terraloom tokenizers and model normalise with (schemas.modalities registry)."
        ),
        "percentiles": list(PERCENTILES),
        "modalities": {},
    }
    for name, bands in stats.items():
        m = get_modality(name)
        doc["modalities"][name] = {
            "dtype": m.dtype,
            "bands": [b.band for b in bands],
            "count": [b.count for b in bands],
            "mean": [_num(b.mean) for b in bands],
            "std": [_num(b.std) for b in bands],
            "p1": [_num(b.p1) for b in bands],
            "p99": [_num(b.p99) for b in bands],
            "min": [_num(b.min) for b in bands],
            "max": [_num(b.max) for b in bands],
            "normalisation": {"mean": list(m.mean), "std": list(m.std)},
        }
    return doc
