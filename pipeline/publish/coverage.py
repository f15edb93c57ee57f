"""Coverage map: where the samples are, on a world outline and zoomed onto each cluster.

A corpus is usually a few dense clusters (the grid cells a plan covered) on an empty globe:
on a world map alone every cluster is one dot, and nobody can tell 3 samples from 300. So
the picture has two rows: the world (land from a shipped Natural Earth outline, sample
centres coloured by split, each cluster boxed and lettered), and below it one zoom per
cluster (up to :data:`MAX_ZOOMS`, the largest first) drawing every sample's footprint, so
the spread, the overlap and the split of each cluster can be seen.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

SPLIT_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
LAND_FILE = Path(__file__).with_name("world_land.json")
#: Zoom panels drawn under the world map (the largest clusters).
MAX_ZOOMS = 3
#: Sample centres closer than this (degrees) belong to one cluster.
CLUSTER_DEG = 3.0
LETTERS = "ABCDEFGHIJ"


@cache
def land_rings() -> list[list[tuple[float, float]]]:
    """Outer rings of the land polygons (lon, lat)."""
    doc = json.loads(LAND_FILE.read_text())
    return [[(float(x), float(y)) for x, y in ring] for ring in doc["rings"]]


def clusters(rows: Sequence[dict[str, Any]], deg: float = CLUSTER_DEG) -> list[list[int]]:
    """Indices of ``rows`` grouped by single linkage over centre distance (degrees),
    largest group first. Quadratic, which is fine for the thousands of centres of a card."""
    n = len(rows)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pts = [(float(r["center_lon"]), float(r["center_lat"])) for r in rows]
    order = sorted(range(n), key=lambda i: pts[i])
    for a_pos, i in enumerate(order):  # sweep by longitude: only near neighbours compared
        for j in order[a_pos + 1 :]:
            if pts[j][0] - pts[i][0] > deg:
                break
            if abs(pts[j][1] - pts[i][1]) <= deg:
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), min(g)))


def _footprint(r: dict[str, Any]) -> list[tuple[float, float]] | None:
    geom = r.get("geometry")
    if not geom:
        return None
    import shapely

    g = shapely.from_wkb(geom)
    if g.geom_type != "Polygon":
        return None
    return [(float(x), float(y)) for x, y in g.exterior.coords]


def _box(rows: Sequence[dict[str, Any]], idx: Sequence[int]) -> tuple[float, float, float, float]:
    """A square-ish lon/lat window around the cluster's footprints, with a margin."""
    xs, ys = [], []
    for i in idx:
        fp = _footprint(rows[i]) or [(rows[i]["center_lon"], rows[i]["center_lat"])]
        xs += [p[0] for p in fp]
        ys += [p[1] for p in fp]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys), 0.02) * 0.6
    return cx - half, cx + half, cy - half, cy + half


def _draw_land(ax: Any) -> None:
    from matplotlib.patches import Polygon

    for ring in land_rings():
        ax.add_patch(
            Polygon(ring, closed=True, facecolor="#e8dfc8", edgecolor="#9c8f73", linewidth=0.5)
        )


def coverage_png(rows: Sequence[dict[str, Any]], title: str, dpi: int = 100) -> bytes:
    """The coverage PNG of the given index rows (``center_lon``/``center_lat``/``split``,
    ``geometry`` footprints for the zooms)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon, Rectangle

    every = clusters(rows) if rows else []
    groups = every[:MAX_ZOOMS]
    if len(every) > MAX_ZOOMS:
        title += f"\n{len(every)} clusters; zooms on the {MAX_ZOOMS} largest"
    zoom = bool(groups)
    fig = plt.figure(figsize=(12, 9.6 if zoom else 6.4))
    grid = fig.add_gridspec(
        2 if zoom else 1, max(len(groups), 1), height_ratios=[1.45, 1] if zoom else None
    )
    ax = fig.add_subplot(grid[0, :])
    ax.set_facecolor("#d4e6f5")
    _draw_land(ax)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.tick_params(labelsize=10)
    ax.grid(color="white", linewidth=0.6, alpha=0.7)
    ax.axhline(0, color="#7f9bb8", linewidth=0.8)
    ax.set_xlabel("longitude (°)", fontsize=11)
    ax.set_ylabel("latitude (°)", fontsize=11)
    splits = sorted({r["split"] for r in rows})
    for split in splits:
        pts = [(r["center_lon"], r["center_lat"]) for r in rows if r["split"] == split]
        xs, ys = zip(*pts) if pts else ((), ())
        ax.scatter(
            xs,
            ys,
            s=60,
            color=SPLIT_COLORS.get(split, "k"),
            edgecolor="k",
            linewidth=0.6,
            label=f"{split}: {len(pts)} samples",
            zorder=3,
        )
    for k, idx in enumerate(groups):
        x0, x1, y0, y1 = _box(rows, idx)
        pad = 2.5  # a cluster of one grid cell is far below a pixel at world scale
        ax.add_patch(
            Rectangle(
                (x0 - pad, y0 - pad),
                x1 - x0 + 2 * pad,
                y1 - y0 + 2 * pad,
                fill=False,
                edgecolor="crimson",
                linewidth=1.4,
                zorder=4,
            )
        )
        ax.annotate(
            LETTERS[k],
            (x1 + pad, y1 + pad),
            xytext=(3, 3),
            textcoords="offset points",
            color="crimson",
            fontsize=13,
            fontweight="bold",
            zorder=5,
        )
    if splits:
        ax.legend(loc="lower left", fontsize=11, framealpha=0.9)
    ax.set_title(title, fontsize=14)
    for k, idx in enumerate(groups):
        z = fig.add_subplot(grid[1, k])
        x0, x1, y0, y1 = _box(rows, idx)
        z.set_facecolor("#f4f4f4")
        for i in idx:
            r = rows[i]
            color = SPLIT_COLORS.get(r["split"], "k")
            fp = _footprint(r)
            if fp:
                z.add_patch(
                    Polygon(fp, closed=True, facecolor=color, alpha=0.35, edgecolor=color, lw=1.0)
                )
            z.plot(r["center_lon"], r["center_lat"], "o", ms=4, color=color, mec="k", mew=0.4)
        lon = sum(rows[i]["center_lon"] for i in idx) / len(idx)
        lat = sum(rows[i]["center_lat"] for i in idx) / len(idx)
        z.set_xlim(x0, x1)
        z.set_ylim(y0, y1)
        # a degree of longitude is cos(lat) of a degree of latitude: footprints stay square
        z.set_aspect(1.0 / max(math.cos(math.radians(lat)), 0.05), adjustable="box")
        z.tick_params(labelsize=9)
        z.ticklabel_format(useOffset=False)
        n_split = ", ".join(
            f"{s} {sum(rows[i]['split'] == s for i in idx)}"
            for s in splits
            if any(rows[i]["split"] == s for i in idx)
        )
        z.set_title(
            f"{LETTERS[k]}: {len(idx)} samples ({n_split})\nnear lat {lat:.2f}°, lon {lon:.2f}°",
            fontsize=11,
            color="crimson",
        )
        z.set_xlabel("longitude (°)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
