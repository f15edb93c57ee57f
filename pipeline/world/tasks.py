"""What the generator's tasks share: the task records, per-process region models, the noise
tables, frame geometries of product windows and the per-zone cache of the 10 m latent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terraloom.pipeline.world import grids as gr
from terraloom.pipeline.world import sensors as sn
from terraloom.pipeline.world.landscape import Latent
from terraloom.pipeline.world.model import RegionModel
from terraloom.pipeline.world.noise import Blocks, Grid, rng_for
from terraloom.pipeline.world.regions import preset as get_preset
from terraloom.pipeline.world.regions import region_specs

S2_10M = ("B02", "B03", "B04", "B08")
S2_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
S2_60M_L1C = ("B01", "B09", "B10")
RTC_NODATA = -32768.0
BLOCK_ROWS = 512

_MODELS: dict[tuple[int, str, str], RegionModel] = {}


def region_model(seed: int, preset_name: str, region: str) -> RegionModel:
    """Per-process cache: a model is cheap to build but shared by many tasks."""
    key = (seed, preset_name, region)
    if key not in _MODELS:
        p = get_preset(preset_name)
        spec = next(s for s in region_specs(p) if s.name == region)
        _MODELS[key] = RegionModel(seed, spec, p)
    return _MODELS[key]


@dataclass(frozen=True)
class Task:
    kind: str  # "s2" | "grd" | "rtc" | "lulc" | "dem"
    region: str
    key: tuple[Any, ...]
    cost: float


@dataclass
class TaskResult:
    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (collection, item)
    nbytes: int = 0


# --- helpers ------------------------------------------------------------------------------------


def compact_time(t: Any) -> str:
    return t.strftime("%Y%m%dT%H%M%S")


def proj_fields(epsg: int, grid: gr.RasterGrid) -> dict[str, Any]:
    return {
        "proj:code": f"EPSG:{epsg}",
        "proj:shape": [grid.shape[0], grid.shape[1]],
        "proj:transform": [float(v) for v in grid.transform],
        "proj:bbox": [float(v) for v in grid.bounds],
    }


def pct(n: int, d: int) -> float:
    return round(100.0 * n / d, 6) if d else 0.0


_TABLE = 2048
_TABLES: dict[tuple[str, int], np.ndarray] = {}


def _table(kind: str, seed: int) -> np.ndarray:
    """A per-world random texture; windows of it at random offsets serve as sensor noise
    and speckle (drawing fresh variates per pixel costs more than the rest of a band)."""
    key = (kind, seed)
    if key not in _TABLES:
        r = rng_for(seed, "table", kind)
        if kind == "normal":
            _TABLES[key] = r.standard_normal((_TABLE, _TABLE), dtype=np.float32)
        else:
            _TABLES[key] = r.gamma(sn.S1_ENL, 1.0 / sn.S1_ENL, size=(_TABLE, _TABLE)).astype(
                np.float32
            )
    return _TABLES[key]


def noise_window(
    kind: str, seed: int, rng: np.random.Generator, shape: tuple[int, int]
) -> np.ndarray:
    t = _table(kind, seed)
    h, w = shape
    if h <= _TABLE and w <= _TABLE:
        r0 = int(rng.integers(0, _TABLE - h + 1))
        c0 = int(rng.integers(0, _TABLE - w + 1))
        return t[r0 : r0 + h, c0 : c0 + w]
    out = np.empty(shape, np.float32)
    for i in range(0, h, _TABLE):
        for j in range(0, w, _TABLE):
            hh, ww = min(_TABLE, h - i), min(_TABLE, w - j)
            out[i : i + hh, j : j + ww] = noise_window(kind, seed, rng, (hh, ww))
    return out


def quantise_s2(dn: np.ndarray, seed: int, rng: np.random.Generator) -> np.ndarray:
    if sn.S2_NOISE_DN > 0:
        dn = dn + noise_window("normal", seed, rng, dn.shape) * np.float32(sn.S2_NOISE_DN)
    return np.clip(np.rint(dn), 1, 65535).astype(np.uint16)


def frame_geometry(
    model: RegionModel, grid: gr.RasterGrid, win: tuple[int, int, int, int]
) -> Grid | Blocks:
    """A window's pixel centres in the frame: one affine grid in the frame zone (exact), or
    blocks that are affine to < 2 cm in another zone (a straddling region's neighbour)."""
    if grid.epsg == model.frame.epsg:
        return grid.window_grid(model.frame, *win)
    r0, r1, c0, c1 = win
    block = max(8, int(round(gr.AFFINE_BLOCK_M / grid.transform[0])))
    parts = grid.window_blocks(model.frame, r0, r1, c0, c1, block)
    return Blocks(
        (r1 - r0, c1 - c0),
        tuple((br - r0, er - r0, bc - c0, ec - c0, g) for br, er, bc, ec, g in parts),
    )


def window_geometry(
    model: RegionModel, grid: gr.RasterGrid
) -> tuple[Grid | Blocks, np.ndarray, tuple[int, int, int, int]] | None:
    """The grid's valid window as a frame geometry, plus its data mask."""
    win = gr.valid_window(grid, model.frame)
    if win is None:
        return None
    geom = frame_geometry(model, grid, win)
    x, y = geom.coords()
    mask = model.frame.inside(x, y)
    if not mask.any():
        return None
    return geom, mask, win


# --- shared 10 m latent per zone ------------------------------------------------------------------

LATENT_FIELDS = (
    ("cls", np.uint8),
    ("var", np.float32),
    ("parcel", np.float32),
    ("parcel2", np.float32),
    ("hx", np.float32),
    ("hy", np.float32),
)


def lattices(model: RegionModel) -> dict[int, gr.RasterGrid]:
    p = model.preset
    key = "_lattices"
    if not hasattr(model, key):
        setattr(
            model, key, gr.region_lattices(model.frame, p.s2_tile_m, p.s2_lattice_m, p.lulc_tile_m)
        )
    return getattr(model, key)


def _latent_path(cache: Path, region: str, epsg: int, name: str) -> Path:
    return cache / region / str(epsg) / f"{name}.npy"


def allocate_latent_cache(cache: Path, model: RegionModel) -> None:
    for epsg, lattice in lattices(model).items():
        (cache / model.name / str(epsg)).mkdir(parents=True, exist_ok=True)
        for name, dtype in LATENT_FIELDS:
            np.lib.format.open_memmap(
                _latent_path(cache, model.name, epsg, name),
                mode="w+",
                dtype=dtype,
                shape=lattice.shape,
            )


def write_lattice_strip(model: RegionModel, epsg: int, r0: int, r1: int, cache: Path) -> TaskResult:
    lattice = lattices(model)[epsg]
    lat = model.latent(
        frame_geometry(model, lattice, (r0, r1, 0, lattice.shape[1])), grad=True, precise=False
    )
    for name, dtype in LATENT_FIELDS:
        mm = np.load(_latent_path(cache, model.name, epsg, name), mmap_mode="r+")
        mm[r0:r1] = getattr(lat, name).astype(dtype)
        mm.flush()
        del mm
    return TaskResult()


def cached_latent(
    model: RegionModel, cache: Path, grid: gr.RasterGrid, win: tuple[int, int, int, int]
) -> Latent:
    lattice = lattices(model)[grid.epsg]
    r0, r1, c0, c1 = win
    lr, lc = gr.lattice_offset(lattice, grid, r0, c0)
    arrs = {}
    for name, _ in LATENT_FIELDS:
        mm = np.load(_latent_path(cache, model.name, grid.epsg, name), mmap_mode="r")
        arrs[name] = np.array(mm[lr : lr + r1 - r0, lc : lc + c1 - c0])
        del mm
    f64 = {k: (v if k == "cls" else v.astype(np.float64)) for k, v in arrs.items()}
    return Latent(h=None, hill=np.zeros(f64["cls"].shape), **f64)
