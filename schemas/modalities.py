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

# Each part names its public API in its own ``__all__``; this module re-exports the six
# lists as they are, so a name added to a part is importable from here without a second list.
from terraloom.schemas import conventions as _conventions
from terraloom.schemas import legends as _legends
from terraloom.schemas import modality_types as _modality_types
from terraloom.schemas import reflectance as _reflectance
from terraloom.schemas import registry as _registry
from terraloom.schemas import terramind as _terramind
from terraloom.schemas.conventions import *  # noqa: F403
from terraloom.schemas.legends import *  # noqa: F403
from terraloom.schemas.modality_types import *  # noqa: F403
from terraloom.schemas.reflectance import *  # noqa: F403
from terraloom.schemas.registry import *  # noqa: F403
from terraloom.schemas.terramind import *  # noqa: F403

__all__ = [
    *_modality_types.__all__,
    *_registry.__all__,
    *_legends.__all__,
    *_reflectance.__all__,
    *_conventions.__all__,
    *_terramind.__all__,
]
