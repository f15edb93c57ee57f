"""terraloom render: how every stage draws modalities for people.

At the bottom of the stage order (beside ``terraloom.storage``, above only
``terraloom.schemas``), so the pipeline's quicklooks, the tokenizer reports and the
model's generation panels share one renderer and the registry's display ranges.
"""

from __future__ import annotations

from terraloom.render.colour import NODATA_RGB, display_for, nodata_mask, to_rgb, value_range
from terraloom.render.figure import Panel, draw_figure, fit, write_figure

__all__ = [
    "NODATA_RGB",
    "Panel",
    "display_for",
    "draw_figure",
    "fit",
    "nodata_mask",
    "to_rgb",
    "value_range",
    "write_figure",
]
