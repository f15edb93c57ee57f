"""What one planned row becomes: corpus arrays + an index row, or a rejects row.

Pure functions from a judged sample's parts to the records the corpus writer stores, so
the shapes of ``index.parquet``, ``rejects.parquet`` and the per-modality arrays are
written once (``schemas.tables`` and ``schemas.layouts`` hold their contracts).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from terraloom.pipeline.caption import caption_to_bytes
from terraloom.pipeline.derive import Derived
from terraloom.pipeline.quality import Issue
from terraloom.schemas.modalities import Layout, Modality, get_modality
from terraloom.schemas.tables import TIMED_MODALITIES, RejectReason

__all__ = [
    "corpus_arrays",
    "fill_array",
    "index_row",
    "missing_entry",
    "plan_reason",
    "reject_row",
    "to_stored",
    "unplanned",
]


def plan_reason(text: str | None, default: RejectReason = RejectReason.NO_MATCH) -> RejectReason:
    """A reason code the plan recorded, or ``default`` for text that is not one."""
    try:
        return RejectReason(str(text))
    except ValueError:
        return default


def _identity(row: Mapping[str, Any]) -> dict[str, Any]:
    """The columns index and rejects rows share: which planned sample it is, and where."""
    return {
        "sample_id": row["sample_id"],
        "split": row["split"],
        "row": int(row["row"]),
        "cell_id": row["cell_id"],
        "geometry": row["geometry"],
    }


def reject_row(row: Mapping[str, Any], issue: Issue) -> dict[str, Any]:
    """The ``rejects.parquet`` row of a planned row that failed ``issue``."""
    return {
        **_identity(row),
        "reason": issue.reason.value,
        "modality": issue.modality,
        "message": issue.message,
    }


def missing_entry(issue: Issue) -> dict[str, str]:
    """One ``missing_modalities`` entry: the reason code a required modality would have
    been rejected with, and its message."""
    return {"modality": str(issue.modality), "reason": str(issue.reason), "message": issue.message}


def unplanned(row: Mapping[str, Any], modality: str) -> Issue:
    """Why the plan has no scene of a modality (its ``unmatched`` entry, if any)."""
    u = next((u for u in row.get("unmatched") or [] if u.get("modality") == modality), None)
    if u is not None:
        reason = plan_reason(u.get("reason"))
        return Issue(reason, modality, u.get("message") or f"{modality}: no scene")
    return Issue(RejectReason.NO_MATCH, modality, f"{modality}: no scene in the plan")


def to_stored(m: Modality, arr: np.ndarray) -> np.ndarray:
    """float32 (NaN nodata) -> the registry dtype (rounded, clipped; NaN -> nodata)."""
    dtype = m.np_dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        fill = 0 if m.nodata is None else m.nodata
        # rint, clip, then the fill where the value is not finite: in place, one temporary
        out = np.rint(arr)
        np.clip(out, info.min, info.max, out=out)
        finite = np.isfinite(arr)
        if not finite.all():
            out[~finite] = fill
        return out.astype(dtype)
    return arr.astype(dtype)


def fill_array(m: Modality, shape: tuple[int, ...]) -> np.ndarray:
    fill = 0 if m.nodata is None else m.nodata
    return np.full(shape, fill, m.np_dtype)


def corpus_arrays(
    modalities: Sequence[str],
    images: Mapping[str, np.ndarray],
    bands: Mapping[str, Sequence[str]],
    derived: Derived,
    caption: str,
    shape: tuple[int, int],
) -> dict[str, np.ndarray]:
    """The stored array of each built modality: source images in their registry dtype
    (bands not built at the fill value), derived ones as derived, text as the caption;
    a modality that is missing or cannot be derived is all fill."""
    h, w = shape
    arrays: dict[str, np.ndarray] = {}
    for name in modalities:
        m = get_modality(name)
        full = (m.n_bands, h, w) if m.is_image else (int(m.length or 1),)
        if not m.is_derived:
            img = images.get(name)
            arrays[name] = out = fill_array(m, full)
            if img is not None:
                for bi, b in enumerate(bands[name]):
                    out[m.band_names.index(b)] = to_stored(m, img[bi])
        elif m.layout is Layout.TEXT:
            arrays[name] = caption_to_bytes(caption, int(m.length or 512))
        else:
            value = derived.arrays.get(name)
            arrays[name] = fill_array(m, full) if value is None else value.astype(m.np_dtype)
    return arrays


def index_row(
    row: Mapping[str, Any],
    *,
    times: Mapping[str, dt.datetime | None],
    cloud_fraction: float | None,
    s1_s2_delta_days: float | None,
    filled_px: int,
    quality: Mapping[str, float | None],
    missing: Sequence[Issue],
    caption: str,
    s2_convention: str | None = None,
    dem_vertical_datum: str | None = None,
) -> dict[str, Any]:
    """The ``index.parquet`` row of an accepted sample (non-finite quality figures dropped).

    ``s2_convention``: the DN convention of its stored S2 arrays (None without S2);
    ``dem_vertical_datum``: the datum its DEM source was in (None without a DEM)."""
    return {
        **_identity(row),
        "center_lon": float(row["center_lon"]),
        "center_lat": float(row["center_lat"]),
        "epsg": int(row["epsg"]),
        "transform": [float(v) for v in row["transform"][:6]],
        **{f"time_{m}": times.get(m) for m in TIMED_MODALITIES},
        "cloud_fraction": None if cloud_fraction is None else float(cloud_fraction),
        "s1_s2_delta_days": None if s1_s2_delta_days is None else float(s1_s2_delta_days),
        "nodata_filled_px": int(filled_px),
        "quality": {
            k: float(v) for k, v in sorted(quality.items()) if v is not None and math.isfinite(v)
        },
        "missing_modalities": [missing_entry(i) for i in missing],
        "caption": caption,
        "s2_convention": s2_convention,
        "dem_vertical_datum": dem_vertical_datum,
    }
