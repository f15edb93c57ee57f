"""Class legends and masks: the LULC legend (values, names, colours), Sentinel-2 SCL
cloud/shadow values, the corpus cloud-mask values and the ESA WorldCover -> LULC mapping.

Data tables plus the two lookups between legend values and model class indices; kept apart
from the registry so sources, quality rules and renderers can use a legend without the
whole registry.
"""

from __future__ import annotations

import numpy as np

from terraloom.schemas.modality_types import Display, DisplayKind

__all__ = [
    "CLOUD_MASK_CLEAR",
    "CLOUD_MASK_CLOUD",
    "CLOUD_MASK_DISPLAY",
    "CLOUD_MASK_NODATA",
    "CLOUD_MASK_SHADOW",
    "ESA_WORLDCOVER_TO_LULC",
    "LULC_CLASSES",
    "LULC_CLASS_NAMES",
    "LULC_COLORS",
    "SCL_CLOUD_SHADOW",
    "SCL_NODATA",
    "index_to_lulc",
    "lulc_to_index",
]

#: Esri 10 m land cover (io-lulc-9-class) legend, nodata 0. Model class index = position.
LULC_CLASSES: tuple[int, ...] = (1, 2, 4, 5, 7, 8, 9, 10, 11)
LULC_CLASS_NAMES: tuple[str, ...] = (
    "water",
    "trees",
    "flooded vegetation",
    "crops",
    "built area",
    "bare ground",
    "snow/ice",
    "clouds",
    "rangeland",
)
#: The legend's display colours (Esri's palette), by class value: quicklooks, panels, reports.
LULC_COLORS: dict[int, tuple[int, int, int]] = {
    1: (65, 155, 223),
    2: (57, 125, 73),
    4: (122, 135, 198),
    5: (228, 150, 53),
    7: (196, 40, 27),
    8: (165, 155, 143),
    9: (168, 235, 255),
    10: (97, 97, 97),
    11: (227, 226, 195),
}
#: Sentinel-2 scene classification (SCL) values that count as cloud or shadow.
SCL_CLOUD_SHADOW: tuple[int, ...] = (3, 8, 9, 10)
SCL_NODATA = 0

#: Values of the corpus ``cloud_mask`` array (derived from SCL by the pipeline).
CLOUD_MASK_CLEAR = 0
CLOUD_MASK_CLOUD = 1
CLOUD_MASK_SHADOW = 2
CLOUD_MASK_NODATA = 255
CLOUD_MASK_DISPLAY = Display(
    DisplayKind.CLASSES,
    ("cloud_mask",),
    classes=(
        (CLOUD_MASK_CLEAR, "clear", (40, 120, 40)),
        (CLOUD_MASK_CLOUD, "cloud", (245, 245, 245)),
        (CLOUD_MASK_SHADOW, "shadow", (60, 60, 60)),
    ),
)
"""The cloud mask's legend (not a modality of the registry, but drawn next to them)."""


def lulc_to_index(values: np.ndarray) -> np.ndarray:
    """Esri legend values -> model class index 0..8; nodata (0) and unknowns -> 255."""
    lut = np.full(256, 255, np.uint8)
    for i, v in enumerate(LULC_CLASSES):
        lut[v] = i
    return lut[np.asarray(values, np.uint8)]


def index_to_lulc(index: np.ndarray) -> np.ndarray:
    """Model class index 0..8 -> Esri legend value; 255 -> nodata 0."""
    lut = np.zeros(256, np.uint8)
    lut[: len(LULC_CLASSES)] = LULC_CLASSES
    return lut[np.asarray(index, np.uint8)]


#: ESA WorldCover (10 m, 2020/2021, codes 10..100) -> the LULC legend (Esri 9-class values).
#: Each ESA class goes to the Esri class whose definition contains it: shrubland, grassland and
#: moss/lichen are Esri's "rangeland" (open, low or sparse vegetation), herbaceous wetland and
#: mangroves its "flooded vegetation". Esri's "clouds" (10) has no ESA counterpart. Any other
#: code (0 = ESA nodata) becomes LULC nodata.
ESA_WORLDCOVER_TO_LULC: tuple[tuple[int, int], ...] = (
    (10, 2),  # tree cover -> trees
    (20, 11),  # shrubland -> rangeland
    (30, 11),  # grassland -> rangeland
    (40, 5),  # cropland -> crops
    (50, 7),  # built-up -> built area
    (60, 8),  # bare / sparse vegetation -> bare ground
    (70, 9),  # snow and ice -> snow/ice
    (80, 1),  # permanent water bodies -> water
    (90, 4),  # herbaceous wetland -> flooded vegetation
    (95, 4),  # mangroves -> flooded vegetation
    (100, 11),  # moss and lichen -> rangeland
)
