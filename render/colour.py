"""Stored values -> display colours, one modality at a time, by the registry's ``Display``.

Pure NumPy (plus matplotlib's colour maps): the quicklooks, the generation panels and the
tokenizer reports all colour a modality through :func:`to_rgb`, so an S2 image, a DEM or
a land-cover map looks the same wherever it is shown, and a generated image compares by
eye with its reference.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from terraloom.schemas.modalities import (
    CLOUD_MASK_DISPLAY,
    Display,
    DisplayKind,
    Layout,
    get_modality,
)

NODATA_RGB = (0.5, 0.5, 0.5)
"""Colour of nodata pixels (and of unknown class values)."""
CLOUD_MASK = "cloud_mask"


def display_for(name: str) -> Display:
    """The registry's display of a modality (or of the corpus cloud mask)."""
    if name == CLOUD_MASK:
        return CLOUD_MASK_DISPLAY
    m = get_modality(name)
    if m.display is None or m.layout is not Layout.IMAGE:
        raise ValueError(f"{m.name} is not an image; it has no colour display")
    return m.display


def _bands(name: str, x: np.ndarray, display: Display) -> np.ndarray:
    """The displayed bands (k, y, x) of a stored value (band, y, x) or a mask (y, x)."""
    x = np.asarray(x)
    if x.ndim == 2:
        return x[None]
    if name == CLOUD_MASK:
        return x[:1]
    names = get_modality(name).band_names
    return x[[names.index(b) for b in display.bands]]


def nodata_mask(name: str, x: np.ndarray) -> np.ndarray:
    """(y, x) True where a displayed band is non-finite or the registry's nodata value."""
    display = display_for(name)
    b = _bands(name, x, display).astype(np.float64)
    bad = np.asarray(~np.isfinite(b).all(axis=0))
    if name != CLOUD_MASK:
        nodata = get_modality(name).nodata
        if nodata is not None and not np.isnan(nodata):
            bad |= (b == nodata).all(axis=0) if display.kind is DisplayKind.RGB else b[0] == nodata
    return bad


def value_range(name: str, arrays: Iterable[np.ndarray | None]) -> tuple[float, float]:
    """The range a SCALAR or RGB display maps: the registry's, or for a display without
    one (DEM) the finite data range over ``arrays``, so panels drawn together share it."""
    display = display_for(name)
    if display.vmin is not None and display.vmax is not None:
        return float(display.vmin), float(display.vmax)
    lo, hi = np.inf, -np.inf
    for a in arrays:
        if a is None:
            continue
        b = _bands(name, np.asarray(a), display).astype(np.float64)
        ok = np.isfinite(b) & ~nodata_mask(name, a)[None]
        if ok.any():
            lo, hi = min(lo, float(b[ok].min())), max(hi, float(b[ok].max()))
    if not np.isfinite(lo):
        return 0.0, 1.0
    return lo, max(hi, lo + 1.0)


def class_lut(display: Display) -> np.ndarray:
    """(256, 3) float32 colours by class value; values outside the legend are nodata grey."""
    lut = np.empty((256, 3), np.float32)
    lut[:] = NODATA_RGB
    for value, _, rgb in display.classes:
        lut[value] = np.asarray(rgb, np.float32) / 255
    return lut


def to_rgb(name: str, x: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """One modality's stored value (band, y, x), or the cloud mask (y, x), -> (y, x, 3)
    float32 in [0, 1]; nodata grey. ``limits`` overrides the range (see :func:`value_range`)."""
    import matplotlib

    display = display_for(name)
    x = np.asarray(x)
    b = _bands(name, x, display)
    bad = nodata_mask(name, x)
    if display.kind is DisplayKind.CLASSES:
        v = np.where(np.isfinite(b[0].astype(np.float64)), b[0], 0).astype(np.int64)
        rgb = class_lut(display)[np.clip(v, 0, 255)]
        rgb[(v < 0) | (v > 255)] = NODATA_RGB
    else:
        lo, hi = limits if limits is not None else value_range(name, [x])
        z = np.clip((b.astype(np.float32) - lo) / max(hi - lo, 1e-12), 0, 1)
        z = np.nan_to_num(z, nan=0.0)
        if display.kind is DisplayKind.RGB:
            rgb = np.moveaxis(z ** (1 / display.gamma), 0, -1).astype(np.float32)
        else:
            a, c = display.cmap_span
            cmap = matplotlib.colormaps[display.cmap]
            rgb = cmap(a + (c - a) * z[0])[..., :3].astype(np.float32)
    rgb[bad] = NODATA_RGB
    return rgb
