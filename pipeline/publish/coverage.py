"""Coverage map: sample centres on an equirectangular world (lon/lat graticule).

No coastline data ships offline, so the map is a plain plate carree with a 30-degree
graticule, the equator and the tropics, and the sample centres coloured by split; an inset
zooms to the corpus's own extent when it is small enough to be a single dot otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPLIT_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def _small_extent(rows: Sequence[dict[str, Any]], max_deg: float = 20.0) -> bool:
    """An inset only helps when the whole corpus would be one dot on the world map."""
    lons = [r["center_lon"] for r in rows]
    lats = [r["center_lat"] for r in rows]
    return max(max(lons) - min(lons), max(lats) - min(lats)) <= max_deg


def render_coverage(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str
) -> Path:
    """Write the coverage PNG of the given index rows (``center_lon``/``center_lat``/``split``)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.4))
    ax.set_facecolor("#eaf2fb")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(range(-180, 181, 30))
    ax.set_yticks(range(-90, 91, 30))
    ax.grid(color="white", linewidth=0.8)
    for lat, style in ((0, "-"), (23.44, ":"), (-23.44, ":"), (66.56, ":"), (-66.56, ":")):
        ax.axhline(lat, color="#8aa4c0", linewidth=0.7, linestyle=style)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    splits = sorted({r["split"] for r in rows})
    for split in splits:
        pts = [(r["center_lon"], r["center_lat"]) for r in rows if r["split"] == split]
        xs, ys = zip(*pts) if pts else ((), ())
        ax.scatter(
            xs,
            ys,
            s=28,
            color=SPLIT_COLORS.get(split, "k"),
            edgecolor="k",
            linewidth=0.4,
            label=f"{split} ({len(pts)})",
            zorder=3,
        )
    if rows and _small_extent(rows):
        lons = [r["center_lon"] for r in rows]
        lats = [r["center_lat"] for r in rows]
        pad = max(0.05, 0.15 * max(max(lons) - min(lons), max(lats) - min(lats)))
        box = (min(lons) - pad, max(lons) + pad, min(lats) - pad, max(lats) + pad)
        ax.add_patch(
            matplotlib.patches.Rectangle(
                (box[0], box[2]),
                box[1] - box[0],
                box[3] - box[2],
                fill=False,
                edgecolor="crimson",
                linewidth=1.2,
                zorder=4,
            )
        )
        inset = ax.inset_axes((0.02, 0.04, 0.3, 0.42))
        for split in splits:
            pts = [(r["center_lon"], r["center_lat"]) for r in rows if r["split"] == split]
            if pts:
                xs, ys = zip(*pts)
                inset.scatter(
                    xs, ys, s=18, color=SPLIT_COLORS.get(split, "k"), edgecolor="k", linewidth=0.3
                )
        inset.set_xlim(box[0], box[1])
        inset.set_ylim(box[2], box[3])
        inset.set_aspect("equal", adjustable="box")
        inset.tick_params(labelsize=6)
        inset.set_title("corpus extent", fontsize=7)
        for side in inset.spines.values():
            side.set_edgecolor("crimson")
    ax.legend(loc="lower right", fontsize=8, title="split (samples)", title_fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
