"""The modality registry: one frozen dataclass per modality, the single source of truth.

Every stage (harvest, co-registration, tokenizers, model) reads band lists, dtypes,
nodata, resampling and normalisation from here instead of sniffing strings, so adding
or changing a modality is a one-place edit (ml-4m's string-keyed ``MODALITY_INFO`` is
the counter-example we avoid).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

SAMPLE_PX = 264
"""Side of a corpus sample in pixels (TerraMesh: 264 x 264 px at 10 m)."""
RESOLUTION_M = 10.0
"""Ground sampling distance of the common grid every modality is co-registered onto."""
CROP_PX = 224
"""Side of the model/tokenizer input crop cut from a sample."""
PATCH_PX = 16
"""Patch size of pixel embeddings and image tokenizers (one token per 16 x 16 px)."""


class Resampling(enum.StrEnum):
    """How a modality is brought onto the 10 m grid."""

    BILINEAR = "bilinear"
    CUBIC = "cubic"
    #: Bilinear in linear power, then converted to dB (SAR backscatter).
    BILINEAR_POWER_DB = "bilinear_power_db"
    NEAREST = "nearest"
    MODE = "mode"
    #: Derived on the 10 m grid from other modalities; never resampled.
    DERIVED = "derived"


class Scale(enum.Flag):
    """At which scale a modality enters the model."""

    PIXELS = enum.auto()
    TOKENS = enum.auto()
    BOTH = PIXELS | TOKENS


class TokenizerKind(enum.StrEnum):
    FSQ_VAE = "fsq_vae"  # continuous image -> FSQ codes
    FSQ_VAE_CLASSES = "fsq_vae_classes"  # one-hot classes -> FSQ codes
    GEO_BINS = "geo_bins"  # deterministic lat/lon bins
    WORDPIECE = "wordpiece"  # text


class Layout(enum.StrEnum):
    """Shape family of a modality's stored array."""

    IMAGE = "image"  # (sample, band, y, x)
    VECTOR = "vector"  # (sample, n) numbers, e.g. GEO lat/lon
    TEXT = "text"  # (sample, bytes) utf-8, zero padded


@dataclass(frozen=True)
class Band:
    """One band: its canonical name, STAC common name and asset keys per provider."""

    name: str
    common_name: str | None = None
    #: Asset key on Planetary Computer (and the embedded world).
    asset_key: str | None = None
    #: Asset key on Element84 Earth Search, where it differs.
    es_asset_key: str | None = None
    native_resolution_m: float | None = None


class DisplayKind(enum.StrEnum):
    """How a modality is drawn for people."""

    RGB = "rgb"  # three bands as red, green, blue over one value range
    SCALAR = "scalar"  # one band through a colour map, with a colour bar and unit
    CLASSES = "classes"  # class values in legend colours, with a legend


@dataclass(frozen=True)
class Display:
    """How people see a modality: one fixed stretch per modality, so panels of different
    samples, and a generated image next to its reference, compare by eye (a per-image
    stretch would hide a brightness error). Every renderer (quicklooks, generation panels,
    tokenizer reports) reads it from here.
    """

    kind: DisplayKind
    #: Bands shown: three for RGB, one for SCALAR / CLASSES.
    bands: tuple[str, ...]
    #: Value range mapped onto the colours; ``None``: the data's own range, shared by every
    #: panel of the modality in one figure (elevation spans metres to kilometres).
    vmin: float | None = None
    vmax: float | None = None
    cmap: str = "gray"
    #: Part of the colour map used (the terrain map's blue end is the sea, not low land).
    cmap_span: tuple[float, float] = (0.0, 1.0)
    #: Display gamma of RGB (values ** (1 / gamma) after the stretch).
    gamma: float = 1.0
    #: Colour-bar label with the unit, or the RGB band list.
    label: str = ""
    #: CLASSES: (value, name, (r, g, b)) per class; other values show as nodata.
    classes: tuple[tuple[int, str, tuple[int, int, int]], ...] = ()


@dataclass(frozen=True)
class Modality:
    """A modality of the corpus: where it comes from, how it is stored and modelled."""

    name: str
    description: str
    collections: tuple[str, ...]
    bands: tuple[Band, ...]
    dtype: str
    nodata: float | int | None
    native_resolution_m: float | None
    resampling: Resampling
    value_range: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scales: Scale
    tokenizer: TokenizerKind | None
    vocab_size: int | None
    layout: Layout = Layout.IMAGE
    patch_size: int = PATCH_PX
    derived_from: tuple[str, ...] = ()
    #: FSQ levels of the image tokenizer (product == vocab_size).
    fsq_levels: tuple[int, ...] = ()
    #: Class values (LULC legend) in model index order; empty for continuous modalities.
    classes: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    #: Fixed length of VECTOR / TEXT layouts (values or bytes per sample).
    length: int | None = None
    #: How it is drawn (image layouts); ``None``: shown as text (GEO, CAPTION).
    display: Display | None = None
    #: Vertical datum of stored heights (a :data:`VERTICAL_DATUMS` key); DEM only.
    vertical_datum: str | None = None
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def has_pixels(self) -> bool:
        return bool(self.scales & Scale.PIXELS)

    @property
    def has_tokens(self) -> bool:
        return bool(self.scales & Scale.TOKENS)

    @property
    def is_image(self) -> bool:
        return self.layout is Layout.IMAGE

    @property
    def is_derived(self) -> bool:
        return not self.collections

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(band, y, x) or (sample, band, y, x) stored values -> zero-mean unit-std float32,
        with nodata and non-finite values set to 0.

        The one pixel normaliser of the model's inputs (the training loader's patches and
        generation's pixel conditioning): 0 is the band mean, so a missing pixel adds nothing
        to a patch embedding instead of an extreme value.
        """
        raw = np.asarray(x)
        axis = 1 if raw.ndim == 4 else 0
        shape = [1] * raw.ndim
        shape[axis] = -1
        mean = np.asarray(self.mean, np.float32).reshape(shape)
        std = np.asarray(self.std, np.float32).reshape(shape)
        out = (raw.astype(np.float32) - mean) / std
        bad = ~np.isfinite(out)
        if self.nodata is not None and not (
            isinstance(self.nodata, float) and np.isnan(self.nodata)
        ):
            bad |= raw == self.nodata
        out[bad] = 0.0
        return out

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        axis = 1 if x.ndim == 4 else 0
        shape = [1] * x.ndim
        shape[axis] = -1
        mean = np.asarray(self.mean, np.float32).reshape(shape)
        std = np.asarray(self.std, np.float32).reshape(shape)
        return x.astype(np.float32) * std + mean


def _s2_bands(with_b10: bool) -> tuple[Band, ...]:
    spec = [
        ("B01", "coastal", "coastal", 60.0),
        ("B02", "blue", "blue", 10.0),
        ("B03", "green", "green", 10.0),
        ("B04", "red", "red", 10.0),
        ("B05", "rededge", "rededge1", 20.0),
        ("B06", "rededge", "rededge2", 20.0),
        ("B07", "rededge", "rededge3", 20.0),
        ("B08", "nir", "nir", 10.0),
        ("B8A", "nir08", "nir08", 20.0),
        ("B09", "nir09", "nir09", 60.0),
        ("B10", "cirrus", "cirrus", 60.0),
        ("B11", "swir16", "swir16", 20.0),
        ("B12", "swir22", "swir22", 20.0),
    ]
    return tuple(
        Band(name, common, name, es_key, res)
        for name, common, es_key, res in spec
        if with_b10 or name != "B10"
    )


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


def _s2_display() -> Display:
    """True colour over reflectance 0..0.3 (DN 1000..4000: the products of processing
    baseline 04.00 on carry the +1000 DN offset the corpus keeps)."""
    lo = -S2_BOA_OFFSET * S2_DN_SCALE
    return Display(
        DisplayKind.RGB,
        ("B04", "B03", "B02"),
        lo,
        lo + 0.3 * S2_DN_SCALE,
        gamma=1.4,
        label="B04 B03 B02, 1000-4000 DN",
    )


def _s1_display() -> Display:
    return Display(DisplayKind.SCALAR, ("VV",), -25.0, 0.0, "gray", label="VV backscatter (dB)")


FSQ_IMAGE_LEVELS = (8, 8, 8, 6, 5)
FSQ_LULC_LEVELS = (7, 5, 5, 5, 5)
GEO_BIN_DEG = 0.25
GEO_VOCAB = int(180 / GEO_BIN_DEG) + int(360 / GEO_BIN_DEG)  # lat bins then lon bins
CAPTION_MAX_BYTES = 512
CAPTION_VOCAB = 8192


def _prod(levels: tuple[int, ...]) -> int:
    return int(np.prod(levels))


REGISTRY: tuple[Modality, ...] = (
    Modality(
        name="S2L1C",
        description="Sentinel-2 Level-1C top-of-atmosphere reflectance, 13 bands",
        collections=("sentinel-2-l1c",),
        bands=_s2_bands(with_b10=True),
        dtype="uint16",
        nodata=0,
        native_resolution_m=10.0,
        resampling=Resampling.BILINEAR,
        value_range=(0, 65535),
        mean=(
            2357.1,
            2137.4,
            2018.8,
            2083.0,
            2295.7,
            2854.5,
            3122.8,
            3040.6,
            3306.5,
            1473.8,
            506.1,
            2472.8,
            1838.9,
        ),
        std=(
            1624.7,
            1675.8,
            1557.7,
            1833.7,
            1823.7,
            1734.0,
            1732.1,
            1679.7,
            1727.3,
            1024.7,
            442.2,
            1331.4,
            1160.4,
        ),
        scales=Scale.PIXELS,
        tokenizer=None,
        vocab_size=None,
        display=_s2_display(),
    ),
    Modality(
        name="S2L2A",
        description="Sentinel-2 Level-2A surface reflectance, 12 bands (no B10)",
        collections=("sentinel-2-l2a",),
        bands=_s2_bands(with_b10=False),
        dtype="uint16",
        nodata=0,
        native_resolution_m=10.0,
        resampling=Resampling.BILINEAR,
        value_range=(0, 65535),
        mean=(
            1390.5,
            1503.3,
            1718.2,
            1853.9,
            2199.1,
            2780.0,
            2987.0,
            3083.2,
            3132.2,
            3163.0,
            2424.9,
            1857.6,
        ),
        std=(
            2106.8,
            2141.1,
            2039.0,
            2134.1,
            2085.3,
            1889.9,
            1820.3,
            1871.9,
            1753.8,
            1797.4,
            1434.3,
            1334.3,
        ),
        scales=Scale.BOTH,
        tokenizer=TokenizerKind.FSQ_VAE,
        vocab_size=_prod(FSQ_IMAGE_LEVELS),
        fsq_levels=FSQ_IMAGE_LEVELS,
        extra={"scl_asset": "SCL", "es_scl_asset": "scl"},
        display=_s2_display(),
    ),
    Modality(
        name="S2RGB",
        description="True colour from S2L2A B04/B03/B02, per-sample 2-98% stretch",
        collections=(),
        bands=(Band("red", "red"), Band("green", "green"), Band("blue", "blue")),
        dtype="uint8",
        nodata=None,
        native_resolution_m=None,
        resampling=Resampling.DERIVED,
        value_range=(0, 255),
        mean=(87.27, 80.93, 66.67),
        std=(58.77, 47.66, 42.63),
        scales=Scale.PIXELS,
        tokenizer=None,
        vocab_size=None,
        derived_from=("S2L2A",),
        display=Display(DisplayKind.RGB, ("red", "green", "blue"), 0.0, 255.0, label="true colour"),
    ),
    Modality(
        name="S1GRD",
        description="Sentinel-1 GRD backscatter (sigma0) in dB, radar geometry georeferenced by GCPs",
        collections=("sentinel-1-grd",),
        bands=(Band("VV", "vv", "vv", "vv", 10.0), Band("VH", "vh", "vh", "vh", 10.0)),
        dtype="float16",
        nodata=float("nan"),
        native_resolution_m=10.0,
        resampling=Resampling.BILINEAR_POWER_DB,
        value_range=(-50.0, 30.0),
        mean=(-12.60, -20.29),
        std=(5.20, 5.89),
        scales=Scale.BOTH,
        tokenizer=TokenizerKind.FSQ_VAE,
        vocab_size=_prod(FSQ_IMAGE_LEVELS),
        fsq_levels=FSQ_IMAGE_LEVELS,
        display=_s1_display(),
    ),
    Modality(
        name="S1RTC",
        description="Sentinel-1 radiometrically terrain corrected backscatter (gamma0) in dB, UTM",
        collections=("sentinel-1-rtc",),
        bands=(Band("VV", "vv", "vv", "vv", 10.0), Band("VH", "vh", "vh", "vh", 10.0)),
        dtype="float16",
        nodata=float("nan"),
        native_resolution_m=10.0,
        resampling=Resampling.BILINEAR_POWER_DB,
        value_range=(-50.0, 30.0),
        mean=(-10.93, -17.33),
        std=(4.39, 4.46),
        scales=Scale.BOTH,
        tokenizer=TokenizerKind.FSQ_VAE,
        vocab_size=_prod(FSQ_IMAGE_LEVELS),
        fsq_levels=FSQ_IMAGE_LEVELS,
        display=_s1_display(),
    ),
    Modality(
        name="DEM",
        description="Copernicus DEM GLO-30 elevation in metres above the EGM2008 geoid",
        collections=("cop-dem-glo-30",),
        bands=(Band("elevation", None, "data", "data", 30.0),),
        dtype="float32",
        nodata=float("nan"),
        native_resolution_m=30.0,
        resampling=Resampling.BILINEAR,
        value_range=(-500.0, 9000.0),
        mean=(670.7,),
        std=(951.3,),
        scales=Scale.BOTH,
        tokenizer=TokenizerKind.FSQ_VAE,
        vocab_size=_prod(FSQ_IMAGE_LEVELS),
        fsq_levels=FSQ_IMAGE_LEVELS,
        vertical_datum="EGM2008",
        display=Display(
            DisplayKind.SCALAR,
            ("elevation",),
            cmap="terrain",
            cmap_span=(0.25, 1.0),
            label="elevation (m)",
        ),
    ),
    Modality(
        name="LULC",
        description="Esri 10 m land use / land cover, 9 classes + nodata 0",
        collections=("io-lulc-9-class",),
        bands=(Band("class", None, "data", "data", 10.0),),
        dtype="uint8",
        nodata=0,
        native_resolution_m=10.0,
        resampling=Resampling.NEAREST,
        value_range=(0, 11),
        mean=(0.0,),
        std=(1.0,),
        scales=Scale.TOKENS,
        tokenizer=TokenizerKind.FSQ_VAE_CLASSES,
        vocab_size=_prod(FSQ_LULC_LEVELS),
        fsq_levels=FSQ_LULC_LEVELS,
        classes=LULC_CLASSES,
        class_names=LULC_CLASS_NAMES,
        display=Display(
            DisplayKind.CLASSES,
            ("class",),
            classes=tuple(
                (v, n, LULC_COLORS[v]) for v, n in zip(LULC_CLASSES, LULC_CLASS_NAMES, strict=True)
            ),
        ),
    ),
    Modality(
        name="NDVI",
        description="Normalised difference vegetation index from S2L2A (B08-B04)/(B08+B04)",
        collections=(),
        bands=(Band("ndvi"),),
        dtype="float16",
        nodata=float("nan"),
        native_resolution_m=None,
        resampling=Resampling.DERIVED,
        value_range=(-1.0, 1.0),
        mean=(0.41,),
        std=(0.30,),
        scales=Scale.TOKENS,
        tokenizer=TokenizerKind.FSQ_VAE,
        vocab_size=_prod(FSQ_IMAGE_LEVELS),
        fsq_levels=FSQ_IMAGE_LEVELS,
        derived_from=("S2L2A",),
        display=Display(DisplayKind.SCALAR, ("ndvi",), -0.2, 0.9, "RdYlGn", label="NDVI"),
    ),
    Modality(
        name="GEO",
        description="Sample centre latitude and longitude (EPSG:4326 degrees)",
        collections=(),
        bands=(Band("lat"), Band("lon")),
        dtype="float64",
        nodata=float("nan"),
        native_resolution_m=None,
        resampling=Resampling.DERIVED,
        value_range=(-180.0, 180.0),
        mean=(0.0, 0.0),
        std=(90.0, 180.0),
        scales=Scale.TOKENS,
        tokenizer=TokenizerKind.GEO_BINS,
        vocab_size=GEO_VOCAB,
        layout=Layout.VECTOR,
        length=2,
    ),
    Modality(
        name="CAPTION",
        description="Caption derived from land-cover, elevation, NDVI and season statistics",
        collections=(),
        bands=(Band("text"),),
        dtype="uint8",
        nodata=0,
        native_resolution_m=None,
        resampling=Resampling.DERIVED,
        value_range=(0, 255),
        mean=(0.0,),
        std=(1.0,),
        scales=Scale.TOKENS,
        tokenizer=TokenizerKind.WORDPIECE,
        vocab_size=CAPTION_VOCAB,
        layout=Layout.TEXT,
        length=CAPTION_MAX_BYTES,
        derived_from=("LULC", "DEM", "NDVI"),
    ),
)

_BY_NAME = {m.name.upper(): m for m in REGISTRY}
MODALITY_NAMES: tuple[str, ...] = tuple(m.name for m in REGISTRY)


class UnknownModalityError(KeyError):
    """Raised for a modality name not in the registry; the message lists valid names."""

    def __str__(self) -> str:  # KeyError quotes its arg; keep the message readable
        return str(self.args[0])


def get_modality(name: str | Modality) -> Modality:
    """Look a modality up by name, case-insensitively."""
    if isinstance(name, Modality):
        return name
    try:
        return _BY_NAME[name.strip().upper()]
    except KeyError:
        raise UnknownModalityError(
            f"unknown modality {name!r}; valid names: {', '.join(MODALITY_NAMES)}"
        ) from None


def modalities(
    *, pixels: bool | None = None, tokens: bool | None = None, layout: Layout | None = None
) -> tuple[Modality, ...]:
    """Registry entries filtered by scale and layout, in registry order."""
    out = []
    for m in REGISTRY:
        if pixels is not None and m.has_pixels != pixels:
            continue
        if tokens is not None and m.has_tokens != tokens:
            continue
        if layout is not None and m.layout is not layout:
            continue
        out.append(m)
    return tuple(out)


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


# --------------------------------------------------------------------------- source conventions

#: Vertical datums heights may be given in -> EPSG code of their vertical CRS. "ellipsoidal"
#: (heights above the WGS 84 ellipsoid, a 3D CRS such as EPSG:4979) has none.
VERTICAL_DATUMS: dict[str, int | None] = {
    "EGM2008": 3855,
    "EGM96": 5773,
    "ellipsoidal": None,
}

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


@dataclass(frozen=True)
class SourceConvention:
    """How one source collection publishes its values, where the files alone do not say.

    Read by the sources (asset keys) and the build (fill values, legends, vertical datums);
    ``docs/pipeline.md`` ("Sources in the wild") lists them. Conventions are declared here
    once, per collection, never sniffed from values. Sentinel-2's offsets are the same for
    every S2 collection: :data:`S2_STORED_OFFSET_DN` and :func:`s2_harmonise_params`.
    """

    collection: str
    #: Registry modality the collection serves.
    modality: str
    #: Source values that are nodata whatever the file declares (S1 GRD: the zero fill
    #: along swath edges, in files that declare no nodata).
    fill_values: tuple[float, ...] = ()
    #: Vertical datum of the heights (a :data:`VERTICAL_DATUMS` key) when the file's CRS
    #: has no vertical part.
    vertical_datum: str | None = None
    #: Source class value -> registry legend value; every other value is nodata.
    class_map: tuple[tuple[int, int], ...] = ()
    #: Registry band -> asset key, where the collection's key is not the band's usual one.
    asset_keys: tuple[tuple[str, str], ...] = ()

    def class_lut(self) -> np.ndarray | None:
        """uint8 value -> legend value lookup (0 = nodata), or None without a class map."""
        if not self.class_map:
            return None
        lut = np.zeros(256, np.uint8)
        for src, dst in self.class_map:
            lut[src] = dst
        return lut


CONVENTIONS: tuple[SourceConvention, ...] = (
    SourceConvention("sentinel-1-grd", "S1GRD", fill_values=(0.0,)),
    SourceConvention("cop-dem-glo-30", "DEM", vertical_datum="EGM2008"),
    SourceConvention("cop-dem-glo-90", "DEM", vertical_datum="EGM2008"),
    SourceConvention("nasadem", "DEM", vertical_datum="EGM96"),
    SourceConvention(
        "esa-worldcover", "LULC", class_map=ESA_WORLDCOVER_TO_LULC, asset_keys=(("class", "map"),)
    ),
)
_CONVENTION_BY_COLLECTION = {c.collection: c for c in CONVENTIONS}


def source_convention(collection: str | None) -> SourceConvention | None:
    """The registry's conventions of a source collection, or None (none declared)."""
    return _CONVENTION_BY_COLLECTION.get(collection or "")


# --------------------------------------------------------------------------- TerraMind v1


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


# --------------------------------------------------------------------------- Earth Engine


@dataclass(frozen=True)
class EarthEngineConvention:
    """What a modality's Google Earth Engine collection holds, next to the STAC collections
    of :attr:`Modality.collections`, and how its values map onto the corpus convention.

    Earth Engine serves its own renditions of the products: Sentinel-2 with the
    processing-baseline offset removed, Sentinel-1 GRD orthorectified and in dB, land cover
    in the legend of its publisher. The build asks Earth Engine for pixels on each sample's
    own grid (``ee.data.computePixels``) and turns the answer into corpus values with
    :func:`ee_to_corpus`, the one place these conventions are applied.
    """

    #: The STAC collection it stands in for (the plan's collection id; ``PlanConfig.collections``
    #: picks another one of a modality, e.g. ``LULC: esa-worldcover``).
    stac_collection: str
    modality: str
    #: Earth Engine ImageCollection id.
    collection: str
    #: (registry band, Earth Engine band id) pairs; S2L2A also maps its SCL band.
    bands: tuple[tuple[str, str], ...]
    #: What the collection's pixels are, in words (docs, corpus provenance).
    holds: str
    #: Sentinel-2: (scale, offset) of reflectance = DN * scale + offset as Earth Engine
    #: serves the DN (harmonised collections: offset already removed, so 0 for every baseline).
    s2_reflectance: tuple[float, float] | None = None
    #: SAR bands are served in dB; the build asks Earth Engine for ``10 ** (dB / 10)`` before
    #: resampling, so its answers are linear power (resampled as power, like every source).
    db: bool = False
    #: Value Earth Engine fills masked pixels with (``unmask``); read back as nodata.
    fill: float = 0.0
    #: (source class, registry class) pairs for a land-cover legend; empty: identical legend.
    legend: tuple[tuple[int, int], ...] = ()
    #: Image property holding the scene cloud cover in percent, if any.
    cloud_property: str | None = None
    #: Vertical datum of heights (a :data:`VERTICAL_DATUMS` key), as :class:`SourceConvention`.
    vertical_datum: str | None = None


_EE_S2_BANDS = tuple(
    (b, "B" + b[1:].lstrip("0") if b != "B8A" else "B8A")
    for b in (
        "B01",
        "B02",
        "B03",
        "B04",
        "B05",
        "B06",
        "B07",
        "B08",
        "B8A",
        "B09",
        "B10",
        "B11",
        "B12",
    )
)

#: Earth Engine conventions per STAC collection (the collections ``plan --source ee`` uses).
EARTH_ENGINE: dict[str, EarthEngineConvention] = {
    c.stac_collection: c
    for c in (
        EarthEngineConvention(
            "sentinel-2-l2a",
            "S2L2A",
            "COPERNICUS/S2_SR_HARMONIZED",
            (*(p for p in _EE_S2_BANDS if p[0] != "B10"), ("SCL", "SCL")),
            "Sentinel-2 L2A surface reflectance DN with the baseline-04.00 offset removed "
            "(reflectance = DN / 10000 for every baseline); stored +1000 DN, the corpus convention",
            s2_reflectance=(1 / S2_DN_SCALE, 0.0),
            cloud_property="CLOUDY_PIXEL_PERCENTAGE",
        ),
        EarthEngineConvention(
            "sentinel-2-l1c",
            "S2L1C",
            "COPERNICUS/S2_HARMONIZED",
            _EE_S2_BANDS,
            "Sentinel-2 L1C top-of-atmosphere reflectance DN with the baseline-04.00 offset "
            "removed; stored +1000 DN, the corpus convention",
            s2_reflectance=(1 / S2_DN_SCALE, 0.0),
            cloud_property="CLOUDY_PIXEL_PERCENTAGE",
        ),
        EarthEngineConvention(
            "sentinel-1-grd",
            "S1GRD",
            "COPERNICUS/S1_GRD",
            (("VV", "VV"), ("VH", "VH")),
            "Sentinel-1 GRD sigma0 in dB, thermal-noise removed, radiometrically calibrated and "
            "orthorectified (terrain-corrected geometry, not terrain-flattened) in UTM: the "
            "product TerraMesh's S1GRD (SSL4EO-S12) was made from, so it stays S1GRD, not S1RTC",
            db=True,
        ),
        EarthEngineConvention(
            "cop-dem-glo-30",
            "DEM",
            "COPERNICUS/DEM/GLO30",
            (("elevation", "DEM"),),
            "Copernicus DEM GLO-30 elevation in metres (EGM2008), the same tiles as cop-dem-glo-30",
            fill=-32768.0,
            vertical_datum="EGM2008",
        ),
        EarthEngineConvention(
            "io-lulc-9-class",
            "LULC",
            "projects/sat-io/open-datasets/landcover/ESRI_Global-LULC_10m_TS",
            (("class", "b1"),),
            "Esri 10 m annual land use / land cover (community catalog), the io-lulc-9-class "
            "legend: 1 water, 2 trees, 4 flooded vegetation, 5 crops, 7 built area, "
            "8 bare ground, 9 snow/ice, 10 clouds, 11 rangeland; 0 nodata",
            legend=tuple((v, v) for v in LULC_CLASSES),
        ),
        EarthEngineConvention(
            "esa-worldcover",
            "LULC",
            "ESA/WorldCover/v200",
            (("class", "Map"),),
            "ESA WorldCover 10 m 2021 (v200), its 11-class legend mapped onto the registry's "
            "(ESA_WORLDCOVER_TO_LULC, as for the STAC esa-worldcover collection)",
            legend=ESA_WORLDCOVER_TO_LULC,
        ),
    )
}


def ee_to_corpus(convention: EarthEngineConvention, band: str, values: np.ndarray) -> np.ndarray:
    """Pixels of one band as Earth Engine answered -> float32 corpus values, NaN for nodata.

    Sentinel-2 DN move onto :data:`S2_CONVENTION` (Earth Engine's harmonised DN + 1000, via
    :func:`s2_harmonise_params`); SAR answers are linear power (see ``db``), the domain the
    build mosaics SAR in, and non-positive power is nodata; a land-cover legend is mapped
    onto the registry's classes (unknown values become nodata); ``fill`` is nodata.
    """
    m = get_modality(convention.modality)
    raw = np.asarray(values)
    out = raw.astype(np.float32, copy=True)
    fill = np.float32(convention.fill)
    nodata = ~np.isfinite(out) | (out == fill)
    if m.nodata is not None and not (isinstance(m.nodata, float) and np.isnan(m.nodata)):
        nodata |= out == np.float32(m.nodata)
    if convention.s2_reflectance is not None and band != "SCL":
        gain, bias = s2_harmonise_params(*convention.s2_reflectance, None)
        out = out * np.float32(gain) + np.float32(bias)
    if convention.db:
        nodata |= out <= 0
    if convention.legend and m.classes:
        lut = np.zeros(65536, np.float32)
        for src, dst in convention.legend:
            lut[int(src)] = float(dst)
        ok = ~nodata & (out >= 0) & (out < lut.size)
        mapped = np.zeros(out.shape, np.float32)
        mapped[ok] = lut[out[ok].astype(np.int64)]
        nodata |= mapped == 0
        out = mapped
    out[nodata] = np.nan
    return out
