"""One region's world: frame, landscape, schedules, and the noise-free value of every
modality on any geometry at any time. The generator and ``truth()`` both call these."""

from __future__ import annotations

from datetime import datetime

import numpy as np

from terraloom.pipeline.world import sensors as sn
from terraloom.pipeline.world.landscape import CLOUDS, Landscape, Latent
from terraloom.pipeline.world.noise import CosineField, Geometry, rng_for, smoothstep, stable_hash
from terraloom.pipeline.world.regions import (
    Acquisition,
    Frame,
    Preset,
    RegionSpec,
    s1_schedule,
    s2_schedule,
    solar_angles,
)

#: modality names accepted by ``truth`` (registry names plus a few latent ones)
TRUTH_MODALITIES = (
    "S2L2A",
    "S2L1C",
    "SCL",
    "S1RTC",
    "S1GRD",
    "DEM",
    "LULC",
    "NDVI",
    "CLASS",
    "CLOUD",
)
DEM_NOISE_M = 0.25
LULC_CLOUD_FRAC = 0.006


class RegionModel:
    def __init__(self, seed: int, spec: RegionSpec, preset: Preset) -> None:
        self.seed = seed
        self.spec = spec
        self.preset = preset
        self.frame = Frame.for_spec(spec)
        self.landscape = Landscape(seed, spec)
        self.s2_acqs = s2_schedule(spec, preset)
        self.s1_acqs = s1_schedule(spec, preset)
        self.clear_index = stable_hash(seed, spec.name, "clear") % max(1, preset.n_s2)
        self._cloud_cache: dict[str, sn.CloudState] = {}
        rc = rng_for(seed, spec.name, "lulc-clouds")
        self.lulc_cloud = CosineField.random(rc, 24, 300.0, 5000.0, hurst=1.0)
        from terraloom.pipeline.world.landscape import _q

        self.lulc_cloud_t = _q(LULC_CLOUD_FRAC)

    @property
    def name(self) -> str:
        return self.spec.name

    # -- time-varying state ----------------------------------------------------------------

    def cloud_state(self, t: datetime) -> sn.CloudState:
        key = t.date().isoformat()
        if key not in self._cloud_cache:
            clear = any(a.day == t.date() and a.index == self.clear_index for a in self.s2_acqs)
            self._cloud_cache[key] = sn.cloud_state(self.landscape, key, clear)
        return self._cloud_cache[key]

    def sun(self, t: datetime) -> tuple[float, float]:
        return solar_angles(t, self.spec.center[0], self.spec.center[1])

    def s1_acquisition(self, t: datetime) -> Acquisition:
        """The scheduled S1 acquisition nearest to ``t`` (its geometry and state)."""
        return min(self.s1_acqs, key=lambda a: abs((a.datetime - t).total_seconds()))

    # -- modalities --------------------------------------------------------------------------

    def latent(self, geom: Geometry, grad: bool = True, precise: bool = True) -> Latent:
        return self.landscape.latent(geom, grad=grad, precise=precise)

    def s2(
        self,
        geom: Geometry,
        lat: Latent,
        t: datetime,
        bands: tuple[str, ...],
        l1c: bool = True,
        precise: bool = True,
    ) -> dict[str, np.ndarray]:
        """Noise-free S2 at one resolution: ``l2a`` (bands without B10) and, if ``l1c``,
        ``l1c`` (all bands) as float DN; ``boa`` reflectance; cloud/shadow/cirrus fields."""
        sun = self.sun(t)
        cs = self.cloud_state(t)
        a, sh, ci = sn.clouds(cs, geom, sun, np.float64 if precise else np.float32)
        boa_bands = tuple(b for b in bands if b != "B10")
        rho = sn.surface_reflectance(self.landscape, lat, t, sun, boa_bands)
        boa = sn.observed_reflectance(rho, a, sh, ci, boa_bands)
        out = {"boa": boa, "l2a": sn.to_dn(boa), "cloud": a, "shadow": sh, "cirrus": ci}
        if l1c:
            full = np.zeros((len(bands), *boa.shape[1:]), np.float32)
            for i, b in enumerate(bands):
                if b != "B10":
                    full[i] = boa[boa_bands.index(b)]
            out["l1c"] = sn.to_dn(sn.toa_reflectance(full, cs.aerosol, ci, a, bands))
        return out

    def scl(
        self, geom: Geometry, lat: Latent, t: datetime, s2: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Scene classification; pass the ``s2()`` result of the same grid to reuse its clouds."""
        if s2 is None:
            a, sh, ci = sn.clouds(self.cloud_state(t), geom, self.sun(t))
        else:
            a, sh, ci = s2["cloud"], s2["shadow"], s2["cirrus"]
        g = self.landscape.greenness(lat, sn.doy(t))
        return sn.scl(lat, g, a, sh, ci)

    def rtc(self, lat: Latent, t: datetime) -> np.ndarray:
        return sn.gamma0(self.landscape, lat, self.s1_acquisition(t))

    def grd(self, geom: Geometry, lat: Latent, t: datetime) -> np.ndarray:
        return sn.sigma0(self.landscape, lat, geom, self.s1_acquisition(t))

    def lulc(self, geom: Geometry, lat: Latent) -> np.ndarray:
        cls = lat.cls.copy()
        cls[self.lulc_cloud(geom) > self.lulc_cloud_t] = CLOUDS
        return cls

    def truth(self, modality: str, geom: Geometry, t: datetime | None) -> np.ndarray:
        """Noise-free value of a modality, shape (bands, *geom.shape)."""
        m = modality.upper()
        need_time = m not in ("DEM", "LULC", "CLASS")
        if need_time and t is None:
            raise ValueError(f"truth({modality!r}) needs a time")
        lat = self.latent(geom, grad=m in ("S2L2A", "S2L1C", "S1GRD", "NDVI"), precise=True)
        if m == "DEM":
            assert lat.h is not None
            return lat.h[None].astype(np.float64)
        if m == "CLASS":
            return lat.cls[None].astype(np.float64)
        if m == "LULC":
            return self.lulc(geom, lat)[None].astype(np.float64)
        assert t is not None
        if m == "S2L2A":
            return self.s2(geom, lat, t, sn.S2_BANDS_L2A, l1c=False)["l2a"]
        if m == "S2L1C":
            return self.s2(geom, lat, t, sn.S2_BANDS_L1C, l1c=True)["l1c"]
        if m == "NDVI":
            boa = self.s2(geom, lat, t, ("B04", "B08"), l1c=False)["boa"]
            return ((boa[1] - boa[0]) / (boa[1] + boa[0]))[None]
        if m == "SCL":
            return self.scl(geom, lat, t)[None].astype(np.float64)
        if m == "CLOUD":
            a, _, _ = sn.clouds(self.cloud_state(t), geom, self.sun(t))
            return a[None]
        if m == "S1RTC":
            return self.rtc(lat, t)
        if m == "S1GRD":
            return self.grd(geom, lat, t)
        raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(TRUTH_MODALITIES)}")


def dem_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape) * DEM_NOISE_M


__all__ = ["RegionModel", "TRUTH_MODALITIES", "smoothstep"]
