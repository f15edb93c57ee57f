"""Seeded random fields that are exact functions of map coordinates.

A field is a sum of K cosines (spectral synthesis): ``f(p) = sum_k a_k cos(w_k . p + phi_k)``.
Two properties make it the right primitive for the world:

* it is defined at *any* point, so ``truth()`` at arbitrary lon/lat and every sensor grid
  sample the same landscape (no lattice, no resampling);
* on any affine pixel grid (north-up UTM tiles *and* rotated radar geometry) the angle
  addition formula splits each cosine into a row factor times a column factor, so a whole
  tile is one matrix product ``[cos R, -sin R] @ [cos C, sin C]^T`` -- tens of milliseconds
  per megapixel instead of one transcendental per pixel and component.

Amplitudes follow a power law in wavelength (fBm-like), normalised to unit standard
deviation, so thresholds on a field are roughly Gaussian quantiles.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

TWO_PI = 2.0 * np.pi


def stable_hash(*parts: object) -> int:
    """A process-independent 32-bit hash of strings/ints (``hash()`` is salted per process)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """A generator keyed by the world seed and a path of names (deterministic, independent)."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stable_hash(*parts)])
    )


@dataclass(frozen=True, eq=False)
class Grid:
    """An affine pixel grid in a region's frame: centre of pixel (row r, col c) is
    ``origin + c * dcol + r * drow`` (frame metres, relative to the region centre)."""

    origin: tuple[float, float]
    dcol: tuple[float, float]
    drow: tuple[float, float]
    shape: tuple[int, int]

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        r = np.arange(self.shape[0], dtype=np.float64)[:, None]
        c = np.arange(self.shape[1], dtype=np.float64)[None, :]
        x = self.origin[0] + c * self.dcol[0] + r * self.drow[0]
        y = self.origin[1] + c * self.dcol[1] + r * self.drow[1]
        return x, y

    def linear(self, ax: float, ay: float, b: float = 0.0) -> np.ndarray:
        """``ax * x + ay * y + b`` at every pixel centre (one broadcast add)."""
        r = np.arange(self.shape[0], dtype=np.float64)[:, None] * (
            ax * self.drow[0] + ay * self.drow[1]
        )
        c = np.arange(self.shape[1], dtype=np.float64)[None, :] * (
            ax * self.dcol[0] + ay * self.dcol[1]
        )
        return (r + (ax * self.origin[0] + ay * self.origin[1] + b)) + c

    def sub(self, r0: int, r1: int, c0: int, c1: int) -> Grid:
        """The window rows [r0, r1) x cols [c0, c1) as a grid of its own."""
        ox = self.origin[0] + c0 * self.dcol[0] + r0 * self.drow[0]
        oy = self.origin[1] + c0 * self.dcol[1] + r0 * self.drow[1]
        return Grid((ox, oy), self.dcol, self.drow, (r1 - r0, c1 - c0))

    def shifted(self, dx: float, dy: float) -> Grid:
        return Grid((self.origin[0] + dx, self.origin[1] + dy), self.dcol, self.drow, self.shape)


@dataclass(frozen=True, eq=False)
class Points:
    """Scattered points in a region's frame (metres relative to the region centre)."""

    x: np.ndarray
    y: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x, self.y

    def linear(self, ax: float, ay: float, b: float = 0.0) -> np.ndarray:
        return ax * self.x + ay * self.y + b

    def shifted(self, dx: float, dy: float) -> Points:
        return Points(self.x + dx, self.y + dy)


@dataclass(frozen=True, eq=False)
class Blocks:
    """A window of a grid in another CRS: blocks ``(r0, r1, c0, c1, Grid)`` (window-relative
    rows/cols), each affine in the frame. Fields are evaluated block by block as grids."""

    shape: tuple[int, int]
    blocks: tuple[tuple[int, int, int, int, Grid], ...]

    def _assemble(self, parts: list[np.ndarray], dtype: Any = np.float64) -> np.ndarray:
        out = np.empty(self.shape, dtype)
        for (r0, r1, c0, c1, _), v in zip(self.blocks, parts):
            out[r0:r1, c0:c1] = v
        return out

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        xy = [b[4].coords() for b in self.blocks]
        return self._assemble([p[0] for p in xy]), self._assemble([p[1] for p in xy])

    def linear(self, ax: float, ay: float, b: float = 0.0) -> np.ndarray:
        return self._assemble([blk[4].linear(ax, ay, b) for blk in self.blocks])

    def shifted(self, dx: float, dy: float) -> Blocks:
        return Blocks(
            self.shape,
            tuple((r0, r1, c0, c1, g.shifted(dx, dy)) for r0, r1, c0, c1, g in self.blocks),
        )

    def mapped(self, fn: Any) -> Blocks:
        """Apply a linear map (Grid -> Grid) to every block."""
        return Blocks(
            self.shape, tuple((r0, r1, c0, c1, fn(g)) for r0, r1, c0, c1, g in self.blocks)
        )


Geometry = Grid | Points | Blocks


@dataclass(frozen=True, eq=False)
class CosineField:
    """``f(p) = sum_k amp_k cos(omega_k . p + phase_k)``; unit standard deviation."""

    omega: np.ndarray  # (K, 2) radians per metre
    phase: np.ndarray  # (K,)
    amp: np.ndarray  # (K,)

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        k: int,
        lam_min: float,
        lam_max: float,
        hurst: float = 1.0,
        direction: tuple[float, float] | None = None,
    ) -> CosineField:
        """K components with log-uniform wavelengths in [lam_min, lam_max] metres.

        ``direction`` fixes all wave vectors along one unit vector: a 1-D profile along it
        (river meanders). Amplitude ~ wavelength**hurst (larger -> smoother).
        """
        # stratified log-wavelengths: every octave is represented even for small K
        u = (np.arange(k) + rng.uniform(0.0, 1.0, k)) / k
        lam = np.exp(np.log(lam_min) + u * (np.log(lam_max) - np.log(lam_min)))
        if direction is None:
            theta = rng.uniform(0.0, np.pi, k)
            dirs = np.stack([np.cos(theta), np.sin(theta)], axis=1)
        else:
            dirs = np.tile(np.asarray(direction, np.float64), (k, 1))
        omega = dirs * (TWO_PI / lam)[:, None]
        phase = rng.uniform(0.0, TWO_PI, k)
        amp = lam**hurst
        amp = amp / np.sqrt(0.5 * np.sum(amp**2))
        return cls(omega=omega, phase=phase, amp=amp)

    @property
    def k(self) -> int:
        return int(self.amp.shape[0])

    # -- evaluation ----------------------------------------------------------------------

    def __call__(self, geom: Geometry, grad: bool = False, dtype: Any = np.float64) -> Any:
        """Value (and optionally (df/dx, df/dy)) on a grid or at points."""
        if isinstance(geom, Grid):
            return self._grid(geom, grad, dtype)
        if isinstance(geom, Blocks):
            parts = [self._grid(b[4], grad, dtype) for b in geom.blocks]
            if not grad:
                return geom._assemble(parts, dtype)
            return (
                geom._assemble([p[0] for p in parts], dtype),
                (
                    geom._assemble([p[1][0] for p in parts]),
                    geom._assemble([p[1][1] for p in parts]),
                ),
            )
        return self._points(geom.x, geom.y, grad, dtype)

    def _grid(self, g: Grid, grad: bool, dtype: Any) -> Any:
        nr, nc = g.shape
        if nr == 0 or nc == 0:
            z = np.zeros(g.shape, dtype)
            return (z, (z, z)) if grad else z
        wx, wy = self.omega[:, 0], self.omega[:, 1]
        r = np.arange(nr, dtype=np.float64)[:, None]
        c = np.arange(nc, dtype=np.float64)[:, None]
        # row phases carry the origin and the constant phase; reduce mod 2pi in float64
        rphase = (wx * g.origin[0] + wy * g.origin[1] + self.phase) + r * (
            wx * g.drow[0] + wy * g.drow[1]
        )
        cphase = c * (wx * g.dcol[0] + wy * g.dcol[1])
        rphase = np.mod(rphase, TWO_PI)
        cphase = np.mod(cphase, TWO_PI)
        cr, sr = np.cos(rphase), np.sin(rphase)
        cc, sc = np.cos(cphase), np.sin(cphase)
        right = np.concatenate([cc, sc], axis=1).astype(dtype).T  # (2K, nc)
        # cos(R + C) = cosR cosC - sinR sinC
        left = np.concatenate([self.amp * cr, -self.amp * sr], axis=1).astype(dtype)
        val = left @ right
        if not grad:
            return val
        # d/dp cos(R + C) = -omega (sinR cosC + cosR sinC). Gradients only feed continuous
        # quantities (illumination, radar brightening): float32 is plenty and 5x faster.
        right32 = right.astype(np.float32, copy=False)
        lx = np.concatenate([-self.amp * wx * sr, -self.amp * wx * cr], axis=1)
        ly = np.concatenate([-self.amp * wy * sr, -self.amp * wy * cr], axis=1)
        both = np.concatenate([lx, ly], axis=0).astype(np.float32) @ right32
        return val, (both[:nr], both[nr:])

    def _points(self, x: np.ndarray, y: np.ndarray, grad: bool, dtype: Any) -> Any:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        shape = x.shape
        xf, yf = x.ravel(), y.ravel()
        n = xf.size
        val = np.empty(n, dtype)
        gx = np.empty(n, dtype) if grad else None
        gy = np.empty(n, dtype) if grad else None
        if n == 0:
            return (
                (val.reshape(shape), (val.reshape(shape), val.reshape(shape)))
                if grad
                else val.reshape(shape)
            )
        # phase reduction about the centroid keeps float32 phases accurate
        x0, y0 = float(np.mean(xf)), float(np.mean(yf))
        wx, wy = self.omega[:, 0], self.omega[:, 1]
        const = np.mod(wx * x0 + wy * y0 + self.phase, TWO_PI).astype(dtype)
        wxd, wyd, amp = wx.astype(dtype), wy.astype(dtype), self.amp.astype(dtype)
        chunk = max(1, 262144 // max(1, self.k))
        for s in range(0, n, chunk):
            dx = (xf[s : s + chunk] - x0).astype(dtype)[:, None]
            dy = (yf[s : s + chunk] - y0).astype(dtype)[:, None]
            th = dx * wxd
            th += dy * wyd
            th += const
            if grad:
                sn = np.sin(th)
                gx[s : s + chunk] = -(sn @ (amp * wxd))  # type: ignore[index]
                gy[s : s + chunk] = -(sn @ (amp * wyd))  # type: ignore[index]
            np.cos(th, out=th)
            val[s : s + chunk] = th @ amp
        if grad:
            return val.reshape(shape), (gx.reshape(shape), gy.reshape(shape))  # type: ignore[union-attr]
        return val.reshape(shape)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``e0`` to 1 at ``e1`` (e0 > e1 allowed: a falling step)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smoothstep_grad(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """d smoothstep / dx."""
    t = (x - e0) / (e1 - e0)
    inside = (t > 0.0) & (t < 1.0)
    return np.where(inside, 6.0 * t * (1.0 - t) / (e1 - e0), 0.0)


def hash_uniform(seed: int, *ints: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per integer tuple (parcel ids, building blocks): a vectorised integer
    hash, identical wherever it is evaluated."""
    h = np.full(np.broadcast(*ints).shape, (seed * 0x9E3779B1) & 0xFFFFFFFF, dtype=np.uint64)
    for i, v in enumerate(ints):
        h ^= (
            np.asarray(v, np.int64).astype(np.uint64) + np.uint64(0x7F4A7C15 + 0x632BE5AB * i)
        ) & np.uint64(0xFFFFFFFF)
        h = (h * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
        h ^= h >> np.uint64(13)
        h = (h * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
        h ^= h >> np.uint64(16)
    return h.astype(np.float64) / 4294967296.0
