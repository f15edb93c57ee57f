"""Quality rules of a co-registered sample: each failed rule is one reject reason.

The rules run on float32 arrays with NaN for nodata (as produced by
``pipeline.coregister``). A sample is rejected, never silently dropped: the first failed
rule becomes its ``rejects.parquet`` row (reason code + a message a person can act on).
Gaps under the nodata threshold are filled by nearest neighbour and counted, so the
corpus holds no holes and the index says how many pixels were invented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from terraloom.schemas.tables import RejectReason

__all__ = [
    "CONSTANT_OK",
    "UNIFORM_OK_BANDS",
    "Issue",
    "check_cloud",
    "check_image",
    "check_s1_s2_delta",
    "fill_small_gaps",
    "is_constant",
    "judge_image",
    "nodata_fraction",
]


@dataclass(frozen=True)
class Issue:
    """A failed quality rule: the reject reason, the modality at fault and why."""

    reason: RejectReason
    modality: str | None
    message: str


def _as3d(arr: np.ndarray) -> np.ndarray:
    return arr[None] if arr.ndim == 2 else arr


def nodata_mask(arr: np.ndarray) -> np.ndarray:
    """(H, W) True where any band is nodata (NaN)."""
    return np.any(np.isnan(_as3d(arr)), axis=0)


def nodata_fraction(arr: np.ndarray) -> float:
    """Fraction of pixels where any band is nodata."""
    m = nodata_mask(arr)
    return float(m.mean()) if m.size else 1.0


def is_constant(arr: np.ndarray, uniform_ok: Sequence[int] = ()) -> bool:
    """True when some band holds a single value over all its valid pixels (fill, dead
    detector); an image with fewer than two valid pixels is constant too.

    Bands in ``uniform_ok`` (indices) may legitimately be uniform, e.g. Sentinel-2's
    B10 cirrus band over a clear sky; they are skipped unless every band is constant.
    """
    a = _as3d(arr)
    skip = set(uniform_ok) if len(uniform_ok) < a.shape[0] else set()
    for i, band in enumerate(a):
        if i in skip:
            continue
        v = band[np.isfinite(band)]
        if v.size < 2 or float(v.max()) == float(v.min()):
            return True
    return False


def fill_small_gaps(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill nodata pixels from the nearest fully valid pixel; returns (array, filled px).

    All bands of a pixel come from the same neighbour, so filled spectra stay real
    spectra (and filled classes real classes).
    """
    a = _as3d(arr)
    hole = np.any(np.isnan(a), axis=0)
    n = int(hole.sum())
    if n == 0 or n == hole.size:
        return arr, 0
    _, (iy, ix) = ndimage.distance_transform_edt(hole, return_distances=True, return_indices=True)
    out = a[:, iy, ix]
    return (out[0] if arr.ndim == 2 else out), n


def check_image(
    modality: str,
    arr: np.ndarray,
    *,
    max_nodata_fraction: float,
    bad_px: int = 0,
    check_constant: bool = True,
    uniform_ok: Sequence[int] = (),
) -> Issue | None:
    """The per-modality rules, in order: non-finite source values, nodata, constant."""
    a = _as3d(arr)
    if bad_px or np.isinf(a).any():
        n = bad_px + int(np.isinf(a).sum())
        return Issue(
            RejectReason.NAN_INF,
            modality,
            f"{modality}: {n} non-finite source values (NaN/inf) where data is expected",
        )
    frac = nodata_fraction(a)
    if frac >= 1.0:
        return Issue(
            RejectReason.NODATA, modality, f"{modality}: no valid pixel in the sample (all nodata)"
        )
    if frac > max_nodata_fraction:
        return Issue(
            RejectReason.NODATA,
            modality,
            f"{modality}: nodata fraction {frac:.4f} > {max_nodata_fraction:g}",
        )
    if check_constant and is_constant(a, uniform_ok):
        return Issue(
            RejectReason.CONSTANT,
            modality,
            f"{modality}: constant image (a band has a single value)",
        )
    return None


def check_cloud(cloud_frac: float, max_cloud_fraction: float) -> Issue | None:
    if cloud_frac > max_cloud_fraction:
        return Issue(
            RejectReason.CLOUDY,
            "S2L2A",
            f"cloud + shadow fraction {cloud_frac:.3f} > {max_cloud_fraction:g} (SCL)",
        )
    return None


def check_s1_s2_delta(delta_days: float | None, window_days: float) -> Issue | None:
    if delta_days is not None and abs(delta_days) > window_days:
        return Issue(
            RejectReason.S1_S2_DELTA,
            "S1GRD",
            f"S1-S2 acquisition delta {abs(delta_days):.2f} d > {window_days:g} d",
        )
    return None


#: Modalities whose constant images are legitimate (a sample all in one land-cover class).
CONSTANT_OK: tuple[str, ...] = ("LULC",)
#: Bands that may be uniform over a whole sample without the image being broken: B10
#: (cirrus, 1375 nm) sees nothing but cirrus, so a clear sky gives one flat value.
UNIFORM_OK_BANDS: dict[str, tuple[str, ...]] = {"S2L1C": ("B10",)}


def judge_image(
    modality: str,
    arr: np.ndarray,
    bands: Sequence[str],
    *,
    max_nodata_fraction: float,
    bad_px: int = 0,
) -> Issue | None:
    """:func:`check_image` with the modality's exceptions (constant LULC, uniform B10)."""
    return check_image(
        modality,
        arr,
        max_nodata_fraction=max_nodata_fraction,
        bad_px=bad_px,
        check_constant=modality not in CONSTANT_OK,
        uniform_ok=[i for i, b in enumerate(bands) if b in UNIFORM_OK_BANDS.get(modality, ())],
    )
