"""Which source each modality of a corpus came from, read off its plan.

A plan's scenes name their STAC collection and their asset hrefs; an ``ee://`` href means
Earth Engine served the pixels, in its own rendition of the product (see
``schemas.modalities.EARTH_ENGINE``: harmonised S2 DN, orthorectified S1 GRD in dB, ...).
The build records the result in each split store's attributes (``modality_sources``) and in
its manifest, so a corpus says where every modality came from without its plan.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from terraloom.schemas.modalities import EARTH_ENGINE

__all__ = ["modality_sources", "scene_source"]


def scene_source(collection: str | None, href: str | None) -> str:
    """``earthengine:<Earth Engine collection>`` for an ``ee://`` scene, else
    ``stac:<collection>`` (STAC API, static catalog or the embedded world)."""
    if href is not None and href.startswith("ee://"):
        conv = EARTH_ENGINE.get(collection or "")
        image = href[len("ee://") :]
        return f"earthengine:{conv.collection if conv else image.rsplit('/', 1)[0]}"
    return f"stac:{collection}"


def modality_sources(plan: pa.Table) -> dict[str, list[str]]:
    """Modality -> the sorted sources its planned scenes come from (columnar: a plan of
    millions of rows is not turned into Python objects)."""
    if "scenes" not in plan.column_names or plan.num_rows == 0:
        return {}
    scenes = pc.list_flatten(plan["scenes"])
    if len(scenes) == 0:
        return {}
    scenes = scenes.combine_chunks() if isinstance(scenes, pa.ChunkedArray) else scenes
    first = pc.list_element(scenes.field("assets"), 0)
    table = pa.table(
        {
            "modality": scenes.field("modality"),
            "collection": scenes.field("collection"),
            "ee": pc.starts_with(pc.fill_null(first.field("href"), ""), "ee://"),
            "href": first.field("href"),
        }
    )
    kinds = table.group_by(["modality", "collection", "ee"]).aggregate([("href", "min")])
    out: dict[str, set[str]] = {}
    for row in kinds.to_pylist():
        href = row["href_min"] if row["ee"] else None
        out.setdefault(str(row["modality"]), set()).add(scene_source(row["collection"], href))
    return {m: sorted(v) for m, v in sorted(out.items())}
