"""TerraMind v1's view of the registry: its modality keys, band names and pretraining statistics
per registry modality (a data table for interop), and the lookups both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

from terraloom.schemas.modality_types import Modality
from terraloom.schemas.registry import (
    FSQ_IMAGE_LEVELS,
    FSQ_LULC_LEVELS,
    UnknownModalityError,
    get_modality,
)

__all__ = [
    "TERRAMIND_V1",
    "TerraMindModality",
    "terramind_key_to_modality",
    "terramind_modality",
]


@dataclass(frozen=True)
class TerraMindModality:
    """How TerraMind v1 (terratorch 1.2.11) sees one registry modality.

    ``pixel_key`` / ``token_key`` are its ``MODALITY_INFO`` keys at the two scales;
    ``bands`` its band names in its channel order (the same order as the registry's
    bands, which :func:`terramind_modality` checks); ``mean``/``std`` its v1 pretraining
    statistics (``v1_pretraining_mean``/``_std``), which its tokenizers and patch
    embeddings were trained on, so pixels fed to imported weights or to its tokenizers
    are standardised with these, not with the registry's rounded values. ``tokenizer``
    names its terratorch tokenizer and ``tokenizer_channels`` that tokenizer's input
    channels (LULC: one-hot over ``lulc_channels``).
    """

    modality: str
    pixel_key: str | None
    token_key: str | None
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    vocab_size: int | None = None
    fsq_levels: tuple[int, ...] = ()
    tokenizer: str | None = None
    tokenizer_channels: int = 0
    #: LULC only: TerraMind one-hot channel per registry class index (nodata -> channel 0).
    lulc_channels: tuple[int, ...] = ()


_S2L2A_TM_BANDS = (
    "COASTAL_AEROSOL",
    "BLUE",
    "GREEN",
    "RED",
    "RED_EDGE_1",
    "RED_EDGE_2",
    "RED_EDGE_3",
    "NIR_BROAD",
    "NIR_NARROW",
    "WATER_VAPOR",
    "SWIR_1",
    "SWIR_2",
)
_S2L2A_TM_MEAN = (
    1390.458,
    1503.317,
    1718.197,
    1853.91,
    2199.1,
    2779.975,
    2987.011,
    3083.234,
    3132.22,
    3162.988,
    2424.884,
    1857.648,
)
_S2L2A_TM_STD = (
    2106.761,
    2141.107,
    2038.973,
    2134.138,
    2085.321,
    1889.926,
    1820.257,
    1871.918,
    1753.829,
    1797.379,
    1434.261,
    1334.311,
)

#: TerraMind v1's view of the registry. GEO and CAPTION are absent on purpose: TerraMind's
#: coordinates and captions use a 30,000-id WordPiece vocabulary that terraloom's GEO bins
#: (2,160) and caption vocabulary (8,192) do not map onto, so interop leaves them out.
TERRAMIND_V1: tuple[TerraMindModality, ...] = (
    TerraMindModality(
        "S2L1C",
        "untok_sen2l1c@224",
        None,
        (*_S2L2A_TM_BANDS[:10], "CIRRUS", *_S2L2A_TM_BANDS[10:]),
        (
            2357.089,
            2137.385,
            2018.788,
            2082.986,
            2295.651,
            2854.537,
            3122.849,
            3040.56,
            3306.481,
            1473.847,
            506.07,
            2472.825,
            1838.929,
        ),
        (
            1624.683,
            1675.806,
            1557.708,
            1833.702,
            1823.738,
            1733.977,
            1732.131,
            1679.732,
            1727.26,
            1024.687,
            442.165,
            1331.411,
            1160.419,
        ),
    ),
    TerraMindModality(
        "S2L2A",
        "untok_sen2l2a@224",
        "tok_sen2l2a@224",
        _S2L2A_TM_BANDS,
        _S2L2A_TM_MEAN,
        _S2L2A_TM_STD,
        15360,
        FSQ_IMAGE_LEVELS,
        "terramind_v1_tokenizer_s2l2a",
        12,
    ),
    TerraMindModality(
        "S2RGB",
        "untok_sen2rgb@224",
        None,
        ("RED", "GREEN", "BLUE"),
        (87.271, 80.931, 66.667),
        (58.767, 47.663, 42.631),
    ),
    TerraMindModality(
        "S1GRD",
        "untok_sen1grd@224",
        "tok_sen1grd@224",
        ("VV", "VH"),
        (-12.599, -20.293),
        (5.195, 5.890),
        15360,
        FSQ_IMAGE_LEVELS,
        "terramind_v1_tokenizer_s1grd",
        2,
    ),
    TerraMindModality(
        "S1RTC",
        "untok_sen1rtc@224",
        "tok_sen1rtc@224",
        ("VV", "VH"),
        (-10.93, -17.329),
        (4.391, 4.459),
        15360,
        FSQ_IMAGE_LEVELS,
        "terramind_v1_tokenizer_s1rtc",
        2,
    ),
    TerraMindModality(
        "DEM",
        "untok_dem@224",
        "tok_dem@224",
        ("DEM",),
        (670.665,),
        (951.272,),
        15360,
        FSQ_IMAGE_LEVELS,
        "terramind_v1_tokenizer_dem",
        1,
    ),
    TerraMindModality(
        "LULC",
        None,
        "tok_lulc@224",
        ("LULC",),
        (0.0,),
        (1.0,),
        4375,
        FSQ_LULC_LEVELS,
        "terramind_v1_tokenizer_lulc",
        10,
        lulc_channels=(1, 2, 3, 4, 5, 6, 7, 8, 9),
    ),
    TerraMindModality(
        "NDVI",
        None,
        "tok_ndvi@224",
        ("NDVI",),
        (0.327,),
        (0.322,),
        15360,
        FSQ_IMAGE_LEVELS,
        "terramind_v1_tokenizer_ndvi",
        1,
    ),
)
_TM_BY_NAME = {t.modality: t for t in TERRAMIND_V1}


def terramind_modality(name: str | Modality) -> TerraMindModality:
    """TerraMind v1's view of a registry modality; ``KeyError`` (one line) if it has none."""
    m = get_modality(name)
    try:
        return _TM_BY_NAME[m.name]
    except KeyError:
        raise UnknownModalityError(
            f"{m.name} has no TerraMind v1 counterpart; TerraMind modalities: {', '.join(_TM_BY_NAME)}"
        ) from None


def terramind_key_to_modality(key: str) -> tuple[str, bool] | None:
    """TerraMind ``MODALITY_INFO`` key -> (registry name, is pixel scale), or None if unmapped."""
    for t in TERRAMIND_V1:
        if key == t.pixel_key:
            return t.modality, True
        if key == t.token_key:
            return t.modality, False
    return None
