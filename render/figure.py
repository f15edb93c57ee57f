"""Figures of panels: a grid of modalities with their colour bars, legends and titles.

Every PNG terraloom writes for people (corpus quicklooks, generation panels, tokenizer
reports) is a grid of :class:`Panel` drawn by :func:`write_figure`: image modalities in
the registry's display (:mod:`terraloom.render.colour`), a colour bar with the unit for
scalar ones (DEM, S1, NDVI), a legend for classes (LULC, the cloud mask), GEO and captions
as text, and a labelled grey placeholder where a modality is missing, so a gap is seen as
a gap rather than read as a black image. Titles are wrapped to the panel width. Rendering
uses the Agg backend (no display).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terraloom.render.colour import (
    CLOUD_MASK,
    NODATA_RGB,
    display_for,
    to_rgb,
    value_range,
)
from terraloom.schemas.modalities import Display, DisplayKind, Layout, get_modality

#: Points per character of the sans-serif font, for wrapping titles to a width.
_CHAR_WIDTH = 0.55
_TITLE_PT = 9
_TEXT_PT = 8


@dataclass(frozen=True)
class Panel:
    """One cell of a figure.

    ``values``: (band, y, x) stored values of an image modality (or the (y, x) cloud mask),
    (lat, lon) for GEO, a string for CAPTION; ``None`` draws the missing-modality
    placeholder, with ``note`` saying why.
    """

    modality: str
    values: Any = None
    label: str = ""
    note: str = ""

    @property
    def is_image(self) -> bool:
        return self.modality == CLOUD_MASK or get_modality(self.modality).layout is Layout.IMAGE


def fit(text: str, width_in: float, points: float = _TITLE_PT, max_lines: int = 4) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``points`` (each of its
    own lines wrapped; at most ``max_lines``, the last one ending in an ellipsis if cut)."""
    width = max(8, int(width_in * 72 / (points * _CHAR_WIDTH)))
    lines = [w for part in text.split("\n") for w in (textwrap.wrap(part, width) or [""])]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1].rstrip() + "\u2026"
    return "\n".join(lines)


def _as_text(p: Panel) -> str:
    v = p.values
    if isinstance(v, str):
        return "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in v)
    if get_modality(p.modality).name == "GEO":
        lat, lon = (float(a) for a in np.asarray(v, np.float64).ravel()[:2])
        return f"lat {lat:.4f}\nlon {lon:.4f}"
    return str(v)


def _limits(rows: Sequence[Sequence[Panel]]) -> dict[str, tuple[float, float]]:
    """One value range per scalar/RGB modality for the whole figure."""
    by_name: dict[str, list[Any]] = {}
    for row in rows:
        for p in row:
            if p.values is not None and p.is_image:
                by_name.setdefault(p.modality, []).append(p.values)
    return {
        n: value_range(n, vs)
        for n, vs in by_name.items()
        if display_for(n).kind is not DisplayKind.CLASSES
    }


def _colormap(display: Display) -> Any:
    import matplotlib
    from matplotlib.colors import ListedColormap

    a, b = display.cmap_span
    return ListedColormap(matplotlib.colormaps[display.cmap](np.linspace(a, b, 256)))


def _key(fig: Any, ax: Any, name: str, panels: Sequence[Panel], limits: Any) -> None:
    """The colour bar, legend or band note of ``name``, under ``ax`` (the row's last panel
    of that modality); a legend lists the classes present in any of ``panels``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    display = display_for(name)
    if display.kind is DisplayKind.SCALAR:
        lo, hi = limits
        sm = ScalarMappable(Normalize(lo, hi), _colormap(display))
        # an inset under the image: the panel keeps the size of its neighbours
        cax = ax.inset_axes((0.05, -0.1, 0.9, 0.05))
        bar = fig.colorbar(sm, cax=cax, orientation="horizontal")
        bar.set_label(display.label, fontsize=_TEXT_PT - 1)
        bar.ax.tick_params(labelsize=_TEXT_PT - 2)
    elif display.kind is DisplayKind.CLASSES:
        present: set[int] = set()
        for p in panels:
            v = np.asarray(p.values, np.float64)
            present |= {int(c) for c in np.unique(v[np.isfinite(v)])}
        handles = [
            Patch(
                facecolor=(rgb[0] / 255, rgb[1] / 255, rgb[2] / 255), edgecolor="0.4", label=label
            )
            for value, label, rgb in display.classes
            if value in present
        ]
        if handles:
            ax.legend(
                handles=handles,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.01),
                fontsize=_TEXT_PT - 2,
                ncol=2,
                frameon=False,
                handlelength=1.0,
                columnspacing=0.8,
            )
    elif display.label:
        ax.set_xlabel(display.label, fontsize=_TEXT_PT - 1)


def _bare(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def draw_figure(rows: Sequence[Sequence[Panel]], title: str = "", *, panel_in: float = 2.4) -> Any:
    """The matplotlib ``Figure`` of ``rows`` of panels (see :func:`write_figure`)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if not n_rows or not n_cols:
        raise ValueError("a figure needs at least one panel")
    title_lines = fit(title, panel_in * n_cols, _TITLE_PT + 1, 6) if title else ""
    height = (panel_in + 1.2) * n_rows + 0.2 * (title_lines.count("\n") + 1 if title else 0)
    fig = plt.figure(figsize=(panel_in * n_cols, height), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    limits = _limits(rows)
    for r, row in enumerate(rows):
        last = {p.modality: i for i, p in enumerate(row) if p.values is not None and p.is_image}
        for c in range(n_cols):
            ax = axes[r][c]
            _bare(ax)
            if c >= len(row):
                ax.set_visible(False)
                continue
            p = row[c]
            head = f"{p.label}\n{p.modality}" if p.label else p.modality
            ax.set_title(fit(head, panel_in), fontsize=_TITLE_PT)
            if p.values is None:
                ax.set_facecolor(NODATA_RGB)
                note = f"no {p.modality}" + (f"\n{p.note}" if p.note else "")
                _centred_text(ax, fit(note, panel_in * 0.9, _TEXT_PT))
                ax.set_aspect("equal")
            elif not p.is_image:
                _centred_text(ax, fit(_as_text(p), panel_in * 0.95, _TEXT_PT, 12))
            else:
                rgb = to_rgb(p.modality, p.values, limits.get(p.modality))
                ax.imshow(rgb, interpolation="nearest")
                if last.get(p.modality) == c:
                    same = [q for q in row if q.modality == p.modality and q.values is not None]
                    _key(fig, ax, p.modality, same, limits.get(p.modality))
    if title:
        fig.suptitle(title_lines, fontsize=_TITLE_PT + 1)
    return fig


def _centred_text(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=_TEXT_PT, transform=ax.transAxes)


def write_figure(
    path: str | os.PathLike[str],
    rows: Sequence[Sequence[Panel]],
    title: str = "",
    *,
    dpi: int = 80,
    panel_in: float = 2.4,
) -> Path:
    """Draw ``rows`` of panels into one PNG; returns its path.

    Scalar modalities share one value range across the figure (a generated DEM and its
    reference on one colour scale); each row keys a modality once, under its last panel.
    """
    import matplotlib.pyplot as plt

    fig = draw_figure(rows, title, panel_in=panel_in)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
