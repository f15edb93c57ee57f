"""The latent landscape of a region: land cover, elevation and phenology as functions of
frame coordinates.

Elevation is built so that its relations to land cover are physical by construction:
``h = T(u) + R(p) * s(p)`` where ``T`` is a gentle regional trend falling along the flow
direction ``u``, ``R >= 0`` is relief and ``s`` in [0, 1] is 0 on water and rises across a
valley. So water is flat across and falls only with the trend (rivers run downhill), water
is never above the land next to it, and snow (``h`` above the regional snow line) sits on
the high ground. Land cover is a fixed precedence of thresholds on seeded fields, modulated
by relief (crops and towns on valley floors, forest on slopes, rock above the tree line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from terraloom.pipeline.world.noise import (
    Blocks,
    CosineField,
    Geometry,
    Grid,
    Points,
    hash_uniform,
    rng_for,
    smoothstep,
    smoothstep_grad,
)
from terraloom.pipeline.world.regions import RegionSpec

# Esri 9-class legend (io-lulc-9-class)
WATER, TREES, FLOODED, CROPS, BUILT, BARE, SNOW, CLOUDS, RANGELAND = 1, 2, 4, 5, 7, 8, 9, 10, 11
LAND_CLASSES = (WATER, TREES, FLOODED, CROPS, BUILT, BARE, SNOW, RANGELAND)
LAKE_BIAS = 3.0
HILL_SCALE_M = 600.0
MASSIF_RADIUS_M = 7000.0
"""Height above the valley floor at which crops and towns give way to forest and meadow."""


def _q(frac: float) -> float:
    """Threshold on a unit-variance field that leaves ``frac`` of the area above it."""
    frac = min(max(frac, 1e-6), 1 - 1e-6)
    # Acklam-free: inverse error function via Newton on erf (fields are ~Gaussian anyway)
    x = 0.0
    for _ in range(50):
        cdf = 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
        pdf = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        x -= (cdf - (1.0 - frac)) / max(pdf, 1e-12)
    return x


@dataclass
class Latent:
    """The landscape sampled on one geometry (arrays share the geometry's shape)."""

    h: np.ndarray | None  # elevation, m (None when read back from the generator's cache)
    cls: np.ndarray  # Esri class (uint8)
    var: np.ndarray  # within-class variation, ~N(0, 1)
    hill: np.ndarray  # height above the valley floor / HILL_SCALE_M, clipped to 1
    parcel: np.ndarray  # per-parcel uniform [0, 1) (crop calendar), blocks in towns
    parcel2: np.ndarray  # second per-parcel uniform (crop type / roughness)
    hx: np.ndarray | None = None  # dh/dx (frame x = grid east)
    hy: np.ndarray | None = None


class Landscape:
    """All latent fields of one region, rebuilt identically from (seed, spec)."""

    def __init__(self, seed: int, spec: RegionSpec) -> None:
        self.seed = seed
        self.spec = spec
        r = spec.name
        az = math.radians(spec.trend_azimuth)
        self.e_u = (math.sin(az), math.cos(az))  # flow direction
        self.e_v = (math.cos(az), -math.sin(az))
        self.elev = CosineField.random(rng_for(seed, r, "elev"), 64, 500.0, 24000.0, hurst=1.3)
        self.lake = CosineField.random(rng_for(seed, r, "lake"), 32, 700.0, 9000.0, hurst=1.0)
        self.forest = CosineField.random(rng_for(seed, r, "forest"), 40, 150.0, 7000.0, hurst=0.8)
        self.urban = CosineField.random(rng_for(seed, r, "urban"), 32, 250.0, 6000.0, hurst=1.1)
        self.agri = CosineField.random(rng_for(seed, r, "agri"), 32, 500.0, 12000.0, hurst=1.0)
        self.wet = CosineField.random(rng_for(seed, r, "wet"), 24, 90.0, 2500.0, hurst=0.7)
        self.var = CosineField.random(rng_for(seed, r, "var"), 32, 1200.0, 9000.0, hurst=1.0)
        self.meander = [
            CosineField.random(
                rng_for(seed, r, "river", i), 12, 1500.0, 16000.0, hurst=1.2, direction=self.e_v
            )
            for i in range(spec.n_rivers)
        ]
        # meanders displace the river across the flow: fields along e_v of u... see river()
        rr = rng_for(seed, r, "river-pos")
        half = spec.size_km * 500.0 + 5000.0
        base = np.linspace(-half, half, spec.n_rivers + 2)[1:-1] if spec.n_rivers else np.zeros(0)
        self.river_v0 = base + rr.uniform(-0.15, 0.15, spec.n_rivers) * (
            2 * half / max(1, spec.n_rivers + 1)
        )
        self.meander_amp = 0.12 * spec.valley_width + 500.0
        pr = rng_for(seed, r, "parcels")
        self.parcel_seed = int(pr.integers(0, 2**31 - 1))
        pa = math.radians(spec.parcel_angle)
        self.parcel_axes = ((math.cos(pa), math.sin(pa)), (-math.sin(pa), math.cos(pa)))
        self.parcel_off = tuple(pr.uniform(0.0, 1000.0, 2))
        # thresholds
        self.t_lake = _q(spec.lake_frac)
        self.t_urban = _q(spec.urban_frac)
        self.t_agri = _q(spec.crop_frac)
        self.t_forest = _q(spec.forest_frac)
        self.t_wet = _q(spec.wet_frac)

    # -- pieces -------------------------------------------------------------------------

    def _uv(self, geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
        return geom.linear(*self.e_u), geom.linear(*self.e_v)

    def _meander_geom(self, geom: Geometry) -> Geometry:
        # a meander is a 1-D profile in u; evaluate the e_v-directed field at p rotated so
        # that its argument is u: p' = u * e_v  (then omega . p' = |omega| u)
        def rot(vx: float, vy: float) -> tuple[float, float]:
            uu = vx * self.e_u[0] + vy * self.e_u[1]
            return (uu * self.e_v[0], uu * self.e_v[1])

        def rot_grid(g: Grid) -> Grid:
            return Grid(rot(*g.origin), rot(*g.dcol), rot(*g.drow), g.shape)

        if isinstance(geom, Grid):
            return rot_grid(geom)
        if isinstance(geom, Blocks):
            return geom.mapped(rot_grid)
        u, _ = self._uv(geom)
        return Points(u * self.e_v[0], u * self.e_v[1])

    def rivers(
        self, geom: Geometry, grad: bool, dtype: Any
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """Distance to the nearest river centreline (m, float32) and its gradient."""
        u, v = self._uv(geom)
        v = v.astype(np.float32)
        if self.spec.n_rivers == 0:
            d = np.full(u.shape, 1e9, np.float32)
            return d, ((np.zeros_like(d), np.zeros_like(d)) if grad else None)
        mg = self._meander_geom(geom)
        offs, dmdus = [], []
        for i, f in enumerate(self.meander):
            if grad:
                m, (mx, my) = f(mg, grad=True, dtype=dtype)
                # chain rule: m depends on u only; dm/du = mx*e_v.x + my*e_v.y
                dmdus.append((mx * self.e_v[0] + my * self.e_v[1]).astype(np.float32))
            else:
                m = f(mg, dtype=dtype)
            offs.append(
                v
                - np.float32(self.river_v0[i])
                - np.float32(self.meander_amp) * m.astype(np.float32)
            )
        best = np.abs(offs[0])
        which = np.zeros(best.shape, np.int8)
        for i in range(1, len(offs)):
            d = np.abs(offs[i])
            closer = d < best
            best = np.where(closer, d, best)
            which[closer] = i
        if not grad:
            return best, None
        off, dmdu = offs[0], dmdus[0]
        for i in range(1, len(offs)):
            sel = which == i
            off = np.where(sel, offs[i], off)
            dmdu = np.where(sel, dmdus[i], dmdu)
        sgn = np.sign(off)
        amp = np.float32(self.meander_amp)
        # d(off)/dp = e_v - amp * dm/du * e_u
        gx = sgn * (np.float32(self.e_v[0]) - amp * dmdu * np.float32(self.e_u[0]))
        gy = sgn * (np.float32(self.e_v[1]) - amp * dmdu * np.float32(self.e_u[1]))
        return best, (gx, gy)

    def parcels(
        self, geom: Geometry, where: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-parcel uniforms (float32): fields are rotated rectangles of ``parcel_size``;
        only evaluated ``where`` given (elsewhere 0)."""
        (ax, ay), (bx, by) = self.parcel_axes
        su, sv = self.spec.parcel_size
        pu = geom.linear(ax / su, ay / su, self.parcel_off[0])
        pv = geom.linear(bx / sv, by / sv, self.parcel_off[1])
        if where is None:
            where = np.ones(pu.shape, bool)
        iu = np.floor(pu[where]).astype(np.int64)
        iv = np.floor(pv[where]).astype(np.int64)
        p1 = np.zeros(pu.shape, np.float32)
        p2 = np.zeros(pu.shape, np.float32)
        p1[where] = hash_uniform(self.parcel_seed, iu, iv)
        p2[where] = hash_uniform(self.parcel_seed + 1, iu, iv)
        return p1, p2

    # -- the landscape ------------------------------------------------------------------
    # Fields are summed in float64 (one matrix product per field on grids); everything
    # downstream is float32, which is exact enough for any threshold (1e-7 relative).

    def terrain(
        self, geom: Geometry, grad: bool = False, precise: bool = True
    ) -> dict[str, np.ndarray]:
        """Elevation ``h`` (and its gradient), relief and the water-distance fields."""
        dtype = np.float64 if precise else np.float32
        sp = self.spec
        f32 = np.float32
        u, _ = self._uv(geom)
        d, dg = self.rivers(geom, grad, dtype)
        if grad:
            e, eg = self.elev(geom, grad=True, dtype=dtype)
            lk, lg = self.lake(geom, grad=True, dtype=dtype)
            eg = (eg[0].astype(f32), eg[1].astype(f32))
            lg = (lg[0].astype(f32), lg[1].astype(f32))
        else:
            e = self.elev(geom, dtype=dtype)
            lk = self.lake(geom, dtype=dtype)
        e = e.astype(f32, copy=False)
        # z: relief "potential"; a massif (a Gaussian dome of the logistic argument) around
        # the region centre makes the core of a mountain region reliably high
        z = f32(1.5) * e
        if sp.massif:
            x, y = geom.coords()
            r2 = (x * x + y * y).astype(f32)
            dome = f32(sp.massif) * np.exp(r2 * f32(-0.5 / MASSIF_RADIUS_M**2))
            z = z + dome
        sig = f32(1.0) / (f32(1.0) + np.exp(-z))
        relief = f32(sp.relief) * sig
        # lakes fill low ground: the lake field is biased down where relief is high
        lk = lk.astype(f32, copy=False) + f32(LAKE_BIAS) * (f32(0.35) - sig)
        s_r = smoothstep(sp.river_half_width, sp.valley_width, d)
        q_l = smoothstep(self.t_lake, self.t_lake - 0.6, lk)
        s = s_r * q_l
        trend = (sp.elev_base - sp.trend_slope * u).astype(f32, copy=False)
        out = {"h": trend + relief * s, "relief": relief * s, "d": d, "lake": lk}
        if grad:
            assert dg is not None
            zx, zy = f32(1.5) * eg[0], f32(1.5) * eg[1]
            if sp.massif:
                k = dome * f32(-1.0 / MASSIF_RADIUS_M**2)
                zx = zx + k * x.astype(f32)
                zy = zy + k * y.astype(f32)
            dsig = sig * (f32(1.0) - sig)  # d sig / dz
            ds_r = smoothstep_grad(sp.river_half_width, sp.valley_width, d)
            dq_l = smoothstep_grad(self.t_lake, self.t_lake - 0.6, lk)
            a = s * f32(sp.relief) * dsig
            b = relief * q_l * ds_r
            c = relief * s_r * dq_l
            out["hx"] = (
                f32(-sp.trend_slope * self.e_u[0])
                + a * zx
                + b * dg[0]
                + c * (lg[0] - f32(LAKE_BIAS) * dsig * zx)
            )
            out["hy"] = (
                f32(-sp.trend_slope * self.e_u[1])
                + a * zy
                + b * dg[1]
                + c * (lg[1] - f32(LAKE_BIAS) * dsig * zy)
            )
        return out

    def latent(self, geom: Geometry, grad: bool = False, precise: bool = True) -> Latent:
        """Sample the landscape. ``precise`` sums the fields in float64 (``truth``); the
        generator uses float32 sums (1e-7 relative: a pixel flips class only if its field is
        within 1e-7 of a threshold)."""
        dtype = np.float64 if precise else np.float32
        sp = self.spec
        f32 = np.float32
        ter = self.terrain(geom, grad, precise)
        h, d, lk = ter["h"], ter["d"], ter["lake"]
        hx, hy = ter.get("hx"), ter.get("hy")
        hill = np.minimum(ter["relief"] / f32(HILL_SCALE_M), f32(1.0))
        var = self.var(geom, dtype=dtype).astype(f32, copy=False)
        fo = self.forest(geom, dtype=dtype).astype(f32, copy=False)
        ur = self.urban(geom, dtype=dtype).astype(f32, copy=False)
        ag = self.agri(geom, dtype=dtype).astype(f32, copy=False)
        we = self.wet(geom, dtype=dtype).astype(f32, copy=False)

        water = (d < sp.river_half_width) | (lk > self.t_lake)
        cls = np.full(h.shape, RANGELAND, np.uint8)
        if sp.arid:
            # desert beyond the irrigated belt; a few oases of rangeland
            belt = d < sp.irrigated_width * (f32(1.0) + f32(0.15) * we)
            cls[~belt] = BARE
            cls[~belt & (var > 1.6)] = RANGELAND
            green_ok = belt
        else:
            green_ok = np.ones(h.shape, bool)
        cls[green_ok & (fo > f32(self.t_forest) - f32(1.6) * hill)] = TREES
        cls[green_ok & (ag > f32(self.t_agri) + f32(3.0) * hill)] = CROPS
        cls[ur > f32(self.t_urban) + f32(3.0) * hill] = BUILT
        near_water = (
            d < f32(sp.river_half_width) + f32(120.0) * np.clip(we + f32(1.0), 0.0, None)
        ) | (lk > f32(self.t_lake - 0.35))
        cls[near_water & (we > self.t_wet) & (ter["relief"] < 6.0)] = FLOODED
        cls[h > f32(sp.tree_line) + f32(60.0) * var] = BARE
        cls[h > f32(sp.snow_line) + f32(40.0) * np.clip(var + f32(2.0), 0.0, None)] = SNOW
        cls[water] = WATER
        parcel, parcel2 = self.parcels(geom, where=(cls == CROPS) | (cls == BUILT))
        return Latent(
            h=h, cls=cls, var=var, hill=hill, parcel=parcel, parcel2=parcel2, hx=hx, hy=hy
        )

    # -- phenology ----------------------------------------------------------------------

    def greenness(self, lat: Latent, doy: float) -> np.ndarray:
        """Green vegetation fraction 0..1 (float32) at day-of-year ``doy`` (crops: per-parcel
        calendar)."""
        sp = self.spec
        f32 = np.float32
        bell = math.exp(-(((doy - sp.pheno_peak_doy) / 45.0) ** 2))
        base = np.zeros(16, f32)
        base[TREES] = 0.78 + 0.15 * bell
        base[FLOODED] = 0.55 + 0.25 * bell
        base[RANGELAND] = 0.25 + 0.3 * bell
        base[BUILT] = 0.08
        c = lat.cls
        g = base[c]
        built = c == BUILT
        g[built] += f32(0.12) * lat.parcel2[built].astype(f32, copy=False)
        crops = c == CROPS
        if np.any(crops):
            # sowing dates spread over +-35 days; 12% fallow / harvested parcels
            pk = f32(sp.pheno_peak_doy) + (lat.parcel[crops].astype(f32) - f32(0.5)) * f32(70.0)
            cb = np.exp(-(((f32(doy) - pk) / f32(40.0)) ** 2))
            g[crops] = np.where(lat.parcel2[crops] < 0.12, f32(0.05), f32(0.08) + f32(0.87) * cb)
        g += f32(0.04) * lat.var.astype(f32) * (g > 0)
        return np.clip(g, f32(0.0), f32(1.0))
