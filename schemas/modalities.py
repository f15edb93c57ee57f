"""The modality registry's public face: every name of the registry, its types, legends,
Sentinel-2 reflectance convention, source conventions and TerraMind table, importable from
one place (``from terraloom.schemas.modalities import get_modality, LULC_CLASSES``).

The contents live in modules that each hold one idea:

- :mod:`~terraloom.schemas.modality_types`: the dataclasses and enums a modality is made of;
- :mod:`~terraloom.schemas.registry`: ``REGISTRY`` and the lookups by name, scale, layout;
- :mod:`~terraloom.schemas.legends`: LULC, SCL and cloud-mask legends, WorldCover mapping;
- :mod:`~terraloom.schemas.reflectance`: the S2 DN convention and the meaning of reflectance;
- :mod:`~terraloom.schemas.conventions`: per-collection source and Earth Engine conventions;
- :mod:`~terraloom.schemas.terramind`: TerraMind v1's view of the registry.
"""

from __future__ import annotations

from terraloom.schemas.conventions import (
    CONVENTIONS,
    EARTH_ENGINE,
    VERTICAL_DATUMS,
    EarthEngineConvention,
    SourceConvention,
    ee_to_corpus,
    source_convention,
)
from terraloom.schemas.legends import (
    CLOUD_MASK_CLEAR,
    CLOUD_MASK_CLOUD,
    CLOUD_MASK_DISPLAY,
    CLOUD_MASK_NODATA,
    CLOUD_MASK_SHADOW,
    ESA_WORLDCOVER_TO_LULC,
    LULC_CLASS_NAMES,
    LULC_CLASSES,
    LULC_COLORS,
    SCL_CLOUD_SHADOW,
    SCL_NODATA,
    index_to_lulc,
    lulc_to_index,
)
from terraloom.schemas.modality_types import (
    CROP_PX,
    PATCH_PX,
    RESOLUTION_M,
    SAMPLE_PX,
    Band,
    Display,
    DisplayKind,
    Layout,
    Modality,
    Resampling,
    Scale,
    TokenizerKind,
)
from terraloom.schemas.reflectance import (
    S2_BOA_OFFSET,
    S2_CONVENTION,
    S2_DN_SCALE,
    S2_STORED_OFFSET_DN,
    reflectance,
    s2_harmonise_params,
    s2_reflectance_params,
)
from terraloom.schemas.registry import (
    CAPTION_MAX_BYTES,
    CAPTION_VOCAB,
    FSQ_IMAGE_LEVELS,
    FSQ_LULC_LEVELS,
    GEO_BIN_DEG,
    GEO_VOCAB,
    MODALITY_NAMES,
    REGISTRY,
    UnknownModalityError,
    get_modality,
    modalities,
)
from terraloom.schemas.terramind import (
    TERRAMIND_V1,
    TerraMindModality,
    terramind_key_to_modality,
    terramind_modality,
)

__all__ = [
    "CAPTION_MAX_BYTES",
    "CAPTION_VOCAB",
    "CLOUD_MASK_CLEAR",
    "CLOUD_MASK_CLOUD",
    "CLOUD_MASK_DISPLAY",
    "CLOUD_MASK_NODATA",
    "CLOUD_MASK_SHADOW",
    "CONVENTIONS",
    "CROP_PX",
    "EARTH_ENGINE",
    "ESA_WORLDCOVER_TO_LULC",
    "FSQ_IMAGE_LEVELS",
    "FSQ_LULC_LEVELS",
    "GEO_BIN_DEG",
    "GEO_VOCAB",
    "LULC_CLASSES",
    "LULC_CLASS_NAMES",
    "LULC_COLORS",
    "MODALITY_NAMES",
    "PATCH_PX",
    "REGISTRY",
    "RESOLUTION_M",
    "S2_BOA_OFFSET",
    "S2_CONVENTION",
    "S2_DN_SCALE",
    "S2_STORED_OFFSET_DN",
    "SAMPLE_PX",
    "SCL_CLOUD_SHADOW",
    "SCL_NODATA",
    "TERRAMIND_V1",
    "VERTICAL_DATUMS",
    "Band",
    "Display",
    "DisplayKind",
    "EarthEngineConvention",
    "Layout",
    "Modality",
    "Resampling",
    "Scale",
    "SourceConvention",
    "TerraMindModality",
    "TokenizerKind",
    "UnknownModalityError",
    "ee_to_corpus",
    "get_modality",
    "index_to_lulc",
    "lulc_to_index",
    "modalities",
    "reflectance",
    "s2_harmonise_params",
    "s2_reflectance_params",
    "source_convention",
    "terramind_key_to_modality",
    "terramind_modality",
]
