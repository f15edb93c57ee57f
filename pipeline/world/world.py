"""A generated world as an object: its regions, schedules and exact ground truth.

``load_world(dir)`` rebuilds the generator's landscape from ``world.json`` (seed, preset,
region specs), so ``world.truth(modality, lon, lat, time)`` returns what each sensor saw
before noise at any point, e.g. at the map coordinates of a warped output pixel.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from terraloom.pipeline.world.model import TRUTH_MODALITIES, RegionModel
from terraloom.pipeline.world.noise import Grid, Points
from terraloom.pipeline.world.regions import (
    GENERATOR_VERSION,
    Acquisition,
    Preset,
    RegionSpec,
    spec_from_dict,
)
from terraloom.pipeline.world.regions import preset as get_preset

#: bands returned by ``truth`` per modality
TRUTH_BANDS: dict[str, int] = {
    "S2L2A": 12,
    "S2L1C": 13,
    "SCL": 1,
    "S1RTC": 2,
    "S1GRD": 2,
    "DEM": 1,
    "LULC": 1,
    "NDVI": 1,
    "CLASS": 1,
    "CLOUD": 1,
}
_ALIASES = {
    "sentinel-2-l2a": "S2L2A",
    "sentinel-2-l1c": "S2L1C",
    "sentinel-1-rtc": "S1RTC",
    "sentinel-1-grd": "S1GRD",
    "cop-dem-glo-30": "DEM",
    "io-lulc-9-class": "LULC",
}


@dataclass(frozen=True)
class RegionInfo:
    """What the plan stage needs to know about a region."""

    name: str
    bbox: tuple[float, float, float, float]  # W, S, E, N: samples centred here have data
    data_bbox: tuple[float, float, float, float]  # lon/lat envelope of all generated data
    frame_epsg: int
    utm_epsgs: tuple[int, ...]
    start: date
    end: date
    snow_line_m: float | None
    s2_datetimes: tuple[datetime, ...]
    s1_datetimes: tuple[datetime, ...]

    @property
    def period(self) -> tuple[date, date]:
        return (self.start, self.end)


def as_utc(t: Any) -> datetime:
    """datetime / numpy datetime64 / ISO string / pandas Timestamp -> naive UTC datetime."""
    if isinstance(t, np.datetime64):
        t = t.astype("datetime64[us]").astype(datetime)
    elif isinstance(t, str):
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    elif hasattr(t, "to_pydatetime"):
        t = t.to_pydatetime()
    elif isinstance(t, date) and not isinstance(t, datetime):
        t = datetime(t.year, t.month, t.day)
    if not isinstance(t, datetime):
        raise TypeError(f"cannot interpret {t!r} as a time")
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return t


class World:
    """The regions of a world and its ground truth."""

    def __init__(
        self, seed: int, preset: Preset, specs: tuple[RegionSpec, ...], root: Path | None = None
    ) -> None:
        self.seed = seed
        self.preset = preset
        self.root = root
        self.models = {s.name: RegionModel(seed, s, preset) for s in specs}
        self.regions = tuple(
            RegionInfo(
                name=m.name,
                bbox=m.spec.bbox,
                data_bbox=m.frame.lonlat_envelope(),
                frame_epsg=m.frame.epsg,
                utm_epsgs=m.frame.utm_epsgs,
                start=preset.start,
                end=preset.end,
                snow_line_m=m.spec.snow_line if m.spec.snow_line < 1e8 else None,
                s2_datetimes=tuple(a.datetime for a in m.s2_acqs),
                s1_datetimes=tuple(a.datetime for a in m.s1_acqs),
            )
            for m in self.models.values()
        )

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset: str = "tiny", seed: int = 0) -> World:
        """The world ``generate_world(preset, seed)`` writes, without writing it."""
        from terraloom.pipeline.world.regions import region_specs

        p = get_preset(preset)
        return cls(seed, p, region_specs(p))

    @property
    def catalog(self) -> Path | None:
        return None if self.root is None else self.root / "catalog.json"

    @property
    def period(self) -> tuple[date, date]:
        return (self.preset.start, self.preset.end)

    def region(self, name: str) -> RegionInfo:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(f"no region {name!r}; regions: {', '.join(r.name for r in self.regions)}")

    def acquisitions(self, sensor: str, region: str | None = None) -> list[Acquisition]:
        """Scheduled acquisitions of ``"S2"`` or ``"S1"`` (optionally of one region)."""
        out: list[Acquisition] = []
        for m in self.models.values():
            if region is None or m.name == region:
                out += m.s2_acqs if sensor.upper() == "S2" else m.s1_acqs
        return sorted(out, key=lambda a: (a.datetime, a.region))

    # -- ground truth ------------------------------------------------------------------------

    def region_index(self, lon: Any, lat: Any, dem: bool = False) -> np.ndarray:
        """Index into ``regions`` of the region whose data covers each point, -1 outside.

        Imagery covers each region's data rectangle; ``dem=True`` tests the (larger) union
        of its whole DEM tiles instead."""
        lon = np.asarray(lon, np.float64)
        lat = np.asarray(lat, np.float64)
        out = np.full(lon.shape, -1, np.int64)
        for i, m in enumerate(self.models.values()):
            w, s, e, n = self._dem_bbox(m) if dem else m.frame.lonlat_envelope()
            sel = (out < 0) & (lon >= w) & (lon <= e) & (lat >= s) & (lat <= n)
            if not sel.any():
                continue
            idx = np.flatnonzero(sel)
            if not dem:
                x, y = m.frame.from_crs(4326, lon[sel], lat[sel])
                idx = idx[m.frame.inside(x, y)]
            out.ravel()[idx] = i
        return out

    def _dem_bbox(self, m: RegionModel) -> tuple[float, float, float, float]:
        from terraloom.pipeline.world.grids import dem_tiles

        boxes = [t.bbox for t in dem_tiles(m.frame)]
        return (
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        )

    def truth(self, modality: str, lon: Any, lat: Any, time: Any = None) -> np.ndarray:
        """Noise-free value of ``modality`` at lon/lat (any shape) and ``time``.

        Returns float64 ``(bands, *lon.shape)``, NaN outside the world's data. Units are the
        files': S2 DN with the +1000 offset, S1 linear power (RTC gamma0, GRD sigma0 for the
        scheduled S1 pass nearest to ``time``), DEM metres, LULC/SCL/CLASS class values,
        NDVI and CLOUD (opacity 0..1) unitless. Static modalities ignore ``time``.
        """
        name = _ALIASES.get(modality, modality).upper()
        if name not in TRUTH_BANDS:
            raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(TRUTH_MODALITIES)}")
        t = None if time is None else as_utc(time)
        lon = np.asarray(lon, np.float64)
        lat = np.asarray(lat, np.float64)
        if lon.shape != lat.shape:
            raise ValueError(f"lon and lat shapes differ: {lon.shape} vs {lat.shape}")
        out = np.full((TRUTH_BANDS[name], *lon.shape), np.nan)
        reg = self.region_index(lon, lat, dem=name == "DEM")
        flat_out = out.reshape(out.shape[0], -1)
        for i, m in enumerate(self.models.values()):
            idx = np.flatnonzero(reg.ravel() == i)
            if idx.size == 0:
                continue
            x, y = m.frame.from_crs(4326, lon.ravel()[idx], lat.ravel()[idx])
            flat_out[:, idx] = m.truth(name, Points(x, y), t)
        return out

    def truth_grid(
        self,
        modality: str,
        epsg: int,
        transform: Any,
        shape: tuple[int, int],
        time: Any = None,
        region: str | None = None,
    ) -> np.ndarray:
        """Truth at the pixel centres of a north-up grid (e.g. a 264 x 264 sample).

        In the region's frame zone this is one matrix product per field (fast and exact);
        elsewhere it falls back to :meth:`truth` at the centres' lon/lat.
        """
        a, b, c, d, e, f = list(transform)[:6]
        h, w = shape
        name = _ALIASES.get(modality, modality).upper()
        m = self._model_for_grid(epsg, (a, b, c, d, e, f), shape, region)
        if m is not None and m.frame.epsg == epsg and b == 0 and d == 0:
            g = Grid(
                (c + a / 2 - m.frame.origin[0], f + e / 2 - m.frame.origin[1]),
                (a, 0.0),
                (0.0, e),
                (h, w),
            )
            x, y = g.coords()
            if m.frame.inside(x, y).all():
                return m.truth(name, g, None if time is None else as_utc(time))
        rr, cc = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        xs = c + cc * a + rr * b
        ys = f + cc * d + rr * e
        from terraloom.pipeline.world.regions import transformer

        lon, lat = transformer(epsg, 4326).transform(xs, ys)
        return self.truth(modality, lon, lat, time)

    def _model_for_grid(
        self, epsg: int, t: tuple[float, ...], shape: tuple[int, int], region: str | None
    ) -> RegionModel | None:
        if region is not None:
            return self.models[region]
        from terraloom.pipeline.world.regions import transformer

        cx = t[2] + t[0] * shape[1] / 2
        cy = t[5] + t[4] * shape[0] / 2
        lon, lat = transformer(epsg, 4326).transform(cx, cy)
        i = int(self.region_index(np.array([lon]), np.array([lat]))[0])
        return None if i < 0 else list(self.models.values())[i]


def load_world(path: str | os.PathLike[str]) -> World:
    """Rebuild a generated world from its directory (or its ``world.json``)."""
    p = Path(path)
    doc_path = p if p.is_file() else p / "world.json"
    if not doc_path.is_file():
        raise FileNotFoundError(f"{doc_path} does not exist: not a terraloom world directory")
    doc = json.loads(doc_path.read_text())
    if doc.get("generator") != "terraloom.world":
        raise ValueError(f"{doc_path} is not a terraloom world description")
    if doc.get("version") != GENERATOR_VERSION:
        raise ValueError(
            f"{doc_path} was written by world generator {doc.get('version')}, this is {GENERATOR_VERSION}: regenerate it"
        )
    p_ = get_preset(doc["preset"])
    specs = tuple(spec_from_dict(r["spec"]) for r in doc["regions"])
    return World(int(doc["seed"]), p_, specs, root=doc_path.parent)
