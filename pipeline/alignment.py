"""Measure co-registration error in pixels against a known truth.

Geolocation error is measured, not inferred from value differences. The truth is
rendered on the warped sample's own grid (sampled at its pixel centres, see
:func:`truth_on_grid`), then the shift between the two images is estimated in two steps:

1. a coarse estimate from cross-correlation, located to 1/``upsample`` px with the
   matrix-multiply DFT of Guizar-Sicairos et al. (Opt. Lett. 2008), the method behind
   ``skimage.registration.phase_cross_correlation``; it catches gross errors;
2. a Gauss-Newton (Lucas-Kanade) fit of ``moving(p) = gain * truth(p - d) + offset`` over
   all valid pixels, started there and at zero (the better fit wins). Fitting gain and offset makes the estimate immune to
   radiometric differences that are not misregistration (speckle biases dB values low,
   a coarse band is smoother than the 10 m truth), and using every pixel's gradient keeps
   it precise on low-texture images where a correlation peak is broad.

The length of ``d`` is the geolocation error. The bench, the docs and the alignment tests
all use this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AlignmentResult",
    "measure_alignment",
    "refine_shift",
    "smooth",
    "subpixel_shift",
    "truth_on_grid",
]


def _prepare(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    a = np.asarray(img, np.float64)
    valid = np.isfinite(a)
    mean = float(a[valid].mean()) if valid.any() else 0.0
    a = np.where(valid, a, mean) - mean
    return a * window


def _upsampled_dft(data: np.ndarray, region: int, upsample: int, offsets: np.ndarray) -> np.ndarray:
    """DFT of ``data`` evaluated on a ``region``-sized grid upsampled by ``upsample``."""
    out = data
    for axis_size, off in list(zip(data.shape, offsets))[::-1]:
        kernel = (np.arange(region) - off)[:, None] * np.fft.fftfreq(axis_size, upsample)
        # contract the last axis with the kernel (einsum: no BLAS thread pool involved)
        out = np.einsum("rk,...k->r...", np.exp(-2j * np.pi * kernel), out)
    return out


def subpixel_shift(
    reference: np.ndarray, moving: np.ndarray, upsample: int = 50, *, phase: bool = False
) -> tuple[float, float]:
    """(dy, dx) in pixels by which ``moving`` is displaced relative to ``reference``.

    ``moving[y, x] ~= reference[y - dy, x - dx]``. NaN pixels are replaced by the image
    mean; both images are tapered by the same Hann window so the FFT's wrap-around does
    not create a spurious peak at zero shift. ``phase`` whitens the cross-power spectrum.
    """
    if reference.shape != moving.shape or reference.ndim != 2:
        raise ValueError(
            f"need two 2-D images of the same shape, got {reference.shape} and {moving.shape}"
        )
    h, w = reference.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    f_ref = np.fft.fft2(_prepare(reference, window))
    f_mov = np.fft.fft2(_prepare(moving, window))
    product = f_ref * f_mov.conj()
    if phase:
        mag = np.abs(product)
        product = product / np.maximum(mag, 1e-12 * max(float(mag.max()), 1e-300))
    cc = np.fft.ifft2(product)
    peak = np.array(np.unravel_index(int(np.argmax(np.abs(cc))), cc.shape), float)
    mid = np.array([np.fix(s / 2) for s in cc.shape])
    shape = np.array(cc.shape, float)
    peak[peak > mid] -= shape[peak > mid]
    if upsample > 1:
        peak = np.round(peak * upsample) / upsample
        region = int(np.ceil(upsample * 1.5))
        dftshift = np.fix(region / 2.0)
        offsets = dftshift - peak * upsample
        up = _upsampled_dft(product.conj(), region, upsample, offsets).conj()
        m = np.array(np.unravel_index(int(np.argmax(np.abs(up))), up.shape), float) - dftshift
        peak = peak + m / upsample
    # peak is the shift that registers moving onto reference; the displacement is its negative
    return float(-peak[0]), float(-peak[1])


def refine_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    start: tuple[float, float] = (0.0, 0.0),
    iterations: int = 12,
) -> tuple[float, float, float, float, float, float]:
    """Gauss-Newton fit of ``moving(p) = gain * reference(p - d) + offset``.

    Returns (dy, dx, gain, offset, rms residual, standard error of the shift in px
    assuming independent pixel residuals). ``reference`` is resampled with cubic splines at the
    shifted positions; pixels that are NaN in either image or near the border are left
    out. Converges from a start within about a pixel of the answer.
    """
    from scipy import ndimage

    ref = np.asarray(reference, np.float64)
    mov = np.asarray(moving, np.float64)
    ok_ref = np.isfinite(ref)
    all_ok = bool(ok_ref.all())
    fill = float(ref[ok_ref].mean()) if ok_ref.any() else 0.0
    ref_f = np.where(ok_ref, ref, fill)
    coeffs = ndimage.spline_filter(ref_f, order=3)
    coeffs_gy = ndimage.spline_filter(np.gradient(ref_f, axis=0), order=3)
    coeffs_gx = ndimage.spline_filter(np.gradient(ref_f, axis=1), order=3)
    h, w = ref.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = float(start[0]), float(start[1])
    gain, offset = 1.0, 0.0
    rms = float("inf")
    sigma = float("inf")
    for k in range(iterations):
        coords = np.array([yy - dy, xx - dx])
        r = ndimage.map_coordinates(coeffs, coords, order=3, prefilter=False, mode="nearest")
        gy = ndimage.map_coordinates(coeffs_gy, coords, order=3, prefilter=False, mode="nearest")
        gx = ndimage.map_coordinates(coeffs_gx, coords, order=3, prefilter=False, mode="nearest")
        if all_ok:
            valid_ref = np.ones((h, w), bool)
        else:
            valid_ref = (
                ndimage.map_coordinates(
                    ok_ref.astype(np.float64), coords, order=1, mode="constant", cval=0.0
                )
                > 0.999
            )
        m = int(np.ceil(max(abs(dy), abs(dx)))) + 3
        border = np.zeros((h, w), bool)
        border[m : h - m, m : w - m] = True
        sel = valid_ref & np.isfinite(mov) & border
        if sel.sum() < 16:
            break
        if k == 0:
            # initial gain / offset by least squares at the start shift
            a = np.column_stack([r[sel], np.ones(int(sel.sum()))])
            gain, offset = np.linalg.lstsq(a, mov[sel], rcond=None)[0]
        resid = mov[sel] - (gain * r[sel] + offset)
        rms = float(np.sqrt(np.mean(resid**2)))
        # d(model)/d(dy) = -gain * dR/dy
        jac = np.column_stack([-gain * gy[sel], -gain * gx[sel], r[sel], np.ones(int(sel.sum()))])
        step = np.linalg.lstsq(jac, resid, rcond=None)[0]
        try:
            cov = np.linalg.inv(jac.T @ jac) * rms**2
            sigma = float(np.sqrt(max(cov[0, 0], cov[1, 1], 0.0)))
        except np.linalg.LinAlgError:
            sigma = float("inf")
        dy += float(step[0])
        dx += float(step[1])
        gain += float(step[2])
        offset += float(step[3])
        if max(abs(step[0]), abs(step[1])) < 2e-3:
            break
    return dy, dx, float(gain), float(offset), rms, sigma


def smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """NaN-aware Gaussian low-pass (NaN stays NaN)."""
    from scipy import ndimage

    a = np.asarray(img, np.float64)
    if sigma_px <= 0:
        return a
    valid = np.isfinite(a)
    num = ndimage.gaussian_filter(np.where(valid, a, 0.0), sigma_px, mode="nearest")
    den = ndimage.gaussian_filter(valid.astype(np.float64), sigma_px, mode="nearest")
    out = np.full(a.shape, np.nan)
    ok = valid & (den > 1e-6)
    out[ok] = num[ok] / den[ok]
    return out


@dataclass(frozen=True)
class AlignmentResult:
    dy: float
    dx: float
    #: mean absolute difference of values where both are valid (units of the data)
    value_mae: float
    #: radiometric fit moving = gain * truth + offset (after the shift)
    gain: float = 1.0
    offset: float = 0.0
    #: standard error of the shift (px): large where the image has too little texture
    #: above its noise for the shift to be measurable at all
    sigma_px: float = float("nan")

    @property
    def measurable(self) -> bool:
        return bool(self.sigma_px < 0.1)

    @property
    def error_px(self) -> float:
        return float(np.hypot(self.dy, self.dx))


def measure_alignment(
    warped: np.ndarray,
    truth: np.ndarray,
    upsample: int = 20,
    smooth_px: float = 0.0,
    max_shift: float = 8.0,
) -> AlignmentResult:
    """Geolocation error of one warped band against the truth on the same grid.

    ``smooth_px``: Gaussian sigma applied to both images first, for bands whose source is
    coarser than 10 m or speckled: the 10 m detail they cannot carry is not
    misregistration, so only the content both share is compared. A coarse shift larger
    than ``max_shift`` px is reported as is (a gross error needs no sub-pixel digits).
    """
    w = np.asarray(warped, np.float64)
    t = np.asarray(truth, np.float64)
    both = np.isfinite(w) & np.isfinite(t)
    mae = float(np.abs(w[both] - t[both]).mean()) if both.any() else float("nan")
    if smooth_px > 0:
        w, t = smooth(w, smooth_px), smooth(t, smooth_px)
    cy, cx = subpixel_shift(t, w, 1 if upsample > 1 else upsample, phase=False)  # LK refines
    if np.hypot(cy, cx) > max_shift:
        return AlignmentResult(cy, cx, mae)
    # refine from the correlation peak and from zero (a broad peak on a low-texture image
    # can sit off by a pixel); keep the better fit
    best: tuple[float, float, float, float, float, float] | None = None
    for start in {(0.0, 0.0), (round(cy, 3), round(cx, 3))}:
        fit = refine_shift(t, w, start)
        if (
            np.isfinite(fit[4])
            and np.hypot(fit[0] - start[0], fit[1] - start[1]) <= 2.0
            and (best is None or fit[4] < best[4])
        ):
            best = fit
    if best is None:
        return AlignmentResult(cy, cx, mae)
    # smoothing correlates neighbouring residuals: about 4 pi sigma^2 pixels per
    # independent sample, which widens the standard error by the square root of that
    inflate = float(np.sqrt(4 * np.pi * smooth_px**2)) if smooth_px >= 0.5 else 1.0
    return AlignmentResult(best[0], best[1], mae, best[2], best[3], best[5] * inflate)


def truth_from_source_grid(
    values: np.ndarray,
    src_crs: int,
    src_transform: Sequence[float],
    dst_epsg: int,
    dst_transform: Sequence[float],
    shape: tuple[int, int],
) -> np.ndarray:
    """Truth as a product on a coarser source grid carries it, seen on the target grid.

    ``values`` is the truth sampled at the source grid's pixel centres (as a 20/60 m band
    samples the scene); it is interpolated bilinearly at the exact (per-pixel pyproj)
    source coordinates of the target pixel centres. Detail above the source's Nyquist
    frequency is aliased into a point-sampled band and cannot be registered against a
    10 m truth, so coarse bands are compared with this reference instead. Independent of
    ``pipeline.coregister`` (pyproj + scipy), so it checks that code, not itself.
    """
    from pyproj import Transformer
    from scipy import ndimage

    a, b, c, d, e, f = (float(v) for v in list(dst_transform)[:6])
    h, w = shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs = a * cols + b * rows + c
    ys = d * cols + e * rows + f
    if int(src_crs) != int(dst_epsg):
        xs, ys = Transformer.from_crs(dst_epsg, src_crs, always_xy=True).transform(xs, ys)
    sa, sb, sc, sd, se, sf = (float(v) for v in list(src_transform)[:6])
    det = sa * se - sb * sd
    dx = np.asarray(xs) - sc
    dy = np.asarray(ys) - sf
    col = (se * dx - sb * dy) / det
    row = (-sd * dx + sa * dy) / det
    return np.asarray(
        ndimage.map_coordinates(
            np.asarray(values, np.float64), [row - 0.5, col - 0.5], order=1, mode="nearest"
        )
    )


def truth_on_grid(
    truth: Callable[[np.ndarray, np.ndarray], np.ndarray],
    epsg: int,
    transform: Sequence[float],
    width: int,
    height: int,
) -> np.ndarray:
    """Evaluate ``truth(lon, lat)`` at the pixel centres of a grid (``transform`` is the
    plan's six affine coefficients or an ``affine.Affine``)."""
    from pyproj import Transformer

    a, b, c, d, e, f = (float(v) for v in list(transform)[:6])
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs = a * cols + b * rows + c
    ys = d * cols + e * rows + f
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(xs, ys)
    return np.asarray(truth(np.asarray(lon), np.asarray(lat)))
