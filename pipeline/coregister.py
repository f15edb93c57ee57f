"""Co-registration: bring source windows onto a sample's 10 m UTM grid.

The sample grid (:class:`TargetGrid`) is the plan's ``epsg`` + ``transform`` + 264 x 264.
Sources arrive as in-memory :class:`~pipeline.readers.RasterWindow` s (read once per
block, see ``pipeline.sample``), so warping a sample never touches the file again:

* same CRS, same pixel size, integer pixel offset (Sentinel-2 10 m bands in the sample's
  own zone, Esri LULC): an exact slice, no resampling at all;
* otherwise ``rasterio.warp.reproject`` from the window's affine transform, or from its
  GCPs (Sentinel-1 GRD radar geometry; thin-plate spline by default, exact at every GCP);
* resampling per the registry; SAR is resampled as linear power and converted to dB
  afterwards (:func:`to_linear_power`, :func:`power_to_db`), because averaging dB values
  biases the backscatter low.

Everything here works in float32 with NaN as nodata, so nodata propagates through
bilinear kernels and mosaics (:func:`mosaic_first_valid`) without per-dtype sentinels.

Why one module of ~680 lines: it is one operation, a warp onto the sample grid, in its
steps: the target grid, the source windows it needs (and their clustering), the coordinate
field and the samplers that resample along it, the mosaic and the SAR power/dB round trip.
The samplers are the warp's kernels; apart from the grid they serve nothing else.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling as GdalResampling
from rasterio.transform import GCPTransformer
from rasterio.warp import reproject
from rasterio.warp import transform as warp_points
from rasterio.windows import Window

from terraloom.pipeline.readers import AssetInfo, RasterWindow, affine_xy
from terraloom.schemas.modalities import RESOLUTION_M, SAMPLE_PX, Modality, Resampling

__all__ = [
    "TargetGrid",
    "cluster_windows",
    "gdal_resampling",
    "mosaic_first_valid",
    "PointSampler",
    "SeparableSampler",
    "point_sampler",
    "power_to_db",
    "resample_points",
    "source_coords",
    "source_window",
    "to_linear_power",
    "warp_to_grid",
]


@dataclass(frozen=True)
class TargetGrid:
    """The 10 m UTM grid of one sample: CRS, affine transform and size."""

    epsg: int
    transform: Affine
    width: int = SAMPLE_PX
    height: int = SAMPLE_PX

    @classmethod
    def from_plan(cls, row: dict) -> TargetGrid:
        """The grid of a PLAN_SCHEMA row (``epsg``, ``transform``, ``width``, ``height``)."""
        return cls(
            epsg=int(row["epsg"]),
            transform=Affine(*[float(v) for v in row["transform"][:6]]),
            width=int(row.get("width") or SAMPLE_PX),
            height=int(row.get("height") or SAMPLE_PX),
        )

    @cached_property
    def crs(self) -> CRS:
        return CRS.from_epsg(self.epsg)

    @property
    def resolution(self) -> float:
        return float(math.hypot(self.transform.a, self.transform.d))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        from terraloom.pipeline.readers import pixel_bounds

        return pixel_bounds(self.transform, self.height, self.width)

    def boundary(self, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Points along the grid's outer edge (``n`` per side), in the grid's CRS."""
        t = np.linspace(0.0, 1.0, n + 1)[:-1]
        cols = np.concatenate(
            [t * self.width, np.full(n, self.width), (1 - t) * self.width, np.zeros(n)]
        )
        rows = np.concatenate(
            [np.zeros(n), t * self.height, np.full(n, self.height), (1 - t) * self.height]
        )
        xs, ys = affine_xy(self.transform, cols, rows)
        return np.asarray(xs, float), np.asarray(ys, float)

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of every pixel centre, each (height, width), in the grid's CRS."""
        cols, rows = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        xs, ys = affine_xy(self.transform, cols, rows)
        return np.asarray(xs, float), np.asarray(ys, float)

    def pixel_centres_lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        """(lon, lat) of every pixel centre, each (height, width)."""
        from pyproj import Transformer

        xs, ys = self.pixel_centres()
        tr = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        lon, lat = tr.transform(xs, ys)
        return np.asarray(lon), np.asarray(lat)

    def centre_lonlat(self) -> tuple[float, float]:
        from pyproj import Transformer

        x, y = affine_xy(self.transform, self.width / 2, self.height / 2)
        lon, lat = Transformer.from_crs(self.epsg, 4326, always_xy=True).transform(x, y)
        return float(lon), float(lat)


def gdal_resampling(r: Resampling) -> GdalResampling:
    """Registry resampling -> GDAL resampling of the warp itself."""
    return {
        Resampling.BILINEAR: GdalResampling.bilinear,
        Resampling.BILINEAR_POWER_DB: GdalResampling.bilinear,
        Resampling.CUBIC: GdalResampling.cubic,
        Resampling.NEAREST: GdalResampling.nearest,
        Resampling.MODE: GdalResampling.mode,
    }.get(r, GdalResampling.nearest)


def _kernel_margin(r: GdalResampling) -> int:
    return {GdalResampling.nearest: 1, GdalResampling.bilinear: 2}.get(r, 3)


def source_window(
    info: AssetInfo,
    grid: TargetGrid,
    resampling: GdalResampling = GdalResampling.bilinear,
    *,
    tps: bool = True,
) -> Window | None:
    """Pixel window of ``info`` that covers ``grid`` (plus the kernel's margin).

    None when the grid does not overlap the asset. For GCP-georeferenced assets the
    footprint goes through the same GCP transformer family the warp uses.
    """
    bx, by = grid.boundary()
    src_crs = info.source_crs
    if src_crs is None:
        return None
    if src_crs == grid.crs:
        xs, ys = bx, by
    else:
        xs_l, ys_l = warp_points(grid.crs, src_crs, bx.tolist(), by.tolist())
        xs, ys = np.asarray(xs_l), np.asarray(ys_l)
    ok = np.isfinite(xs) & np.isfinite(ys)
    if not ok.any():
        return None
    xs, ys = xs[ok], ys[ok]
    if info.transform is not None:
        cols, rows = affine_xy(~info.transform, xs, ys)
        cols, rows = np.asarray(cols), np.asarray(rows)
    else:
        with GCPTransformer(list(info.gcps), tps=tps) as gt:
            rows_l, cols_l = gt.rowcol(xs.tolist(), ys.tolist(), op=float)
        rows, cols = np.asarray(rows_l, float), np.asarray(cols_l, float)
    m = _kernel_margin(resampling)
    c0 = max(0, math.floor(cols.min()) - m)
    r0 = max(0, math.floor(rows.min()) - m)
    c1 = min(info.width, math.ceil(cols.max()) + m)
    r1 = min(info.height, math.ceil(rows.max()) + m)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _union(a: Window, b: Window) -> Window:
    c0 = min(a.col_off, b.col_off)
    r0 = min(a.row_off, b.row_off)
    c1 = max(a.col_off + a.width, b.col_off + b.width)
    r1 = max(a.row_off + a.height, b.row_off + b.height)
    return Window(c0, r0, c1 - c0, r1 - r0)


def _area(w: Window) -> float:
    return float(w.width) * float(w.height)


def cluster_windows(
    windows: Sequence[Window], slack: float = 2.0
) -> list[tuple[Window, list[int]]]:
    """Group windows into few reads: merge while a merged read decodes at most ``slack``
    times the pixels its members need (so adjacent samples share one read, distant ones
    do not drag a huge empty window along). Deterministic for a given input order.
    """
    clusters: list[tuple[Window, list[int], float]] = [
        (w, [i], _area(w)) for i, w in enumerate(windows)
    ]
    merged = True
    while merged and len(clusters) > 1:
        merged = False
        best: tuple[float, int, int] | None = None
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                u = _union(clusters[i][0], clusters[j][0])
                need = clusters[i][2] + clusters[j][2]
                ratio = _area(u) / max(need, 1.0)
                if ratio <= slack and (best is None or ratio < best[0]):
                    best = (ratio, i, j)
        if best is not None:
            _, i, j = best
            wi, mi, ai = clusters[i]
            wj, mj, aj = clusters[j]
            clusters[i] = (_union(wi, wj), sorted(mi + mj), ai + aj)
            del clusters[j]
            merged = True
    return [(w, members) for w, members, _ in clusters]


def _integer_offset(src: RasterWindow, grid: TargetGrid) -> tuple[int, int] | None:
    """(row, col) of the grid's origin in the source window when a slice suffices."""
    t = src.transform
    g = grid.transform
    if t is None or src.crs != grid.crs:
        return None
    if not (
        math.isclose(t.a, g.a, rel_tol=1e-9)
        and math.isclose(t.e, g.e, rel_tol=1e-9)
        and t.b == 0
        and t.d == 0
        and g.b == 0
        and g.d == 0
    ):
        return None
    col = (g.c - t.c) / t.a
    row = (g.f - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(row)), int(round(col))


def _slice(data: np.ndarray, row: int, col: int, grid: TargetGrid) -> np.ndarray:
    out = np.full((*data.shape[:-2], grid.height, grid.width), np.nan, np.float32)
    h, w = data.shape[-2:]
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + grid.height, h), min(col + grid.width, w)
    if r1 > r0 and c1 > c0:
        out[..., r0 - row : r1 - row, c0 - col : c1 - col] = data[..., r0:r1, c0:c1]
    return out


#: Largest source-pixels-per-target-pixel ratio the point-sampling resampler handles; a
#: finer source needs an area-aware kernel and goes through GDAL's warper.
_MAX_POINT_SCALE = 1.5


def _lattice(n: int, step: int) -> np.ndarray:
    pts = np.arange(0, n, step, dtype=np.float64)
    if pts[-1] != n - 1:
        pts = np.append(pts, n - 1)
    return pts


def source_coords(
    src: RasterWindow, grid: TargetGrid, *, tps: bool = True, step: int = 8
) -> tuple[np.ndarray, np.ndarray, float]:
    """Continuous source pixel coordinates (row, col) of every target pixel centre, and
    the source-pixels-per-target-pixel scale.

    The exact transform (pyproj, or the GCP thin-plate spline / polynomial) is evaluated
    on a lattice every ``step`` px and interpolated bilinearly in between, as GDAL's
    approximate transformer does along scanlines; over 80 m the projection is linear to
    far below 1/1000 px.
    """
    lat = _lattice_coords(src, grid, tps=tps, step=step)
    iy, fy = _interp_weights(grid.height, lat.step)
    ix, fx = _interp_weights(grid.width, lat.step)
    return _lerp2(lat.rows, iy, fy, ix, fx), _lerp2(lat.cols, iy, fy, ix, fx), lat.scale


@dataclass(frozen=True)
class _Lattice:
    """Source pixel coordinates (rows, cols) at the lattice points (ly, lx) of the target
    grid, and the source-pixels-per-target-pixel scale."""

    ly: np.ndarray
    lx: np.ndarray
    step: int
    rows: np.ndarray
    cols: np.ndarray
    scale: float


def _lattice_coords(src: RasterWindow, grid: TargetGrid, *, tps: bool, step: int) -> _Lattice:
    ly = _lattice(grid.height, step)
    lx = _lattice(grid.width, step)
    xs, ys = _lattice_points(grid, src.crs, step)
    base = src.base_transform is not None or bool(src.base_gcps)
    transform = src.base_transform if base else src.transform
    gcps = src.base_gcps if base else src.gcps
    if transform is not None:
        cols_l, rows_l = affine_xy(~transform, xs, ys)
        cols_l, rows_l = np.asarray(cols_l, np.float64), np.asarray(rows_l, np.float64)
    else:
        with GCPTransformer(list(gcps), tps=tps) as gt:
            r, c = gt.rowcol(xs.ravel().tolist(), ys.ravel().tolist(), op=float)
        rows_l = np.asarray(r, np.float64).reshape(xs.shape)
        cols_l = np.asarray(c, np.float64).reshape(xs.shape)
    if base:  # asset pixel space -> this window's pixel space (integer shifts: exact)
        r0, c0, sy, sx = src.placement
        rows_l = (rows_l - r0) / sy
        cols_l = (cols_l - c0) / sx
    # scale: source pixels per target pixel along either axis of the lattice
    step_x = np.hypot(np.diff(cols_l, axis=1), np.diff(rows_l, axis=1)) / np.diff(lx)[None, :]
    step_y = np.hypot(np.diff(cols_l, axis=0), np.diff(rows_l, axis=0)) / np.diff(ly)[:, None]
    scale = float(max(np.nanmax(step_x), np.nanmax(step_y)))
    return _Lattice(ly, lx, step, rows_l, cols_l, scale)


#: (grid, source CRS WKT, step) -> the lattice points in the source CRS, for the last few
#: grids: a sample's grid meets several sources in one foreign CRS (the DEM's tiles, in
#: EPSG:4326), and the projection of its lattice is the same for each.
_POINTS_CACHE: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_POINTS_CACHE_SIZE = 64


def _lattice_points(grid: TargetGrid, crs: CRS, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the lattice points' pixel centres of ``grid`` in ``crs`` (read-only)."""
    same = crs == grid.crs
    key = (grid, None if same else crs.to_wkt(), step)
    hit = _POINTS_CACHE.get(key)
    if hit is not None:
        return hit
    ly = _lattice(grid.height, step)
    lx = _lattice(grid.width, step)
    cc, rr = np.meshgrid(lx + 0.5, ly + 0.5)
    xs, ys = affine_xy(grid.transform, cc, rr)
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if not same:
        tx, ty = warp_points(grid.crs, crs, xs.ravel().tolist(), ys.ravel().tolist())
        xs = np.asarray(tx, np.float64).reshape(cc.shape)
        ys = np.asarray(ty, np.float64).reshape(cc.shape)
    xs.flags.writeable = False
    ys.flags.writeable = False
    _POINTS_CACHE[key] = (xs, ys)
    while len(_POINTS_CACHE) > _POINTS_CACHE_SIZE:
        try:
            _POINTS_CACHE.popitem(last=False)
        except KeyError:  # another thread emptied it
            break
    return xs, ys


@functools.lru_cache(maxsize=16)
def _interp_weights(n: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """For 0..n-1: the interval index and the fraction along it on ``_lattice(n, step)``;
    the same for every sample grid, so computed once (read-only)."""
    pts = _lattice(n, step)
    x = np.arange(n, dtype=np.float64)
    i = np.clip(np.searchsorted(pts, x, side="right") - 1, 0, len(pts) - 2)
    f = (x - pts[i]) / (pts[i + 1] - pts[i])
    i.flags.writeable = False
    f.flags.writeable = False
    return i, f


def _lerp2(
    v: np.ndarray, iy: np.ndarray, fy: np.ndarray, ix: np.ndarray, fx: np.ndarray
) -> np.ndarray:
    """Separable linear interpolation of lattice values ``v`` onto the full grid."""
    a = v[iy] * (1 - fy)[:, None] + v[iy + 1] * fy[:, None]
    out: np.ndarray = a[:, ix] * (1 - fx)[None, :] + a[:, ix + 1] * fx[None, :]
    return out


def _lerp2_column0(
    v: np.ndarray, iy: np.ndarray, fy: np.ndarray, ix: np.ndarray, fx: np.ndarray
) -> np.ndarray:
    """``_lerp2(v, ...)[:, 0]`` without the other columns: the same operations on the
    same values, so the same bits (an axis-aligned sampler needs one column)."""
    cols = [int(ix[0]), int(ix[0]) + 1]
    a = v[iy][:, cols] * (1 - fy)[:, None] + v[iy + 1][:, cols] * fy[:, None]
    out: np.ndarray = a[:, 0] * (1 - fx[0]) + a[:, 1] * fx[0]
    return out


def _lerp2_row0(
    v: np.ndarray, iy: np.ndarray, fy: np.ndarray, ix: np.ndarray, fx: np.ndarray
) -> np.ndarray:
    """``_lerp2(v, ...)[0, :]`` without the other rows (same operations, same bits)."""
    a = v[iy[0]] * (1 - fy[0]) + v[iy[0] + 1] * fy[0]
    out: np.ndarray = a[ix] * (1 - fx) + a[ix + 1] * fx
    return out


class PointSampler:
    """Bilinear / nearest sampling of a source window at fixed continuous coordinates.

    Indices and weights are computed once per (source geometry, target grid) and reused
    for every band, which is what makes per-band cost a few gathers. Bilinear is
    nodata-aware the way GDAL's kernel is: weights of nodata neighbours are dropped and
    the rest renormalised; a point outside the source is nodata.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, src_shape: tuple[int, int]) -> None:
        h, w = src_shape
        self.shape = rows.shape
        self.src_shape = (h, w)
        r = rows.ravel()
        c = cols.ravel()
        self._r = r
        self._c = c
        y0 = np.floor(r - 0.5)
        x0 = np.floor(c - 0.5)
        fy = (r - 0.5 - y0).astype(np.float32)
        fx = (c - 0.5 - x0).astype(np.float32)
        y0i = y0.astype(np.intp)
        x0i = x0.astype(np.intp)
        # weights of out-of-range neighbours are zero; indices are clamped to stay valid
        wy0 = np.where((y0i >= 0) & (y0i < h), 1 - fy, np.float32(0))
        wy1 = np.where((y0i >= -1) & (y0i < h - 1), fy, np.float32(0))
        wx0 = np.where((x0i >= 0) & (x0i < w), 1 - fx, np.float32(0))
        wx1 = np.where((x0i >= -1) & (x0i < w - 1), fx, np.float32(0))
        yc0 = np.clip(y0i, 0, h - 1) * w
        yc1 = np.clip(y0i + 1, 0, h - 1) * w
        xc0 = np.clip(x0i, 0, w - 1)
        xc1 = np.clip(x0i + 1, 0, w - 1)
        self.idx = np.stack([yc0 + xc0, yc0 + xc1, yc1 + xc0, yc1 + xc1])
        wts = np.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1])
        total = wts.sum(axis=0)
        self.total = total
        self.raw_wts = wts
        # renormalised for points whose neighbours are partly outside the source
        self.wts = wts / np.where(total > 1e-5, total, np.float32(1))
        self._nearest: np.ndarray | None = None

    # The footprint masks serve nearest sampling and samples without ``weight``; a
    # mosaic's bilinear warp needs neither, so they are computed on first use.
    @cached_property
    def inside(self) -> np.ndarray:
        """Points inside the source window (GDAL's footprint)."""
        h, w = self.src_shape
        r, c = self._r, self._c
        out: np.ndarray = (r >= 0) & (r <= h) & (c >= 0) & (c <= w)
        return out

    @cached_property
    def bilinear_ok(self) -> np.ndarray:
        out: np.ndarray = self.inside & (self.total > 1e-5)
        return out

    @property
    def nearest(self) -> np.ndarray:
        if self._nearest is None:
            h, w = self.src_shape
            iy = np.clip(np.floor(self._r), 0, h - 1).astype(np.intp)
            ix = np.clip(np.floor(self._c), 0, w - 1).astype(np.intp)
            self._nearest = iy * w + ix
        return self._nearest

    def sample(
        self, data: np.ndarray, resampling: GdalResampling, weight: np.ndarray | None = None
    ) -> np.ndarray:
        """(bands, h, w) float32 -> (bands, H, W) float32, NaN nodata.

        Without ``weight`` the footprint is GDAL's: a point outside the source is nodata.
        With ``weight`` ((bands, H, W) float32, filled here) every point whose kernel
        touches valid data gets a value, and ``weight`` says how much of the kernel that
        is (1 = complete). Mosaics use it to prefer complete values and to merge two
        scenes' partial kernels at a seam (bilinear on the merged source); a point whose
        merged weight stays below 0.5 lies outside every source (GDAL's footprint again).
        """
        b = data.shape[0]
        flat = data.reshape(b, -1)
        out = np.full((b, self.inside.size), np.nan, np.float32)
        wout = weight.reshape(b, -1) if weight is not None else None
        if resampling is GdalResampling.nearest:
            vals = flat[:, self.nearest]
            out[:, self.inside] = vals[:, self.inside]
            if wout is not None:
                wout[:] = np.isfinite(out)
            return out.reshape(b, *self.shape)
        region = self.bilinear_ok if wout is None else self.total > 1e-5
        for i in range(b):
            v = flat[i][self.idx]  # (4, N)
            nan = np.isnan(v)
            if not nan.any():
                res = np.einsum("kn,kn->n", v, self.wts)
                out[i, region] = res[region]
                if wout is not None:
                    wout[i] = np.where(region, self.total, 0)
                continue
            w = np.where(nan, np.float32(0), self.raw_wts)
            den = w.sum(axis=0)
            num = np.einsum("kn,kn->n", np.where(nan, np.float32(0), v), w)
            ok = den > 1e-5
            if wout is None:
                ok &= self.inside
            out[i, ok] = num[ok] / den[ok]
            if wout is not None:
                wout[i] = np.where(ok, den, 0)
        return out.reshape(b, *self.shape)


class SeparableSampler:
    """:class:`PointSampler` for an axis-aligned source (same CRS, north-up lattices): a
    target row maps to one source row coordinate and a target column to one source
    column coordinate, so bilinear weights factor into a row pass and a column pass.

    Same results as :class:`PointSampler` (to float rounding) at a fraction of the cost:
    two strided 2-tap passes instead of four gathers per pixel. Data with nodata (NaN)
    needs per-pixel renormalisation; it goes to the general sampler, built on demand.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, src_shape: tuple[int, int]) -> None:
        h, w = src_shape
        self.src_shape = (h, w)
        self.shape = (len(rows), len(cols))
        self._rows, self._cols = rows, cols
        iny = (rows >= 0) & (rows <= h)
        inx = (cols >= 0) & (cols <= w)
        self.inside = (iny[:, None] & inx[None, :]).ravel()
        self._y = self._taps(rows, h)
        self._x = self._taps(cols, w)
        ty, tx = self._y[4], self._x[4]
        self.total = (ty[:, None] * tx[None, :]).ravel()
        self.bilinear_ok = self.inside & (self.total > 1e-5)
        self._iy = np.clip(np.floor(rows), 0, h - 1).astype(np.intp)
        self._ix = np.clip(np.floor(cols), 0, w - 1).astype(np.intp)
        # the source columns the bilinear taps touch: the row pass runs over these only,
        # not over the whole (shared, often much wider) read window
        x0, x1 = self._x[0], self._x[1]
        self._xlo = int(min(x0.min(), x1.min()))
        self._xhi = int(max(x0.max(), x1.max())) + 1
        self._x0 = x0 - self._xlo
        self._x1 = x1 - self._xlo
        self._inside_all = bool(self.inside.all())
        self._ok_all = bool(self.bilinear_ok.all())
        self._total_all = bool((self.total > 1e-5).all())
        self._weight = np.where(self.total > 1e-5, self.total, np.float32(0))
        self._general: PointSampler | None = None

    @staticmethod
    def _taps(coord: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
        """Two neighbours and their renormalised weights along one axis, and the raw total."""
        c0 = np.floor(coord - 0.5)
        f = (coord - 0.5 - c0).astype(np.float32)
        c0i = c0.astype(np.intp)
        w0 = np.where((c0i >= 0) & (c0i < n), 1 - f, np.float32(0))
        w1 = np.where((c0i >= -1) & (c0i < n - 1), f, np.float32(0))
        total = (w0 + w1).astype(np.float32)
        safe = np.where(total > 1e-5, total, np.float32(1))
        i0 = np.clip(c0i, 0, n - 1)
        i1 = np.clip(c0i + 1, 0, n - 1)
        return i0, i1, (w0 / safe).astype(np.float32), (w1 / safe).astype(np.float32), total

    def general(self) -> PointSampler:
        if self._general is None:
            rows = np.broadcast_to(self._rows[:, None], self.shape)
            cols = np.broadcast_to(self._cols[None, :], self.shape)
            self._general = PointSampler(rows, cols, self.src_shape)
        return self._general

    def sample(
        self,
        data: np.ndarray,
        resampling: GdalResampling,
        weight: np.ndarray | None = None,
        *,
        has_nan: bool | None = None,
    ) -> np.ndarray:
        """As :meth:`PointSampler.sample`. ``has_nan``: whether ``data`` holds a NaN, when
        the caller knows (a read window shared by many samples is scanned once, not once
        per sample)."""
        b = data.shape[0]
        if resampling is GdalResampling.nearest:
            # two 1-D gathers (np.take) instead of one 2-D fancy index: the same values
            out = np.take(np.take(data, self._iy, axis=1), self._ix, axis=2)
            out = out.astype(np.float32, copy=False).reshape(b, -1)
            if not self._inside_all:
                out[:, ~self.inside] = np.nan
            if weight is not None:
                weight.reshape(b, -1)[:] = np.isfinite(out)
            return out.reshape(b, *self.shape)
        if has_nan is None:
            has_nan = bool(np.isnan(data).any())
        if has_nan:
            return self.general().sample(data, resampling, weight)
        y0, y1, wy0, wy1, _ = self._y
        x0, x1, wx0, wx1 = self._x0, self._x1, self._x[2], self._x[3]
        # rows = d[y0] * wy0 + d[y1] * wy1, then full = rows[x0] * wx0 + rows[x1] * wx1:
        # the same float32 operations as written out, in place on 1-D gathers
        sub = data[:, :, self._xlo : self._xhi]
        rows = np.take(sub, y0, axis=1)
        rows *= wy0[None, :, None]
        other = np.take(sub, y1, axis=1)
        other *= wy1[None, :, None]
        rows += other
        full = np.take(rows, x0, axis=2)
        full *= wx0
        other = np.take(rows, x1, axis=2)
        other *= wx1
        full += other
        if weight is None:
            region, region_all = self.bilinear_ok, self._ok_all
        else:
            region, region_all = self.total > 1e-5, self._total_all
            weight.reshape(b, -1)[:] = self._weight
        if region_all:  # the usual case: the whole sample lies inside the read window
            return full.astype(np.float32, copy=False)
        out = np.where(region, full.reshape(b, -1), np.float32(np.nan)).astype(np.float32)
        return out.reshape(b, *self.shape)


def resample_points(
    data: np.ndarray, rows: np.ndarray, cols: np.ndarray, resampling: GdalResampling
) -> np.ndarray:
    """Sample (bands, h, w) float32 data (NaN nodata) at continuous pixel coordinates."""
    return PointSampler(rows, cols, (data.shape[-2], data.shape[-1])).sample(data, resampling)


def point_sampler(
    src: RasterWindow,
    grid: TargetGrid,
    src_shape: tuple[int, ...] | None = None,
    *,
    tps: bool = True,
) -> PointSampler | SeparableSampler | None:
    """A sampler for ``src`` -> ``grid``, or None when the source is finer than the grid
    (then an area-aware GDAL kernel is needed) or when a plain slice suffices."""
    if _integer_offset(src, grid) is not None:
        return None
    lat = _lattice_coords(src, grid, tps=tps, step=8)
    if not lat.scale <= _MAX_POINT_SCALE:
        return None
    shape = tuple(src_shape) if src_shape is not None else src.shape
    hw = (int(shape[-2]), int(shape[-1]))
    iy, fy = _interp_weights(grid.height, lat.step)
    ix, fx = _interp_weights(grid.width, lat.step)
    # decided on the lattice: between lattice points the full field is a convex
    # combination of them, so it is axis-aligned exactly when they are
    if _separable(lat.rows, lat.cols):
        return SeparableSampler(
            _lerp2_column0(lat.rows, iy, fy, ix, fx), _lerp2_row0(lat.cols, iy, fy, ix, fx), hw
        )
    rows = _lerp2(lat.rows, iy, fy, ix, fx)
    cols = _lerp2(lat.cols, iy, fy, ix, fx)
    return PointSampler(rows, cols, hw)


def _separable(rows: np.ndarray, cols: np.ndarray, tol: float = 1e-6) -> bool:
    """True when source rows depend on the target row only and columns on the column."""
    return bool(np.abs(rows - rows[:, :1]).max() <= tol and np.abs(cols - cols[:1, :]).max() <= tol)


def warp_to_grid(
    src: RasterWindow,
    grid: TargetGrid,
    resampling: GdalResampling,
    *,
    data: np.ndarray | None = None,
    gcp_tps: bool = True,
    sampler: PointSampler | SeparableSampler | None = None,
    use_gdal: bool = False,
    weight: np.ndarray | None = None,
    has_nan: bool | None = None,
) -> np.ndarray:
    """Warp a source window (or ``data`` laid out like it) onto ``grid``; float32, NaN nodata.

    ``data`` may be (rows, cols) or (bands, rows, cols); all bands share one geometry, so
    the coordinates are computed once (pass ``coords`` from :func:`source_coords` to
    share them across calls too, pass a :class:`PointSampler` from :func:`point_sampler`). Paths, fastest first: an exact slice (same CRS and
    lattice); point resampling at the computed coordinates (nearest / bilinear when the
    source is not finer than the grid); GDAL's warper for everything else (cubic, mode,
    downsampling) or when ``use_gdal``. ``weight``, a (bands, H, W) float32 array,
    receives each value's kernel weight (see :meth:`PointSampler.sample`; 1 where valid
    on the other paths). ``has_nan``: whether ``data`` holds a NaN, when the caller knows
    (see :meth:`SeparableSampler.sample`).
    """
    arr = src.data if data is None else data
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    squeeze = arr.ndim == 2
    arr3 = arr[None] if squeeze else arr
    off = _integer_offset(src, grid)
    if off is not None:
        out = _slice(arr3, off[0], off[1], grid)
        if weight is not None:
            weight[:] = np.isfinite(out)
        return out[0] if squeeze else out
    if not use_gdal and resampling in (GdalResampling.nearest, GdalResampling.bilinear):
        if sampler is None:
            sampler = point_sampler(src, grid, arr3.shape[-2:], tps=gcp_tps)
        if isinstance(sampler, SeparableSampler):
            out = sampler.sample(arr3, resampling, weight, has_nan=has_nan)
            return out[0] if squeeze else out
        if sampler is not None:
            out = sampler.sample(arr3, resampling, weight)
            return out[0] if squeeze else out
    if resampling is GdalResampling.nearest and not use_gdal:
        resampling = GdalResampling.mode  # a finer categorical source: majority, not a pick
    out = np.full((arr3.shape[0], grid.height, grid.width), np.nan, np.float32)
    kwargs: dict = {}
    if src.transform is not None:
        kwargs["src_transform"] = src.transform
    else:
        kwargs["gcps"] = list(src.gcps)
        if gcp_tps:
            kwargs["SRC_METHOD"] = "GCP_TPS"
    reproject(
        source=arr3,
        destination=out,
        src_crs=src.crs,
        src_nodata=np.nan,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=np.nan,
        resampling=resampling,
        init_dest_nodata=True,
        **kwargs,
    )
    if weight is not None:
        weight[:] = np.isfinite(out)
    return out[0] if squeeze else out


def mosaic_first_valid(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Per pixel the first non-NaN value over ``layers`` (in the given, deterministic order)."""
    if not layers:
        raise ValueError("mosaic of zero layers")
    out = np.array(layers[0], dtype=np.float32, copy=True)
    for layer in layers[1:]:
        hole = np.isnan(out)
        if not hole.any():
            break
        out[hole] = layer[hole]
    return out


def to_linear_power(
    data: np.ndarray, source_dtype: str, scale: float | None = None, offset: float | None = None
) -> np.ndarray:
    """SAR source values -> linear power, so bilinear resampling averages energy.

    Integer sources are amplitude DN (GRD): power = (DN * scale + offset)^2. Float
    sources are linear power unless most valid values are negative, which only dB
    values are (a linear backscatter is never negative); those are converted back.
    """
    x = data.astype(np.float32, copy=True)
    if scale is not None or offset is not None:
        x = x * np.float32(scale if scale is not None else 1.0) + np.float32(offset or 0.0)
    if np.issubdtype(np.dtype(source_dtype), np.integer):
        return x * x
    finite = x[np.isfinite(x)]
    if finite.size and np.mean(finite < 0) > 0.5:
        return np.power(np.float32(10.0), x / np.float32(10.0))
    return x


def power_to_db(power: np.ndarray) -> np.ndarray:
    """Linear power -> dB; non-positive power is nodata (NaN), never -inf."""
    out = np.full(power.shape, np.nan, np.float32)
    ok = np.isfinite(power) & (power > 0)
    out[ok] = 10.0 * np.log10(power[ok])
    return out


def target_decimation(info: AssetInfo, resolution_m: float = RESOLUTION_M) -> int:
    """Overview factor to read a source much finer than the 10 m grid (1 = full res).

    Only overview levels that exist are used (reading a decimated rendition without an
    overview saves no decoding); geographic sources are never decimated.
    """
    res = info.resolution
    if res is None or info.crs is None or info.crs.is_geographic or not info.overviews:
        return 1
    want = int(resolution_m // res)
    usable = [f for f in info.overviews if f <= want]
    return max(usable) if usable else 1


def modality_resampling(m: Modality, band: str | None = None) -> GdalResampling:
    """Warp resampling for a modality band (the SCL classification is categorical)."""
    if band is not None and band.upper() == "SCL":
        return GdalResampling.nearest
    return gdal_resampling(m.resampling)
