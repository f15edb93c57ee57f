"""Gallery pictures of the dataset card: one sample's modalities in a grid a web page can show.

``quicklook`` lays a sample's panels out in one strip, good on a screen; a dataset card is
shown about 900 px wide, where a strip of nine panels shrinks to thumbnails with unreadable
keys. The gallery draws the same panels (``quicklook.sample_panels``: the registry's display,
colour bars, legends) in rows of :data:`COLUMNS`, with a title that says which sample it is
(split, grid cell, place, acquisition date) and its caption.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Panels per row: ~180 px per panel at the card's display width, keys still legible.
COLUMNS = 5
DPI = 100


def gallery_title(r: dict[str, Any]) -> str:
    when = r.get("time_S2L2A") or r.get("time_S2L1C")
    parts = [
        str(r["sample_id"]),
        f"{r['split']} split",
        f"cell {r['cell_id']}",
        f"lat {float(r['center_lat']):.3f}, lon {float(r['center_lon']):.3f}",
        f"EPSG:{int(r['epsg'])}",
    ]
    if when is not None:
        parts.append(f"S2 {when:%Y-%m-%d}")
    caption = r.get("caption") or ""
    return "  |  ".join(parts) + (f"\n{caption}" if caption else "")


def render_gallery_sample(group: Any, r: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the gallery PNG of index row ``r`` (its split's store is ``group``)."""
    from terraloom.pipeline.quicklook import sample_panels
    from terraloom.render import write_figure

    panels = sample_panels(group, int(r["row"]))
    rows = [panels[i : i + COLUMNS] for i in range(0, len(panels), COLUMNS)]
    return write_figure(path, rows, gallery_title(r), dpi=DPI)
