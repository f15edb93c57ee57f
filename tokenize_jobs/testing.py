"""A small, structured, deterministic corpus for tests and benchmarks.

Until a corpus can be built from the embedded world, tests of the tokenizers, the encode
job and the model need corpus-shaped data: ``make_toy_corpus`` writes ``<split>.zarr``
stores with ``schemas.layouts.create_corpus_store`` whose content has the structure
real tokenizers must learn - land-cover regions with crisp, warped boundaries, class
spectra, smooth terrain and illumination fields, speckle, nodata stripes - in every
modality's stored dtype and units, all from one seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from terraloom.schemas.layouts import CORPUS_MODALITIES, create_corpus_store
from terraloom.schemas.modalities import (
    CAPTION_MAX_BYTES,
    LULC_CLASS_NAMES,
    LULC_CLASSES,
    SAMPLE_PX,
)

# Surface reflectance x 10^4 per LULC class (index order), bands B01..B12 without B10.
_S2_SIGNATURES = np.array(
    [
        [800, 700, 650, 450, 400, 350, 330, 300, 280, 150, 150, 100],  # water
        [300, 350, 600, 350, 900, 2300, 2800, 3000, 3100, 3000, 1500, 700],  # trees
        [500, 500, 700, 500, 900, 1800, 2100, 2200, 2300, 2000, 1200, 700],  # flooded vegetation
        [500, 600, 900, 700, 1300, 2500, 3000, 3300, 3400, 3200, 2200, 1300],  # crops
        [1200, 1300, 1400, 1500, 1600, 1700, 1800, 1900, 1950, 1900, 2200, 2000],  # built area
        [1500, 1700, 2000, 2400, 2600, 2800, 2900, 3000, 3100, 3000, 3500, 3000],  # bare ground
        [8000, 8500, 8500, 8300, 8000, 7500, 7200, 7000, 6800, 6000, 1500, 1200],  # snow/ice
        [6000, 6200, 6300, 6300, 6300, 6200, 6200, 6100, 6000, 5000, 4200, 3500],  # clouds
        [700, 800, 1100, 1200, 1600, 2000, 2300, 2500, 2600, 2500, 2800, 2000],  # rangeland
    ],
    dtype=np.float32,
)
# VV dB and VV - VH difference per class.
_S1_VV = np.array([-20.0, -7.5, -9.0, -10.5, -4.0, -14.0, -12.0, -9.5, -11.5], np.float32)
_S1_DIFF = np.array([7.0, 6.0, 6.5, 7.5, 5.0, 8.5, 7.0, 6.5, 7.5], np.float32)
# Sampling weights of the classes (snow and clouds rare).
_CLASS_P = np.array([0.12, 0.2, 0.06, 0.18, 0.12, 0.1, 0.03, 0.03, 0.16])


def smooth_field(rng: np.random.Generator, size: int = SAMPLE_PX, scale: int = 6) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (cubic upsampling of coarse noise)."""
    coarse = rng.standard_normal((scale + 3, scale + 3))
    field = ndimage.zoom(coarse, (size + 2 * size // scale) / coarse.shape[0], order=3)
    off = size // scale
    field = field[off : off + size, off : off + size]
    field = field - field.mean()
    return (field / (field.std() + 1e-6)).astype(np.float32)


def lulc_regions(rng: np.random.Generator, size: int = SAMPLE_PX) -> np.ndarray:
    """(size, size) model class indices: warped Voronoi regions with a few classes."""
    n = int(rng.integers(3, 9))
    centres = rng.uniform(0, size, (n, 2))
    classes = rng.choice(len(LULC_CLASSES), n, p=_CLASS_P)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy = yy + 18 * smooth_field(rng, size, 5)
    xx = xx + 18 * smooth_field(rng, size, 5)
    d = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    return classes[np.argmin(d, axis=0)].astype(np.uint8)


def _utm_epsg(lat: float, lon: float) -> int:
    zone = int((lon + 180) // 6) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def _caption(cls_idx: np.ndarray, dem: np.ndarray, ndvi: np.ndarray, month: int) -> str:
    counts = np.bincount(cls_idx.ravel(), minlength=len(LULC_CLASSES)) / cls_idx.size
    order = np.argsort(-counts)
    first, second = order[0], order[1]
    season = ("winter", "spring", "summer", "autumn")[(month % 12) // 3]
    relief = float(np.nanmax(dem) - np.nanmin(dem))
    terrain = "flat" if relief < 200 else "hilly" if relief < 1000 else "mountainous"
    parts = [f"Mostly {LULC_CLASS_NAMES[first]} ({100 * counts[first]:.0f}%)"]
    if counts[second] > 0:
        parts.append(f"with {LULC_CLASS_NAMES[second]} ({100 * counts[second]:.0f}%)")
    text = " ".join(parts) + (
        f"; {terrain} terrain around {float(np.nanmean(dem)):.0f} m, mean NDVI {float(np.nanmean(ndvi)):.2f}, {season}."
    )
    return text


def toy_sample(rng: np.random.Generator, size: int = SAMPLE_PX) -> dict[str, np.ndarray]:
    """One sample of every corpus modality, in stored dtypes and units."""
    cls_idx = lulc_regions(rng, size)
    # Terrain: base height and a log-uniform relief (flat plains to steep hills), two
    # scales of smooth variation; water a few metres below its shores.
    base = rng.uniform(0, 1500)
    relief = float(np.exp(rng.uniform(np.log(10.0), np.log(400.0))))
    dem = base + relief * (0.8 * smooth_field(rng, size, 4) + 0.3 * smooth_field(rng, size, 12))
    dem = np.where(cls_idx == 0, dem - 3.0, dem).astype(np.float32)
    dem = ndimage.gaussian_filter(dem, 1.0)
    # Optical: class spectra modulated by illumination (terrain slope) and brightness.
    gy, gx = np.gradient(dem / 10.0)
    shade = np.clip(1.0 - 0.4 * (gx * 0.6 + gy * 0.4), 0.6, 1.4)
    bright = 1.0 + 0.12 * smooth_field(rng, size, 8)
    refl = _S2_SIGNATURES[cls_idx].transpose(2, 0, 1) * (shade * bright)[None]
    refl = ndimage.gaussian_filter(refl, (0, 0.7, 0.7))
    refl *= 1.0 + 0.02 * rng.standard_normal(refl.shape).astype(np.float32)
    s2 = np.clip(refl + 1.0, 1, 65535).astype(np.uint16)
    # SAR: class backscatter, a terrain term, smooth variation and speckle-like noise.
    slope = np.clip(gx, -3, 3)
    vv = _S1_VV[cls_idx] + 2.0 * slope + 0.8 * smooth_field(rng, size, 10)
    vh = vv - _S1_DIFF[cls_idx] + 0.5 * smooth_field(rng, size, 10)
    s1grd = np.stack([vv, vh]) + 0.6 * rng.standard_normal((2, size, size))
    s1rtc = np.stack([vv - 0.5 * slope + 1.5, vh - 0.5 * slope + 1.2]) + 0.5 * rng.standard_normal(
        (2, size, size)
    )
    # Nodata: edge stripes in some samples (S2 DN 0, SAR NaN).
    s2f = s2.astype(np.float32)
    if rng.random() < 0.25:
        w = int(rng.integers(8, 48))
        s2[:, :, :w] = 0
        s2f[:, :, :w] = np.nan
    if rng.random() < 0.25:
        h = int(rng.integers(8, 48))
        s1grd[:, -h:, :] = np.nan
    red, nir = s2f[3], s2f[7]
    ndvi = (nir - red) / (nir + red)
    # L1C: TOA = L2A plus a path radiance offset decreasing with wavelength, with B10.
    offset = np.array([900, 700, 500, 350, 300, 250, 220, 200, 190, 150, 60, 40], np.float32)
    l1c_12 = np.clip(s2.astype(np.float32) + offset[:, None, None], 0, 65535)
    l1c_12[:, s2[0] == 0] = 0
    b10 = np.where(s2[0] == 0, 0, 20 + 5 * rng.random((size, size)))
    l1c = np.concatenate([l1c_12[:10], b10[None], l1c_12[10:]]).astype(np.uint16)
    rgb = s2.astype(np.float32)[[3, 2, 1]]
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    rgb8 = np.clip((rgb - lo) / max(hi - lo, 1.0) * 255, 0, 255).astype(np.uint8)
    lat, lon = float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180))
    month = int(rng.integers(1, 13))
    caption = _caption(cls_idx, dem, ndvi, month).encode("utf-8")[:CAPTION_MAX_BYTES]
    cap = np.zeros(CAPTION_MAX_BYTES, np.uint8)
    cap[: len(caption)] = np.frombuffer(caption, np.uint8)
    legend = np.asarray(LULC_CLASSES, np.uint8)[cls_idx]
    return {
        "S2L1C": l1c,
        "S2L2A": s2,
        "S2RGB": rgb8,
        "S1GRD": s1grd.astype(np.float16),
        "S1RTC": s1rtc.astype(np.float16),
        "DEM": dem[None],
        "LULC": legend[None],
        "NDVI": ndvi[None].astype(np.float16),
        "GEO": np.array([lat, lon], np.float64),
        "CAPTION": cap,
        "cloud_mask": np.where(cls_idx == 7, 1, 0).astype(np.uint8),
        "epsg": np.array(_utm_epsg(lat, lon), np.int32),
        "transform": np.array([10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0]),
    }


def make_toy_corpus(
    path: str | os.PathLike[str],
    n_samples: int | dict[str, int] = 16,
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "val"),
    shard_samples: int = 8,
    modalities: tuple[str, ...] = CORPUS_MODALITIES,
    n_invalid: int = 0,
) -> Path:
    """Write a toy corpus (``<path>/<split>.zarr`` per split) and return ``path``.

    ``n_samples`` rows per split (or a dict per split); the last ``n_invalid`` rows of
    each split are left unwritten with ``valid`` False, as a build leaves rejected rows.
    Same arguments -> byte-identical arrays.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    for s_i, split in enumerate(splits):
        n = n_samples[split] if isinstance(n_samples, dict) else int(n_samples)
        if n_invalid >= n and n > 0:
            raise ValueError("n_invalid must leave at least one valid row")
        group = create_corpus_store(
            root / f"{split}.zarr", n, shard_samples, split=split, modality_names=modalities
        )
        n_valid = n - n_invalid
        rng = np.random.default_rng([seed, s_i])
        for start in range(0, n_valid, shard_samples):
            stop = min(start + shard_samples, n_valid)
            samples = [toy_sample(rng) for _ in range(stop - start)]
            for name in (*modalities, "cloud_mask", "epsg", "transform"):
                group[name][start:stop] = np.stack([s[name] for s in samples])
        valid = np.zeros(n, bool)
        valid[:n_valid] = True
        group["valid"][:] = valid
        group.attrs.update({"toy": True, "toy_seed": seed})
    return root
