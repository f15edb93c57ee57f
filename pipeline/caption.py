"""Captions from a sample's own statistics, behind an interface a VLM can replace.

A :class:`Captioner` turns :class:`SampleStats` (land-cover fractions, elevation,
relief, NDVI, water, season, hemisphere) into one sentence. The default
:class:`StatisticsCaptioner` is deterministic template text, e.g. "Mostly cropland (52%)
with patches of trees (18%) and a small built-up area (9%) on flat terrain around
140 m, summer, vegetation vigorous." A vision-language captioner only has to implement
``caption(stats)`` (``stats.rgb`` carries the S2RGB image for it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from terraloom.schemas.modalities import CAPTION_MAX_BYTES, LULC_CLASS_NAMES, LULC_CLASSES

__all__ = [
    "Captioner",
    "SampleStats",
    "StatisticsCaptioner",
    "caption_sample",
    "caption_time",
    "caption_to_bytes",
    "season",
    "sample_stats",
    "truncate_utf8",
]


@dataclass(frozen=True)
class SampleStats:
    """What a captioner may know about a sample (None = modality not available)."""

    lat: float
    lon: float
    #: LULC class name -> fraction of the classified pixels, descending.
    lulc_fractions: tuple[tuple[str, float], ...] = ()
    elevation_mean: float | None = None
    elevation_min: float | None = None
    elevation_max: float | None = None
    #: 95th minus 5th percentile of elevation (robust to single spikes).
    relief: float | None = None
    ndvi_mean: float | None = None
    water_fraction: float | None = None
    month: int | None = None
    rgb: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def hemisphere(self) -> str:
        return "southern" if self.lat < 0 else "northern"

    def as_quality(self) -> dict[str, float]:
        """The numeric statistics, for the index row's ``quality`` map."""
        out: dict[str, float] = {}
        for key in (
            "elevation_mean",
            "elevation_min",
            "elevation_max",
            "relief",
            "ndvi_mean",
            "water_fraction",
        ):
            v = getattr(self, key)
            if v is not None:
                out[key] = float(v)
        for name, frac in self.lulc_fractions:
            out[f"lulc_{name.replace(' ', '_').replace('/', '_')}"] = float(frac)
        return out


@runtime_checkable
class Captioner(Protocol):
    """Anything that turns sample statistics into a caption (<= 512 UTF-8 bytes)."""

    def caption(self, stats: SampleStats) -> str: ...


def season(month: int, lat: float) -> str:
    """Meteorological season of a month at a latitude (flipped south of the equator)."""
    north = {
        12: "winter",
        1: "winter",
        2: "winter",
        3: "spring",
        4: "spring",
        5: "spring",
        6: "summer",
        7: "summer",
        8: "summer",
        9: "autumn",
        10: "autumn",
        11: "autumn",
    }
    flip = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}
    s = north[int(month)]
    return flip[s] if lat < 0 else s


def sample_stats(
    lat: float,
    lon: float,
    lulc: np.ndarray | None = None,
    dem: np.ndarray | None = None,
    ndvi: np.ndarray | None = None,
    when: dt.datetime | None = None,
    rgb: np.ndarray | None = None,
) -> SampleStats:
    """Statistics of one sample from its co-registered LULC (legend values), DEM, NDVI."""
    fractions: tuple[tuple[str, float], ...] = ()
    water = None
    if lulc is not None:
        vals = np.asarray(lulc)
        vals = vals[np.isfinite(vals)] if np.issubdtype(vals.dtype, np.floating) else vals.ravel()
        vals = vals.astype(np.int64)
        known = np.isin(vals, LULC_CLASSES)
        n = int(known.sum())
        if n:
            counts = {
                name: int(np.count_nonzero(vals == v)) / n
                for v, name in zip(LULC_CLASSES, LULC_CLASS_NAMES)
            }
            fractions = tuple(
                sorted(((k, f) for k, f in counts.items() if f > 0), key=lambda kv: (-kv[1], kv[0]))
            )
            water = counts["water"]
    e_mean = e_min = e_max = relief = None
    if dem is not None:
        d = np.asarray(dem, np.float64)
        d = d[np.isfinite(d)]
        if d.size:
            e_mean, e_min, e_max = float(d.mean()), float(d.min()), float(d.max())
            p5, p95 = np.percentile(d, [5, 95])
            relief = float(p95 - p5)
    n_mean = None
    if ndvi is not None:
        v = np.asarray(ndvi, np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            n_mean = float(v.mean())
    return SampleStats(
        lat=float(lat),
        lon=float(lon),
        lulc_fractions=fractions,
        elevation_mean=e_mean,
        elevation_min=e_min,
        elevation_max=e_max,
        relief=relief,
        ndvi_mean=n_mean,
        water_fraction=water,
        month=when.month if when is not None else None,
        rgb=rgb,
    )


_NOUN = {
    "water": "open water",
    "trees": "trees",
    "flooded vegetation": "flooded vegetation",
    "crops": "cropland",
    "built area": "built-up area",
    "bare ground": "bare ground",
    "snow/ice": "snow and ice",
    "clouds": "cloud",
    "rangeland": "rangeland",
}


def _pct(f: float) -> str:
    return f"{round(100 * f):d}%"


def _minor(name: str, frac: float) -> str:
    noun = _NOUN.get(name, name)
    if name == "built area":
        return f"{'a small' if frac < 0.15 else 'a sizeable'} built-up area ({_pct(frac)})"
    if name == "water":
        return f"{'a little' if frac < 0.15 else 'some'} open water ({_pct(frac)})"
    return f"{'patches of' if frac < 0.25 else 'a large share of'} {noun} ({_pct(frac)})"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _label(value: float, ladder: tuple[tuple[float, str], ...], top: str) -> str:
    """The label of the first step ``value`` is under, else ``top``."""
    return next((label for bound, label in ladder if value < bound), top)


_TERRAIN = ((20, "flat terrain"), (100, "gently rolling terrain"), (400, "hilly terrain"))
_VEGETATION = ((0.1, "little or no vegetation"), (0.3, "vegetation sparse"))


def _terrain(relief: float) -> str:
    return _label(relief, _TERRAIN, "mountainous terrain")


def _elevation(mean: float) -> str:
    r = round(mean / 10) * 10 if abs(mean) >= 100 else round(mean)
    return f"{r:d} m"


def _vegetation(v: float) -> str:
    return _label(v, (*_VEGETATION, (0.55, "vegetation moderate")), "vegetation vigorous")


@dataclass(frozen=True)
class StatisticsCaptioner:
    """Deterministic template captions from :class:`SampleStats`."""

    min_fraction: float = 0.05
    max_classes: int = 4

    def caption(self, stats: SampleStats) -> str:
        clauses: list[str] = []
        fr = [(n, f) for n, f in stats.lulc_fractions if f >= self.min_fraction][: self.max_classes]
        if fr:
            name, frac = fr[0]
            noun = _NOUN.get(name, name)
            if frac >= 0.5:
                head = f"Mostly {noun} ({_pct(frac)})"
            elif frac >= 0.3:
                head = f"Largely {noun} ({_pct(frac)})"
            else:
                head = f"A mix of {noun} ({_pct(frac)})"
            minors = [_minor(n, f) for n, f in fr[1:]]
            w = stats.water_fraction or 0.0
            if w >= 0.005 and all(n != "water" for n, _ in fr):
                minors.append(f"a little open water ({max(1, round(100 * w)):d}%)")
            text = head + (" with " + _join(minors) if minors else "")
        else:
            text = "Land"
        if stats.relief is not None and stats.elevation_mean is not None:
            text += f" on {_terrain(stats.relief)} around {_elevation(stats.elevation_mean)}"
        clauses.append(text)
        if stats.month is not None:
            s = season(stats.month, stats.lat)
            clauses.append(f"southern-hemisphere {s}" if stats.lat < 0 else s)
        if stats.ndvi_mean is not None:
            clauses.append(_vegetation(stats.ndvi_mean))
        return truncate_utf8(", ".join(clauses) + ".", CAPTION_MAX_BYTES)


def truncate_utf8(text: str, max_bytes: int = CAPTION_MAX_BYTES) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    b = text.encode("utf-8")
    if len(b) <= max_bytes:
        return text
    return b[:max_bytes].decode("utf-8", errors="ignore")


def caption_to_bytes(text: str, length: int = CAPTION_MAX_BYTES) -> np.ndarray:
    """The CAPTION array value: UTF-8 bytes, zero padded to ``length``."""
    b = truncate_utf8(text, length).encode("utf-8")
    out = np.zeros(length, np.uint8)
    out[: len(b)] = np.frombuffer(b, np.uint8)
    return out


def caption_time(times: Mapping[str, dt.datetime | None]) -> dt.datetime | None:
    """The time a caption's season comes from: S2's acquisition, else any modality's."""
    return (
        times.get("S2L2A")
        or times.get("S2L1C")
        or next((t for t in times.values() if t is not None), None)
    )


def caption_sample(
    captioner: Captioner,
    lat: float,
    lon: float,
    images: Mapping[str, np.ndarray | None],
    when: dt.datetime | None,
) -> tuple[str, SampleStats]:
    """Caption one sample from its (band, y, x) images by modality (LULC, DEM, NDVI,
    S2RGB; absent or ``None`` = not available); returns the caption and its statistics."""
    lulc, dem, nd = images.get("LULC"), images.get("DEM"), images.get("NDVI")
    stats = sample_stats(
        lat,
        lon,
        lulc=None if lulc is None else lulc[0],
        dem=None if dem is None else dem[0],
        ndvi=None if nd is None else nd[0],
        when=when,
        rgb=images.get("S2RGB"),
    )
    return captioner.caption(stats), stats
