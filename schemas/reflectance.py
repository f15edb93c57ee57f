"""Sentinel-2 digital numbers and reflectance: the one DN convention of the corpus and the
one meaning of "reflectance" in terraloom.

Every source is harmonised onto :data:`S2_CONVENTION` when read (:func:`s2_harmonise_params`),
and everything that needs physical values (NDVI, evaluation) goes through :func:`reflectance`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "S2_BOA_OFFSET",
    "S2_CONVENTION",
    "S2_DN_SCALE",
    "S2_STORED_OFFSET_DN",
    "reflectance",
    "s2_harmonise_params",
    "s2_reflectance_params",
]

S2_DN_SCALE = 10000.0
"""Sentinel-2 digital numbers per unit reflectance (ESA: reflectance = DN / 10000 + offset)."""
S2_BOA_OFFSET = -0.1
"""Reflectance offset of Sentinel-2 products from processing baseline 04.00 on (-1000 DN)."""


def s2_reflectance_params(
    scale: float | None, offset: float | None, processing_baseline: str | None
) -> tuple[float, float]:
    """DN -> reflectance (scale, offset): the asset's ``raster:bands`` when given, else
    the ESA convention (1 / S2_DN_SCALE, and S2_BOA_OFFSET from processing baseline 04.00 on)."""
    if scale is not None:
        return float(scale), float(offset or 0.0)
    off = 0.0
    if processing_baseline:
        try:
            off = S2_BOA_OFFSET if float(processing_baseline) >= 4.0 else 0.0
        except ValueError:
            off = 0.0
    return 1 / S2_DN_SCALE, off


S2_STORED_OFFSET_DN = 1000
"""The one Sentinel-2 DN convention of the corpus (L1C and L2A): ``DN = 10000 * reflectance +
1000``, i.e. the products of processing baseline 04.00 on as ESA and Planetary Computer
publish them. Items published otherwise (Earth Search's ``earthsearch:boa_offset_applied``,
baselines before 04.00, any other ``raster:bands`` scale/offset) are harmonised onto it when
read, so every stored S2 value, and everything derived from it, means the same reflectance."""
S2_CONVENTION = "dn = 10000 * reflectance + 1000"
"""How the corpus records :data:`S2_STORED_OFFSET_DN` (store attributes, index ``s2_convention``)."""


def s2_harmonise_params(
    scale: float | None, offset: float | None, processing_baseline: str | None
) -> tuple[float, float]:
    """(gain, bias) taking a published Sentinel-2 DN onto the corpus convention:
    ``stored = DN * gain + bias`` with ``reflectance = DN * scale + offset`` as published
    (:func:`s2_reflectance_params`). (1, 0) for products already in the convention, exactly,
    so their values pass through bit for bit."""
    sc, off = s2_reflectance_params(scale, offset, processing_baseline)
    gain = round(sc * S2_DN_SCALE, 9)
    bias = round(off * S2_DN_SCALE + S2_STORED_OFFSET_DN, 6)
    return gain, bias


def reflectance(dn: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """Sentinel-2 DN -> physical reflectance, ``DN * scale + offset`` (float32): the one
    meaning of "reflectance" in terraloom (NDVI is computed from it). The corpus keeps DN."""
    return dn.astype(np.float32) * np.float32(scale) + np.float32(offset)
