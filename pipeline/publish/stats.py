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
from typing import Any

import numpy as np

from terraloom.schemas.modalities import Layout, Modality, get_modality
from terraloom.storage.location import Location

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


class BandAccumulator:
    """Exact statistics of one band, fed block by block in one or two passes.

    Pass 1 (:meth:`add`) counts keys into a 65,536-bin table and sums the moments; 32-bit
    dtypes need pass 2 (:meth:`add_second`, the same values again) to resolve the low 16
    bits inside the few high buckets that hold the wanted ranks. ``needs_second_pass``
    says whether it is needed; :meth:`result` gives the statistics.
    """

    def __init__(self, name: str, dtype: np.dtype) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.wide = self.dtype.itemsize == 4
        self.hist = np.zeros(_BINS, np.int64)
        self.n, self.s, self.ss = 0, 0.0, 0.0
        self._sub: dict[int, np.ndarray] | None = None

    def add(self, v: np.ndarray) -> None:
        if not v.size:
            return
        k = sort_keys(v)
        self.hist += np.bincount((k >> 16) if self.wide else k, minlength=_BINS)
        f = v.astype(np.float64)
        self.n += f.size
        self.s += float(f.sum())
        self.ss += float(np.square(f).sum())  # (np.dot would start BLAS threads)

    def _plan(self) -> tuple[np.ndarray, set[int], dict[float, tuple[int, int, float]]]:
        cum = np.cumsum(self.hist)
        wanted: set[int] = {0, self.n - 1}
        plan = {q: _ranks(self.n, q) for q in PERCENTILES}
        for lo, hi, _ in plan.values():
            wanted |= {lo, hi}
        return cum, wanted, plan

    @property
    def needs_second_pass(self) -> bool:
        return self.wide and self.n > 0

    def add_second(self, v: np.ndarray) -> None:
        if not v.size:
            return
        if self._sub is None:
            cum, wanted, _ = self._plan()
            self._sub = {b: np.zeros(_BINS, np.int64) for b in {_kth(cum, r) for r in wanted}}
        k = sort_keys(v)
        hi16 = k >> 16
        for b, h in self._sub.items():
            sel = k[hi16 == b] & 0xFFFF
            if sel.size:
                h += np.bincount(sel, minlength=_BINS)

    def result(self) -> BandStats:
        n = self.n
        if n == 0:
            nan = float("nan")
            return BandStats(self.name, 0, nan, nan, nan, nan, nan, nan)
        mean = self.s / n
        # Second moment about the mean from the accumulated sums; clip the float error.
        var = max(self.ss / n - mean * mean, 0.0)
        cum, wanted, plan = self._plan()
        values: dict[int, float] = {}
        if not self.wide:
            for r in wanted:
                values[r] = float(from_keys(np.asarray([_kth(cum, r)]), self.dtype)[0])
        else:
            if self._sub is None:
                raise RuntimeError("a 32-bit band needs the second pass (add_second)")
            for r in wanted:
                b = _kth(cum, r)
                before = int(cum[b - 1]) if b else 0
                low = _kth(np.cumsum(self._sub[b]), r - before)
                key = np.asarray([(b << 16) | low], np.uint64)
                values[r] = float(from_keys(key, self.dtype)[0])
        pct: dict[float, float] = {}
        for q, (lo, hi, w) in plan.items():
            v0, v1 = values[lo], values[hi]
            pct[q] = v0 + w * (v1 - v0) if w else v0
        return BandStats(
            self.name,
            n,
            float(mean),
            float(np.sqrt(var)),
            float(pct[PERCENTILES[0]]),
            float(pct[PERCENTILES[1]]),
            values[0],
            values[n - 1],
        )


def band_stats(name: str, dtype: np.dtype, read: BandReader) -> BandStats:
    """Exact statistics of one band from (at most two) passes over its values."""
    acc = BandAccumulator(name, dtype)
    for v in read():
        acc.add(v)
    if acc.needs_second_pass:
        for v in read():
            acc.add_second(v)
    return acc.result()


def _accepted_rows(index_rows: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for r in index_rows:
        rows.setdefault(r["split"], []).append(int(r["row"]))
    return {k: sorted(v) for k, v in rows.items()}


#: Accepted rows read at once (consecutive rows share a shard: one read, not one per row).
READ_ROWS = 16


def corpus_stats(
    corpus: str | os.PathLike[str] | Location,
    index_rows: Sequence[dict[str, Any]],
    modality_names: Sequence[str],
) -> dict[str, list[BandStats]]:
    """Statistics of every band of every image modality, over the accepted samples.

    Each sample's modality array is read once per pass (all bands together), a few rows at
    a time; a second pass is made only for 32-bit modalities (the DEM).
    """
    import zarr

    corpus = Location.parse(corpus)
    rows = _accepted_rows(index_rows)
    groups = {
        s: zarr.open_group((corpus / f"{s}.zarr").zarr_store(read_only=True), mode="r")
        for s in rows
    }
    out: dict[str, list[BandStats]] = {}
    for name in modality_names:
        m = get_modality(name)
        if m.layout is not Layout.IMAGE:
            continue
        accs = [BandAccumulator(band, m.np_dtype) for band in m.band_names]
        passes = [lambda a, v: a.add(v)]
        if np.dtype(m.np_dtype).itemsize == 4:
            passes.append(lambda a, v: a.add_second(v))
        for feed in passes:
            for block in _blocks(groups, rows, m.name):
                for x in block:  # one sample: (band, y, x)
                    for b, acc in enumerate(accs):
                        xb = x[b]
                        feed(acc, xb[valid_mask(m, xb)])
        out[m.name] = [a.result() for a in accs]
    return out


def _blocks(groups: dict[str, Any], rows: dict[str, list[int]], name: str) -> Iterator[np.ndarray]:
    """The accepted rows of every split, as arrays of consecutive rows (gaps skipped)."""
    for split, rs in rows.items():
        arr: Any = groups[split][name]
        i = 0
        while i < len(rs):
            j = i + 1
            while j < len(rs) and j - i < READ_ROWS and rs[j] == rs[j - 1] + 1:
                j += 1
            yield np.asarray(arr[rs[i] : rs[j - 1] + 1])
            i = j


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
