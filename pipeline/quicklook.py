"""Quicklook PNGs: one per sample, every stored modality side by side.

People spot a misregistered radar image or a flipped DEM faster than any metric does, so
each panel shows a modality the way a human reads it, in the registry's display
(``terraloom.render``: S2 true colour on a fixed DN range, S1 VV in dB, DEM in metres
and NDVI with colour bars, LULC and the cloud mask with legends, a labelled placeholder
for a modality the sample lacks); GEO, the CRS and the caption go into the title.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from terraloom.render import Panel, nodata_mask, write_figure
from terraloom.schemas.modalities import Layout, get_modality
from terraloom.storage.location import Location


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


def sample_panels(group: Any, row: int) -> list[Panel]:
    """The panels of one corpus row; a modality with no valid pixel is a placeholder."""
    panels = []
    for name in panel_names(group):
        x = np.asarray(group[name][row])
        missing = bool(nodata_mask(name, x).all())
        panels.append(Panel(name, None if missing else x, note="all nodata" if missing else ""))
    return panels


def render_sample(
    group: Any,
    row: int,
    path: str | os.PathLike[str],
    *,
    sample_id: str | None = None,
    dpi: int = 60,
) -> Path:
    """Render one corpus row of a split store to a PNG; returns the path."""
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
    return write_figure(
        path,
        [sample_panels(group, row)],
        "  |  ".join(title) + (f"\n{caption}" if caption else ""),
        dpi=dpi,
    )


def render_corpus(
    corpus: str | os.PathLike[str] | Location,
    dest: str | os.PathLike[str] | Location,
    *,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    sample_ids: Sequence[str] | None = None,
    dpi: int = 60,
    progress: bool = True,
) -> list[Path | Location]:
    """One PNG per accepted sample (index.parquet order): ``dest/<split>/<sample_id>.png``.

    ``corpus`` and ``dest`` are storage locations; a remote ``dest`` gets each PNG drawn
    into a local temp folder and uploaded (matplotlib writes files), and is returned as
    ``Location`` objects, a local one as ``Path`` objects."""
    if limit is not None and limit < 0:  # a slice would count from the end
        raise ValueError(f"limit must be >= 0, got {limit}")
    import tempfile

    from terraloom.pipeline.corpus_writer import open_split_store
    from terraloom.schemas.tables import read_table

    corpus = Location.parse(corpus)
    out = Location.parse(dest)
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
    paths: list[Path | Location] = []
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="terraloom-quicklook-") as scratch:
        for r in tqdm(
            index, unit="sample", desc="quicklook", disable=not progress, file=sys.stderr
        ):
            split = r["split"]
            if split not in groups:
                groups[split] = open_split_store(corpus, split)
            rel = f"{split}/{r['sample_id']}.png"
            target = out / rel
            local = target.local_path if target.is_local else Path(scratch) / "q.png"
            png = render_sample(
                groups[split], int(r["row"]), local, sample_id=r["sample_id"], dpi=dpi
            )
            if target.is_local:
                paths.append(png)
            else:
                target.write_bytes(png.read_bytes())
                paths.append(target)
    return paths
