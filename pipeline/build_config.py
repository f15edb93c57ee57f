"""How a corpus build makes and judges samples: :class:`BuildConfig`, and what of it
follows the plan (the modalities it was asked for, recorded in its metadata).

Its own module so that the engine-neutral block work (``pipeline.block``), the build
driver and the CLI can type and validate a config without importing the sample builder
(rasterio, the co-registration code) on the driver.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from terraloom.pipeline.caption import Captioner
from terraloom.pipeline.ee_quota import EeRequestConfig
from terraloom.pipeline.hrefs import HrefPolicy
from terraloom.schemas.layouts import CORPUS_MODALITIES
from terraloom.schemas.modalities import S2_CONVENTION, Layout, get_modality

if TYPE_CHECKING:
    from terraloom.pipeline.readers import ReaderOptions

__all__ = [
    "DEFAULT_REQUIRED",
    "PLAN_BANDS_KEY",
    "PLAN_MODALITIES_KEY",
    "BandSubset",
    "BuildConfig",
    "check_band_subset",
    "follow_plan",
    "parse_band_flags",
    "plan_request_metadata",
    "planned_bands",
    "planned_modalities",
    "store_attrs",
]

#: Bands of some modalities, e.g. (("S2L2A", ("B02", "B03", "B04", "B08")),); the same
#: spelling in the plan and build configs (a YAML mapping ``{S2L2A: [B02, B03]}`` reads as it).
BandSubset = tuple[tuple[str, tuple[str, ...]], ...]


def parse_band_flags(values: Sequence[str], flag: str = "--bands") -> BandSubset:
    """``--bands S2L2A=B02,B03,B04,B08`` flag values (repeatable) as a :data:`BandSubset`;
    ``ValueError`` (one line) for a value that is not ``MODALITY=BAND,BAND``."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for item in values:
        key, sep, value = item.partition("=")
        bands = tuple(b.strip() for b in value.split(",") if b.strip())
        if not sep or not key.strip() or not bands:
            raise ValueError(f"bad {flag} {item!r}: expected MODALITY=BAND,BAND,...")
        out.append((key.strip(), bands))
    return tuple(out)


def check_band_subset(subset: BandSubset, where: str = "band_subset") -> BandSubset:
    """Registry names for every modality and band of a subset (``ValueError`` otherwise)."""
    out = tuple((get_modality(m).name, tuple(bands)) for m, bands in subset)
    for m, bands in out:
        names = get_modality(m).band_names
        unknown = [b for b in bands if b not in names]
        if unknown:
            raise ValueError(f"{where}: {m} has no bands {unknown}; its bands: {', '.join(names)}")
        if not bands:
            raise ValueError(f"{where}: no band of {m} given")
    return out


#: Source modalities a sample must have by default (TerraMind's core set).
DEFAULT_REQUIRED: tuple[str, ...] = ("S2L2A", "S1GRD", "DEM", "LULC")


@dataclass(frozen=True)
class BuildConfig:
    """How samples are built and judged; hashable, JSON-able, picklable (Beam/Dask)."""

    #: Corpus modalities to produce (all in ``schemas.layouts.CORPUS_MODALITIES`` by default).
    modalities: tuple[str, ...] = CORPUS_MODALITIES
    #: Modalities whose absence or bad quality rejects the sample. A required derived
    #: modality requires its sources (NDVI -> S2L2A).
    required: tuple[str, ...] = DEFAULT_REQUIRED
    max_nodata_fraction: float = 0.01
    #: Cloud + shadow fraction from SCL over which a sample is rejected.
    max_cloud_fraction: float = 0.2
    #: Max |S1 - S2| acquisition delta in days.
    s1_window_days: float = 7.0
    #: Fill nodata gaps under the threshold by nearest neighbour (counted in the index).
    fill_small_gaps: bool = True
    gdal_cache_mb: int = 256
    #: Build only these bands of a modality, e.g. (("S2L2A", ("B02", "B03", "B04", "B08")),);
    #: the others stay at the fill value and are not judged. Empty: all bands.
    band_subset: BandSubset = ()
    #: Max decoded-pixels ratio of a shared read over what its member samples need.
    read_slack: float = 2.0
    #: GCP warping of radar geometry: thin-plate spline (exact at GCPs) or polynomial.
    gcp_tps: bool = True
    #: Check each asset's georeferencing against its item's ``proj:*``.
    check_georeferencing: bool = True
    #: Threads reading different assets of a block concurrently (helps remote hrefs).
    io_threads: int = 1
    http_timeout_s: int = 20
    http_max_retry: int = 2
    #: Extra GDAL configuration options as (key, value) pairs.
    gdal_options: tuple[tuple[str, str], ...] = ()
    #: ``module:attribute`` of a zero-argument Captioner factory (a VLM captioner plugs in here).
    captioner: str = "terraloom.pipeline.caption:StatisticsCaptioner"
    #: Which asset hrefs may be opened (on by default; ``run_build`` scopes it with the
    #: plan's catalog root and schemes). A refused href is an ``href_not_allowed`` reject.
    href_policy: HrefPolicy = HrefPolicy()
    #: How ``ee://`` hrefs are read: endpoint (high-volume), project, request size,
    #: concurrency, retries and timeout (``pipeline.ee_quota``; no credentials in it).
    earthengine: EeRequestConfig = EeRequestConfig()

    def __post_init__(self) -> None:
        mods = tuple(get_modality(m).name for m in self.modalities)
        req = tuple(get_modality(m).name for m in self.required)
        object.__setattr__(self, "modalities", mods)
        object.__setattr__(self, "required", tuple(m for m in req if m in mods))
        object.__setattr__(self, "band_subset", check_band_subset(self.band_subset))
        object.__setattr__(
            self, "gdal_options", tuple((str(k), str(v)) for k, v in self.gdal_options)
        )
        for name in ("max_nodata_fraction", "max_cloud_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.s1_window_days < 0:
            raise ValueError("s1_window_days must be >= 0")
        if self.io_threads < 1:
            raise ValueError("io_threads must be >= 1")
        if not isinstance(self.href_policy, HrefPolicy):
            raise TypeError("href_policy must be a pipeline.hrefs.HrefPolicy")

    def bands(self, modality: str) -> tuple[str, ...]:
        """Bands of a modality that are built."""
        m = get_modality(modality)
        for name, bands in self.band_subset:
            if name == m.name:
                return tuple(b for b in m.band_names if b in bands)
        return m.band_names

    @property
    def source_modalities(self) -> tuple[str, ...]:
        """Modalities read from assets (derived ones pull in their sources)."""
        need: list[str] = []
        for name in self.modalities:
            m = get_modality(name)
            for src in (m.name,) if not m.is_derived else m.derived_from:
                s = get_modality(src)
                if (
                    not s.is_derived
                    and s.name not in need
                    and (s.name in self.modalities or name != "CAPTION")
                ):
                    need.append(s.name)
        return tuple(need)

    @property
    def required_sources(self) -> tuple[str, ...]:
        out: list[str] = []
        for name in self.required:
            m = get_modality(name)
            srcs = (
                (m.name,)
                if not m.is_derived
                else (() if m.layout is not Layout.IMAGE else m.derived_from)
            )
            for s in srcs:
                if s not in out:
                    out.append(s)
        return tuple(out)

    def reader_options(self) -> ReaderOptions:
        from terraloom.pipeline.readers import ReaderOptions

        return ReaderOptions(
            gdal_cache_mb=self.gdal_cache_mb,
            http_timeout_s=self.http_timeout_s,
            http_connect_timeout_s=min(self.http_timeout_s, 5),
            http_max_retry=self.http_max_retry,
            gdal_options=self.gdal_options,
        )

    def make_captioner(self) -> Captioner:
        module, _, attr = self.captioner.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        cap = factory()
        if not isinstance(cap, Captioner):
            raise TypeError(f"{self.captioner} did not produce a Captioner")
        return cap


def store_attrs(config: BuildConfig) -> dict[str, object]:
    """What a corpus store built with ``config`` holds, for its group attributes:
    ``built_bands`` (modality -> the bands that hold data; the others stay at the fill
    value), ``s2_convention`` (the DN convention of every stored S2 value) and
    ``dem_vertical_datum`` (the datum of stored heights)."""
    mods = [get_modality(m) for m in config.modalities]
    attrs: dict[str, object] = {
        "built_bands": {m.name: list(config.bands(m.name)) for m in mods if not m.is_derived}
    }
    if any(m.name in ("S2L2A", "S2L1C") for m in mods):
        attrs["s2_convention"] = S2_CONVENTION
    for m in mods:
        if m.vertical_datum is not None:
            attrs[f"{m.name.lower()}_vertical_datum"] = m.vertical_datum
    return attrs


#: Plan-file (Parquet schema) metadata key holding the JSON list of the modalities the
#: plan was asked for; the build follows it (:func:`follow_plan`).
PLAN_MODALITIES_KEY = b"terraloom:plan_modalities"
#: Plan metadata key holding the JSON object {modality: [bands]} of the band subsets the
#: plan was made for (absent: all bands); the build follows it like the modalities.
PLAN_BANDS_KEY = b"terraloom:plan_bands"


def plan_request_metadata(
    modalities: Sequence[str], band_subset: BandSubset = ()
) -> dict[bytes, bytes]:
    """The plan metadata recording what it was asked to plan (written by the planner)."""
    meta = {PLAN_MODALITIES_KEY: json.dumps([get_modality(m).name for m in modalities]).encode()}
    if band_subset:
        subset = {m: list(b) for m, b in check_band_subset(band_subset)}
        meta[PLAN_BANDS_KEY] = json.dumps(subset).encode()
    return meta


def planned_bands(metadata: Mapping[bytes, bytes] | None) -> BandSubset:
    """The band subsets a plan was made for (empty: all bands, or a plan that does not say)."""
    raw = (metadata or {}).get(PLAN_BANDS_KEY)
    if raw is None:
        return ()
    try:
        data = json.loads(raw)
        return check_band_subset(tuple((str(m), tuple(map(str, b))) for m, b in data.items()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"malformed {PLAN_BANDS_KEY.decode()} in the plan metadata: {exc}"
        ) from None


def planned_modalities(metadata: Mapping[bytes, bytes] | None) -> tuple[str, ...] | None:
    """The modalities a plan was asked for, or None for a plan that does not say."""
    raw = (metadata or {}).get(PLAN_MODALITIES_KEY)
    if raw is None:
        return None
    try:
        names = json.loads(raw)
        return tuple(get_modality(str(n)).name for n in names)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"malformed {PLAN_MODALITIES_KEY.decode()} in the plan metadata: {exc}"
        ) from None


def _buildable(name: str, planned: set[str]) -> bool:
    """A source modality that was planned, a derived image whose sources were, or a
    derived vector/text modality (GEO, CAPTION: built from whatever the sample has)."""
    m = get_modality(name)
    if not m.is_derived:
        return m.name in planned
    return not m.is_image or all(s in planned for s in m.derived_from)


def follow_plan(
    config: BuildConfig, planned: Sequence[str] | None, bands: BandSubset = ()
) -> BuildConfig:
    """The config a build of a plan runs: a modality set and required set left at their
    defaults follow what the plan was asked for (a plan of S2L2A alone builds S2L2A and
    what derives from it, and requires S2L2A); sets given explicitly are kept as given,
    so a required modality the plan lacks still rejects its samples, with that reason.
    A set equal to its default counts as the default (a config does not record which
    fields were given). ``planned`` None (a plan that does not record it) keeps the
    config. A band subset left empty follows the plan's (``bands``): a plan of four S2
    bands builds those four."""
    if bands and not config.band_subset:
        config = dataclasses.replace(config, band_subset=bands)
    if planned is None:
        return config
    have = set(planned)
    modalities, required = config.modalities, config.required
    if modalities == BuildConfig().modalities:
        modalities = tuple(m for m in modalities if _buildable(m, have))
    if required == tuple(m for m in DEFAULT_REQUIRED if m in config.modalities):
        required = tuple(m for m in DEFAULT_REQUIRED if m in modalities and _buildable(m, have))
    if (modalities, required) == (config.modalities, config.required):
        return config
    return dataclasses.replace(config, modalities=modalities, required=required)
