"""Quicklook PNGs: one per sample, every stored modality side by side.

People spot a misregistered radar image or a flipped DEM faster than any metric does, so
each panel shows a modality the way a human reads it: optical as a 2-98 % stretched true
colour, radar VV in dB on a fixed scale, DEM with a terrain colour map, LULC in the Esri
legend colours, NDVI on a red-yellow-green scale, the cloud mask in categorical colours;
GEO and the caption go into the title. Rendering uses the Agg backend (no display).
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from terraloom.schemas.modalities import (
    LULC_CLASS_NAMES,
    LULC_CLASSES,
    LULC_COLORS,
    Layout,
    get_modality,
)

CLOUD_COLORS: dict[int, tuple[int, int, int]] = {
    0: (40, 120, 40),
    1: (245, 245, 245),
    2: (60, 60, 60),
    255: (255, 0, 255),
}
NODATA_RGB = (0.5, 0.5, 0.5)
SAR_DB_RANGE = (-25.0, 0.0)
RGB_BANDS = ("B04", "B03", "B02")


def stretch(x: np.ndarray, lo_pct: float = 2.0, hi_pct: float = 98.0) -> np.ndarray:
    """Per-band percentile stretch to [0, 1] over finite, non-zero pixels; (b, y, x) -> (b, y, x)."""
    out = np.zeros(x.shape, np.float32)
    for i, band in enumerate(x.astype(np.float32)):
        ok = np.isfinite(band) & (band != 0)
        if not ok.any():
            continue
        lo, hi = np.percentile(band[ok], [lo_pct, hi_pct])
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
        out[i][~ok] = 0
    return out


def _paint(rgb: np.ndarray, mask: np.ndarray, color: Sequence[float]) -> None:
    rgb[mask] = np.asarray(color, np.float32)


def _scalar(x: np.ndarray, vmin: float, vmax: float, cmap: str) -> np.ndarray:
    import matplotlib

    norm = np.clip((x.astype(np.float32) - vmin) / (vmax - vmin), 0, 1)
    rgb = matplotlib.colormaps[cmap](np.nan_to_num(norm))[..., :3].astype(np.float32)
    _paint(rgb, ~np.isfinite(x), NODATA_RGB)
    return rgb


def _categorical(x: np.ndarray, colors: dict[int, tuple[int, int, int]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.float32)
    lut[:] = NODATA_RGB
    for value, c in colors.items():
        lut[value] = np.asarray(c, np.float32) / 255
    return lut[np.asarray(x, np.uint8)]


def panel_rgb(name: str, x: np.ndarray) -> np.ndarray:
    """One modality's stored value (band, y, x) or a mask (y, x) -> displayable (y, x, 3) in [0, 1]."""
    if name == "cloud_mask":
        return _categorical(x, CLOUD_COLORS)
    m = get_modality(name)
    if m.name == "LULC":
        return _categorical(x[0], LULC_COLORS)
    if m.name in ("S2L1C", "S2L2A"):
        idx = [m.band_names.index(b) for b in RGB_BANDS]
        rgb = np.moveaxis(stretch(x[idx]), 0, -1)
        _paint(rgb, (x[idx] == 0).all(axis=0), NODATA_RGB)
        return rgb
    if m.name == "S2RGB":
        return np.moveaxis(x[:3].astype(np.float32) / 255, 0, -1)
    if m.name in ("S1GRD", "S1RTC"):
        return _scalar(x[0].astype(np.float32), *SAR_DB_RANGE, "gray")
    if m.name == "DEM":
        z = x[0].astype(np.float32)
        ok = np.isfinite(z)
        lo, hi = (float(z[ok].min()), float(z[ok].max())) if ok.any() else (0.0, 1.0)
        return _scalar(z, lo, max(hi, lo + 1), "terrain")
    if m.name == "NDVI":
        return _scalar(x[0].astype(np.float32), -1, 1, "RdYlGn")
    raise ValueError(f"no quicklook panel for {name!r}")


def decode_caption(x: np.ndarray) -> str:
    """Zero-padded utf-8 bytes -> printable text (anything else becomes U+FFFD)."""
    text = bytes(np.asarray(x, np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def panel_names(group: Any) -> list[str]:
    """Image panels to draw for a store: its image modalities in registry order, then the cloud mask."""
    names = [n for n in group.attrs["modalities"] if get_modality(n).layout is Layout.IMAGE]
    if "cloud_mask" in set(group.array_keys()):
        names.append("cloud_mask")
    return names


def render_sample(
    group: Any,
    row: int,
    path: str | os.PathLike[str],
    *,
    sample_id: str | None = None,
    dpi: int = 60,
) -> Path:
    """Render one corpus row of a split store to a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = panel_names(group)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 3.3), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.imshow(panel_rgb(name, np.asarray(group[name][row])), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
        if name == "LULC":
            present = set(np.unique(np.asarray(group[name][row]))) & set(LULC_CLASSES)
            handles = [
                Patch(
                    color=(
                        LULC_COLORS[v][0] / 255,
                        LULC_COLORS[v][1] / 255,
                        LULC_COLORS[v][2] / 255,
                    ),
                    label=LULC_CLASS_NAMES[LULC_CLASSES.index(v)],
                )
                for v in LULC_CLASSES
                if v in present
            ]
            if handles:
                ax.legend(
                    handles=handles,
                    loc="upper center",
                    bbox_to_anchor=(0.5, -0.02),
                    fontsize=6,
                    ncol=2,
                    frameon=False,
                )
    title = [sample_id or f"row {row}"]
    keys = set(group.array_keys())
    if "GEO" in keys:
        lat, lon = np.asarray(group["GEO"][row], np.float64)
        title.append(f"lat {lat:.4f} lon {lon:.4f}")
    if "epsg" in keys:
        title.append(f"EPSG:{int(group['epsg'][row])}")
    if "valid" in keys and not bool(group["valid"][row]):
        title.append("(not valid: rejected or unwritten)")
    caption = decode_caption(group["CAPTION"][row]) if "CAPTION" in keys else ""
    fig.suptitle(
        "  |  ".join(title) + ("\n" + textwrap.fill(caption, 160) if caption else ""),
        fontsize=9,
        parse_math=False,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def render_corpus(
    corpus: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    sample_ids: Sequence[str] | None = None,
    dpi: int = 60,
    progress: bool = True,
) -> list[Path]:
    """One PNG per accepted sample (index.parquet order): ``dest/<split>/<sample_id>.png``."""
    if limit is not None and limit < 0:  # a slice would count from the end
        raise ValueError(f"limit must be >= 0, got {limit}")
    import zarr

    from terraloom.schemas.tables import read_table

    corpus = Path(corpus)
    index = (
        read_table("index", corpus / "index.parquet")
        .select(["sample_id", "split", "row"])
        .to_pylist()
    )
    if splits:
        index = [r for r in index if r["split"] in set(splits)]
    if sample_ids:
        wanted = set(sample_ids)
        unknown = wanted - {r["sample_id"] for r in index}
        if unknown:
            raise ValueError(f"sample ids not in the index: {sorted(unknown)[:5]}")
        index = [r for r in index if r["sample_id"] in wanted]
    if limit is not None:
        index = index[:limit]
    groups: dict[str, Any] = {}
    paths: list[Path] = []
    from tqdm import tqdm

    for r in tqdm(index, unit="sample", desc="quicklook", disable=not progress, file=sys.stderr):
        split = r["split"]
        if split not in groups:
            groups[split] = zarr.open_group(str(corpus / f"{split}.zarr"), mode="r")
        paths.append(
            render_sample(
                groups[split],
                int(r["row"]),
                Path(dest) / split / f"{r['sample_id']}.png",
                sample_id=r["sample_id"],
                dpi=dpi,
            )
        )
    return paths
