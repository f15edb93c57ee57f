"""Which items cover a sample's footprint: the fewest, deterministically (greedy, then pruned).

Shared by every modality's matching rule; pure geometry on :class:`SourceItem` footprints.
"""

from __future__ import annotations

from collections.abc import Sequence

from shapely.geometry.base import BaseGeometry

from terraloom.pipeline.sources.base import SourceItem


def covering_set(
    items: Sequence[SourceItem],
    footprint: BaseGeometry,
    tolerance: float = 1e-5,
    prefer_epsg: int | None = None,
) -> tuple[SourceItem, ...] | None:
    """Fewest items (greedy, then pruned) whose geometries cover the footprint, or None.

    One item is taken whenever one covers alone (MGRS tiles overlap), the first by id, so
    results are deterministic. With ``prefer_epsg`` (the sample's zone) items in that
    projection are tried first: on zone boundaries the same ground is tiled in both zones,
    and a tile on the sample's own 10 m lattice needs no resampling.
    """
    if not items:
        return None
    if prefer_epsg is not None:
        same = [it for it in items if it.epsg == prefer_epsg]
        if same and len(same) < len(items):
            cover = covering_set(same, footprint, tolerance)
            if cover is not None:
                return cover
    area = footprint.area
    if area <= 0:
        return None
    slack = area * tolerance
    ordered = sorted(items, key=lambda it: it.id)
    overlaps = [(it.geometry.intersection(footprint).area, it) for it in ordered]
    singles = [it for a, it in overlaps if a >= area - slack]
    if singles:
        return (singles[0],)
    remaining = footprint
    chosen: list[SourceItem] = []
    pool = [it for a, it in overlaps if a > 0]
    while remaining.area > slack:
        gains = [(remaining.intersection(it.geometry).area, it) for it in pool if it not in chosen]
        if not gains:
            return None
        gain, best = max(gains, key=lambda t: t[0])
        if gain <= 0:
            return None
        chosen.append(best)
        remaining = remaining.difference(best.geometry)
    # Drop items the others already cover.
    for it in list(chosen):
        rest = [o for o in chosen if o is not it]
        if rest and _uncovered(footprint, rest) <= slack:
            chosen = rest
    return tuple(sorted(chosen, key=lambda it: it.id))


def _uncovered(footprint: BaseGeometry, items: Sequence[SourceItem]) -> float:
    remaining = footprint
    for it in items:
        remaining = remaining.difference(it.geometry)
    return remaining.area
