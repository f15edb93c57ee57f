"""Sensor models: what each instrument sees of a latent landscape (noise-free).

Pure functions of a :class:`Latent`, an acquisition and the landscape's time-varying fields
(clouds, soil moisture). The generator adds noise/speckle and quantises; ``truth()`` returns
these values directly, so a raster pixel and the truth at its centre differ only by noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from terraloom.pipeline.world.landscape import (
    BARE,
    BUILT,
    CROPS,
    FLOODED,
    RANGELAND,
    SNOW,
    TREES,
    WATER,
    Landscape,
    Latent,
)
from terraloom.pipeline.world.noise import CosineField, Geometry, Grid, Points, rng_for, smoothstep
from terraloom.pipeline.world.regions import Acquisition, doy
from terraloom.schemas.modalities import get_modality

# --- Sentinel-2 ----------------------------------------------------------------------------

S2_BANDS_L1C = get_modality("S2L1C").band_names
S2_BANDS_L2A = tuple(b for b in S2_BANDS_L1C if b != "B10")
S2_RES = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}  # fmt: skip
S2_WAVELENGTH = {
    "B01": (0.443, 0.027), "B02": (0.490, 0.098), "B03": (0.560, 0.045), "B04": (0.665, 0.038),
    "B05": (0.704, 0.019), "B06": (0.740, 0.018), "B07": (0.783, 0.028), "B08": (0.842, 0.145),
    "B8A": (0.865, 0.033), "B09": (0.945, 0.026), "B10": (1.375, 0.075), "B11": (1.610, 0.143),
    "B12": (2.190, 0.242),
}  # fmt: skip
S2_COMMON = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge", "B06": "rededge",
    "B07": "rededge", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B10": "cirrus", "B11": "swir16",
    "B12": "swir22",
}  # fmt: skip
PROCESSING_BASELINE = "05.09"
BOA_ADD_OFFSET = 1000  # DN offset since processing baseline 04.00 (Jan 2022)
QUANT = 10000.0
S2_NOISE_DN = (
    0.0  # sensor noise, DN (1 sigma) on top of integer quantisation (0: off, keeps COGs small)
)

# Surface reflectance signatures, L1C band order (B10 is never seen at the surface).
#          B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09   B10    B11    B12
_SIG = {
    "water": [
        0.055,
        0.050,
        0.045,
        0.028,
        0.022,
        0.016,
        0.013,
        0.011,
        0.010,
        0.008,
        0,
        0.005,
        0.003,
    ],
    "green_forest": [
        0.025,
        0.028,
        0.060,
        0.030,
        0.095,
        0.260,
        0.320,
        0.350,
        0.360,
        0.340,
        0,
        0.170,
        0.080,
    ],
    "green_crop": [
        0.030,
        0.035,
        0.080,
        0.040,
        0.125,
        0.320,
        0.400,
        0.430,
        0.440,
        0.420,
        0,
        0.220,
        0.110,
    ],
    "green_grass": [
        0.035,
        0.040,
        0.075,
        0.050,
        0.120,
        0.270,
        0.320,
        0.340,
        0.350,
        0.330,
        0,
        0.250,
        0.140,
    ],
    "soil": [0.070, 0.085, 0.120, 0.160, 0.190, 0.210, 0.230, 0.250, 0.260, 0.270, 0, 0.320, 0.260],
    "dry_grass": [
        0.060,
        0.070,
        0.100,
        0.130,
        0.170,
        0.220,
        0.250,
        0.270,
        0.280,
        0.280,
        0,
        0.330,
        0.250,
    ],
    "litter": [
        0.030,
        0.035,
        0.055,
        0.060,
        0.090,
        0.140,
        0.170,
        0.190,
        0.200,
        0.200,
        0,
        0.180,
        0.110,
    ],
    "marsh": [
        0.040,
        0.045,
        0.060,
        0.055,
        0.070,
        0.100,
        0.120,
        0.130,
        0.130,
        0.120,
        0,
        0.080,
        0.040,
    ],
    "urban": [
        0.110,
        0.120,
        0.130,
        0.140,
        0.150,
        0.160,
        0.170,
        0.180,
        0.185,
        0.185,
        0,
        0.210,
        0.190,
    ],
    "bare": [0.120, 0.140, 0.190, 0.240, 0.270, 0.290, 0.310, 0.320, 0.330, 0.330, 0, 0.380, 0.320],
    "sand": [0.180, 0.210, 0.280, 0.350, 0.380, 0.400, 0.420, 0.430, 0.440, 0.440, 0, 0.500, 0.440],
    "snow": [0.860, 0.880, 0.860, 0.820, 0.800, 0.780, 0.750, 0.720, 0.700, 0.600, 0, 0.050, 0.030],
    "cloud": [
        0.720,
        0.720,
        0.710,
        0.700,
        0.700,
        0.690,
        0.690,
        0.680,
        0.680,
        0.650,
        0,
        0.550,
        0.450,
    ],
}
SIG = {k: np.asarray(v, np.float64) for k, v in _SIG.items()}
# Atmosphere for L1C: rho_toa = P + T * rho / (1 - S * rho) (path, transmittance, spherical albedo)
ATM_PATH = np.array(
    [0.110, 0.080, 0.050, 0.030, 0.024, 0.020, 0.016, 0.012, 0.011, 0.008, 0.0, 0.004, 0.002]
)
ATM_TRANS = np.array([0.88, 0.90, 0.93, 0.95, 0.95, 0.96, 0.96, 0.97, 0.97, 0.55, 0.02, 0.97, 0.96])
ATM_SPH = np.array([0.12, 0.10, 0.08, 0.06, 0.05, 0.05, 0.04, 0.04, 0.04, 0.03, 0.0, 0.02, 0.02])
SHADOW_DARKENING = 0.65
CLOUD_HEIGHT_M = 2000.0

# SCL classes
SCL_NODATA, SCL_SATURATED, SCL_DARK, SCL_SHADOW, SCL_VEG, SCL_NOT_VEG, SCL_WATER = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
)
SCL_UNCLASSIFIED, SCL_CLOUD_MED, SCL_CLOUD_HIGH, SCL_CIRRUS, SCL_SNOW = 7, 8, 9, 10, 11


def _band_index(bands: tuple[str, ...]) -> np.ndarray:
    return np.array([S2_BANDS_L1C.index(b) for b in bands])


def _lut(values: Mapping[int, Any], default: Any, n: int = 16) -> np.ndarray:
    first = np.asarray(default, np.float64)
    out = np.empty((n, *first.shape), np.float64)
    out[:] = first
    for k, v in values.items():
        out[k] = np.asarray(v, np.float64)
    return out


# Per class: green (G) and background (K) signatures, and per-pixel multipliers
# m = c0 + c_var * var + c_p * parcel + c_p2 * parcel2, one for G and one for K.
_GREEN = {
    TREES: "green_forest",
    FLOODED: "marsh",
    RANGELAND: "green_grass",
    CROPS: "green_crop",
    BUILT: "green_grass",
}
_BACK = {
    WATER: "water", TREES: "litter", FLOODED: "water", RANGELAND: "dry_grass", CROPS: "soil",
    BUILT: "urban", BARE: "bare", SNOW: "snow",
}  # fmt: skip
_MG = {
    TREES: (1, 0.05, 0, 0),
    FLOODED: (1, 0.05, 0, 0),
    RANGELAND: (1, 0.05, 0, 0),
    CROPS: (1, 0, 0, 0),
    BUILT: (0.75, 0, 0.5, 0),
}
_MK = {
    WATER: (1, 0.15, 0, 0), TREES: (1, 0.05, 0, 0), FLOODED: (1, 0.05, 0, 0), RANGELAND: (1, 0.05, 0, 0),
    CROPS: (0.8, 0, 0, 0.4), BUILT: (0.75, 0, 0.5, 0), BARE: (1, 0.08, 0, 0), SNOW: (1, 0.02, 0, 0),
}  # fmt: skip
_MG_LUT = _lut(_MG, (1, 0, 0, 0))
_MK_LUT = _lut(_MK, (1, 0, 0, 0))


def _multiplier(lut: np.ndarray, lat: Latent) -> np.ndarray:
    c = lat.cls
    m = lut[c, 0].astype(np.float32)
    m += lut[c, 1].astype(np.float32) * lat.var.astype(np.float32)
    m += lut[c, 2].astype(np.float32) * lat.parcel.astype(np.float32)
    m += lut[c, 3].astype(np.float32) * lat.parcel2.astype(np.float32)
    return m


def surface_reflectance(
    ls: Landscape, lat: Latent, t: datetime, sun: tuple[float, float], bands: tuple[str, ...]
) -> np.ndarray:
    """Cloud-free surface reflectance (bands, ...) float32 with phenology and terrain
    illumination: ``g * G[c] * mg + (1 - g) * K[c] * mk`` per band."""
    idx = _band_index(bands)
    back = "sand" if ls.spec.arid else "bare"
    glut = _lut({c: SIG[v][idx] for c, v in _GREEN.items()}, np.zeros(len(idx))).astype(np.float32)
    klut = _lut(
        {c: SIG[back if v == "bare" else v][idx] for c, v in _BACK.items()}, np.zeros(len(idx))
    ).astype(np.float32)
    g = ls.greenness(lat, doy(t)).astype(np.float32)
    gm = g * _multiplier(_MG_LUT, lat)
    km = (1.0 - g) * _multiplier(_MK_LUT, lat)
    if lat.hx is not None and lat.hy is not None:
        ill = illumination(lat, sun).astype(np.float32)
        gm *= ill
        km *= ill
    c = lat.cls
    out = np.empty((len(bands), *c.shape), np.float32)
    for i in range(len(bands)):
        out[i] = glut[c, i] * gm
        out[i] += klut[c, i] * km
    return out


def illumination(lat: Latent, sun: tuple[float, float]) -> np.ndarray:
    """Lambertian terrain factor cos(i)/cos(sz), clipped to [0.15, 2]."""
    assert lat.hx is not None and lat.hy is not None
    sz, saz = math.radians(sun[0]), math.radians(sun[1])
    sx, sy, szc = math.sin(sz) * math.sin(saz), math.sin(sz) * math.cos(saz), math.cos(sz)
    norm = np.sqrt(1.0 + lat.hx * lat.hx + lat.hy * lat.hy)
    cos_i = (-lat.hx * sx - lat.hy * sy + szc) / norm
    return np.clip(cos_i / szc, 0.15, 2.0)


@dataclass(frozen=True)
class CloudState:
    """Per-acquisition atmosphere: cloud amount, aerosol and the cloud fields."""

    cover: float  # target cloud fraction 0..1
    aerosol: float  # path radiance multiplier
    cloud: CosineField
    cirrus: CosineField
    threshold: float
    cirrus_amount: float


def cloud_state(ls: Landscape, day_key: str, clear: bool) -> CloudState:
    r = rng_for(ls.seed, ls.spec.name, "clouds", day_key)
    u = r.uniform()
    # most passes are fairly clear, some very cloudy; one pass per region is kept clear
    cover = 0.03 * u if clear else 0.6 * u * u + 0.02
    from terraloom.pipeline.world.landscape import _q

    cirrus = float(r.uniform(0.01, 0.05)) if r.uniform() < 0.4 else 0.0
    return CloudState(
        cover=cover,
        aerosol=float(r.uniform(0.7, 1.4)),
        cloud=CosineField.random(r, 40, 350.0, 14000.0, hurst=1.1),
        cirrus=CosineField.random(r, 16, 2000.0, 25000.0, hurst=1.0),
        threshold=_q(cover),
        cirrus_amount=0.0 if clear else cirrus,
    )


def clouds(
    cs: CloudState, geom: Geometry, sun: tuple[float, float], dtype: Any = np.float64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cloud opacity, shadow strength, cirrus reflectance) on a geometry."""
    a = smoothstep(cs.threshold, cs.threshold + 0.7, cs.cloud(geom, dtype=dtype))
    # the shadow at p is cast by the cloud at p + d (towards the sun)
    sz, saz = math.radians(sun[0]), math.radians(sun[1])
    dist = CLOUD_HEIGHT_M * math.tan(sz)
    dx, dy = dist * math.sin(saz), dist * math.cos(saz)
    sh = smoothstep(
        cs.threshold, cs.threshold + 0.7, cs.cloud(geom.shifted(dx, dy), dtype=dtype)
    ) * (1.0 - a)
    if cs.cirrus_amount > 0:
        # thin cirrus over ~15% of the scene where present
        ci = cs.cirrus_amount * smoothstep(0.9, 1.8, cs.cirrus(geom, dtype=dtype))
    else:
        ci = np.zeros(a.shape)
    return a, sh, ci


def observed_reflectance(
    rho: np.ndarray, a: np.ndarray, sh: np.ndarray, ci: np.ndarray, bands: tuple[str, ...]
) -> np.ndarray:
    """L2A reflectance: surface shadowed and covered by clouds (clouds are in L2A too)."""
    idx = _band_index(bands)
    cloud = SIG["cloud"][idx].astype(np.float32)
    a32 = a.astype(np.float32)
    keep = (1.0 - a32) * (1.0 - np.float32(SHADOW_DARKENING) * sh.astype(np.float32))
    ci32 = ci.astype(np.float32) / np.float32(0.7)
    out = np.empty(rho.shape, np.float32)
    for i in range(len(bands)):
        out[i] = rho[i] * keep
        out[i] += (a32 + ci32) * cloud[i]
    return out


def toa_reflectance(
    boa: np.ndarray, aerosol: float, ci: np.ndarray, a: np.ndarray, bands: tuple[str, ...]
) -> np.ndarray:
    """L1C: path radiance + transmitted surface; B10 sees only cirrus and high cloud tops."""
    idx = _band_index(bands)
    out = np.empty(boa.shape, np.float32)
    for i, b in enumerate(bands):
        if b == "B10":
            out[i] = (
                np.float32(0.0015)
                + np.float32(0.6) * ci.astype(np.float32)
                + np.float32(0.05) * a.astype(np.float32)
            )
            continue
        j = idx[i]
        p = np.float32(ATM_PATH[j] * (aerosol if j < 10 else 1.0))
        out[i] = p + np.float32(ATM_TRANS[j]) * boa[i] / (
            np.float32(1.0) - np.float32(ATM_SPH[j]) * boa[i]
        )
    return out


def to_dn(rho: np.ndarray) -> np.ndarray:
    """Reflectance -> DN (float32) with the baseline >= 04.00 offset, clipped to uint16 data."""
    out = rho * np.float32(QUANT)
    out += np.float32(BOA_ADD_OFFSET)
    return np.clip(out, 1.0, 65535.0, out=out)


def scl(lat: Latent, g: np.ndarray, a: np.ndarray, sh: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """Scene classification (uint8), decided like Sen2Cor's legend from the same state."""
    out = np.full(lat.cls.shape, SCL_NOT_VEG, np.uint8)
    out[(g > 0.3)] = SCL_VEG
    out[lat.cls == WATER] = SCL_WATER
    out[lat.cls == SNOW] = SCL_SNOW
    out[sh > 0.35] = SCL_SHADOW
    out[ci > 0.01] = SCL_CIRRUS
    out[a > 0.3] = SCL_CLOUD_MED
    out[a > 0.65] = SCL_CLOUD_HIGH
    return out


# --- Sentinel-1 ----------------------------------------------------------------------------

S1_POLS = ("VV", "VH")
S1_ENL = 4.4
# gamma0 (dB) per class: (VV, VH) for bare/senescent state and the green increment
_G0 = {
    WATER: ((-21.0, -29.5), (0.0, 0.0)),
    TREES: ((-8.5, -15.0), (1.0, 1.5)),
    FLOODED: ((-6.0, -16.5), (0.5, 1.0)),
    CROPS: ((-13.0, -22.5), (3.5, 6.5)),
    BUILT: ((-4.0, -11.0), (0.0, 0.0)),
    BARE: ((-15.5, -25.0), (0.0, 0.0)),
    SNOW: ((-14.0, -22.0), (0.0, 0.0)),
    RANGELAND: ((-12.5, -20.0), (1.5, 2.5)),
}


def s1_state(ls: Landscape, acq: Acquisition) -> tuple[float, float]:
    """(soil moisture dB offset, water roughness dB offset) of one acquisition."""
    r = rng_for(ls.seed, ls.spec.name, "s1-state", acq.day.isoformat())
    return float(r.uniform(-1.0, 1.0)), float(r.uniform(-2.0, 2.5))


_G0_LUT = _lut({c: (b[0], b[1], d[0], d[1]) for c, (b, d) in _G0.items()}, (0.0, 0.0, 0.0, 0.0))
_SOIL = np.zeros(16, np.float32)
_SOIL[[CROPS, BARE, RANGELAND]] = 1.0


def gamma0(ls: Landscape, lat: Latent, acq: Acquisition) -> np.ndarray:
    """Terrain-flattened backscatter gamma0 (2, ...) float32 in linear power."""
    moist, rough = s1_state(ls, acq)
    g = ls.greenness(lat, doy(acq.datetime)).astype(np.float32)
    c = lat.cls
    lut = _G0_LUT.astype(np.float32)
    var = np.float32(0.6) * lat.var.astype(np.float32)
    soil = _SOIL[c]
    water = (c == WATER).astype(np.float32)
    built = (c == BUILT).astype(np.float32)
    crops = (c == CROPS).astype(np.float32)
    p = lat.parcel.astype(np.float32) - np.float32(0.5)
    p2 = lat.parcel2.astype(np.float32) - np.float32(0.5)
    vv = (
        lut[c, 0]
        + lut[c, 2] * g
        + var
        + soil * np.float32(moist)
        + water * np.float32(rough)
        + built * 4.0 * p
        + crops * 1.5 * p2
    )
    vh = (
        lut[c, 1]
        + lut[c, 3] * g
        + var
        + soil * np.float32(0.7 * moist)
        + water * np.float32(0.5 * rough)
        + built * 3.0 * p
    )
    out = np.stack([vv, vh]).astype(np.float32)
    out *= np.float32(np.log(10.0) / 10.0)
    return np.exp(out, out=out)


@dataclass(frozen=True)
class LookGeometry:
    """Radar viewing geometry of one orbit over one region (frame coordinates)."""

    heading_deg: float  # azimuth of the along-track direction, clockwise from grid north
    inc_center_deg: float  # ellipsoid incidence at the region centre
    inc_per_m: float  # incidence change per metre of ground range

    @property
    def u_az(self) -> tuple[float, float]:
        h = math.radians(self.heading_deg)
        return (math.sin(h), math.cos(h))

    @property
    def u_rg(self) -> tuple[float, float]:
        """Ground-range direction (right-looking): along-track rotated 90 deg clockwise."""
        h = math.radians(self.heading_deg)
        return (math.cos(h), -math.sin(h))


def look_geometry(ls: Landscape, orbit_state: str) -> LookGeometry:
    r = rng_for(ls.seed, ls.spec.name, "look", orbit_state)
    lat = abs(ls.spec.center[1])
    tilt = 8.0 + 0.12 * lat  # track inclination against grid north grows with latitude
    heading = -tilt if orbit_state == "ascending" else 180.0 + tilt
    # 250 km swath spanning 29.1-46.0 deg incidence
    return LookGeometry(heading, float(r.uniform(31.0, 44.0)), (46.0 - 29.1) / 250_000.0)


def sigma0(
    ls: Landscape, lat: Latent, geom: Geometry, acq: Acquisition, g0: np.ndarray | None = None
) -> np.ndarray:
    """Ellipsoid-normalised backscatter sigma0 (2, ...): gamma0 * cos(theta) with the
    slope-dependent brightening of unflattened terrain (slopes facing the radar brighter)."""
    assert lat.hx is not None and lat.hy is not None
    if g0 is None:
        g0 = gamma0(ls, lat, acq)
    lg = look_geometry(ls, acq.orbit_state)
    f32 = np.float32
    rng_m = geom.linear(lg.u_rg[0], lg.u_rg[1]).astype(f32)
    theta = np.radians(f32(lg.inc_center_deg) + f32(lg.inc_per_m) * rng_m)
    st, ct = np.sin(theta), np.cos(theta)
    # look vector (ground -> satellite) is (-sin(t) u_rg, cos(t)); terrain normal (-hx, -hy, 1)
    norm = np.sqrt(f32(1.0) + lat.hx * lat.hx + lat.hy * lat.hy)
    cos_loc = (st * (lat.hx * f32(lg.u_rg[0]) + lat.hy * f32(lg.u_rg[1])) + ct) / norm
    # sigma0 = gamma0 cos(t) * clip(cos_loc / cos(t), 0.05, 4)
    factor = np.clip(cos_loc, f32(0.05) * ct, f32(4.0) * ct)
    return g0 * factor.astype(f32)[None]


# --- geometry helpers ------------------------------------------------------------------------


def as_points(x: np.ndarray, y: np.ndarray) -> Points:
    return Points(np.asarray(x, np.float64), np.asarray(y, np.float64))


def is_grid(geom: Geometry) -> bool:
    return isinstance(geom, Grid)
