"""Write the world: COGs per product, STAC items/collections/catalog, ``world.json``.

The work is split into independent tasks (a strip of the shared 10 m latent, one S2 tile with
all its dates, one S1 slice per orbit, one RTC frame, one LULC tile, a batch of DEM tiles).
Products of one grid share its latent landscape. Tasks run in a process pool, largest first,
in two phases (the shared latent first); each task's output depends only on (seed, preset,
task), so the bytes do not depend on scheduling.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terraloom.pipeline.world import grids as gr
from terraloom.pipeline.world import products as pr
from terraloom.pipeline.world import sensors as sn
from terraloom.pipeline.world import stac
from terraloom.pipeline.world.regions import (
    DATA_MARGIN_M,
    GENERATOR_VERSION,
    Preset,
    region_specs,
    spec_to_dict,
)
from terraloom.pipeline.world.regions import preset as get_preset
from terraloom.pipeline.world.tasks import (
    BLOCK_ROWS,
    Task,
    TaskResult,
    allocate_latent_cache,
    lattices,
    region_model,
    write_lattice_strip,
)

# --- tasks ----------------------------------------------------------------------------------


def plan_tasks(seed: int, p: Preset) -> tuple[list[Task], list[Task]]:
    """Phase A (no dependencies) and phase B (reads the shared 10 m latent of phase A)."""
    a: list[Task] = []
    b: list[Task] = []
    for spec in region_specs(p):
        model = region_model(seed, p.name, spec.name)
        fr = model.frame
        for epsg, lattice in lattices(model).items():
            lh, lw = lattice.shape
            for r0 in range(0, lh, BLOCK_ROWS):
                r1 = min(lh, r0 + BLOCK_ROWS)
                a.append(
                    Task(
                        "lat10",
                        spec.name,
                        (epsg, r0, r1),
                        (0.35 if epsg == fr.epsg else 0.5) * (r1 - r0) * lw,
                    )
                )
        for tile in gr.s2_tiles(fr, p.s2_tile_m, p.s2_lattice_m):
            cost = 1.2e6 * (0.15 + 0.45 * p.n_s2 + 0.3 * p.n_l1c)
            b.append(Task("s2", spec.name, (tile,), cost))
        for orbit in sorted({x.orbit_state for x in model.s1_acqs}):
            look = sn.look_geometry(model.landscape, orbit)
            n = sum(1 for x in model.s1_acqs if x.orbit_state == orbit)
            for rg in gr.radar_grids(fr, look, orbit):
                a.append(
                    Task(
                        "grd",
                        spec.name,
                        (orbit, rg.slice_index),
                        0.75 * rg.shape[0] * rg.shape[1] * (0.5 + 0.25 * n),
                    )
                )
        for k, g in enumerate(gr.rtc_grids(fr)):
            b.append(Task("rtc", spec.name, (k,), g.shape[0] * g.shape[1] * 0.2 * p.n_s1))
        for lt in gr.lulc_tiles(fr, p.lulc_tile_m):
            b.append(Task("lulc", spec.name, (lt,), 0.05 * lt.grid.shape[0] * lt.grid.shape[1]))
        dems = gr.dem_tiles(fr)
        for k in range(0, len(dems), 48):
            chunk = dems[k : k + 48]
            a.append(Task("dem", spec.name, (tuple(chunk),), 0.8 * 32400 * len(chunk)))
    return a, b


def run_task(seed: int, preset_name: str, out: str, cache: str, task: Task) -> TaskResult:
    model = region_model(seed, preset_name, task.region)
    o = Path(out)
    c = Path(cache)
    ov = model.preset.overviews
    if task.kind == "lat10":
        return write_lattice_strip(model, task.key[0], task.key[1], task.key[2], c)
    if task.kind == "s2":
        return pr.write_s2_tile(model, task.key[0], o, ov, c)
    if task.kind == "grd":
        return pr.write_grd_slice(model, task.key[0], task.key[1], o, ov)
    if task.kind == "rtc":
        return pr.write_rtc_frame(model, task.key[0], o, ov, c)
    if task.kind == "lulc":
        return pr.write_lulc_tile(model, task.key[0], o, ov, model.preset.start.year, c)
    if task.kind == "dem":
        return pr.write_dem_tiles(model, list(task.key[0]), o, ov)
    raise ValueError(task.kind)


def _init_worker() -> None:
    """One BLAS thread per worker: the pool already uses every core (forked workers inherit
    the parent's OpenBLAS pool, so the environment variable alone would be too late)."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import ctypes

        with open("/proc/self/maps") as fh:
            libs = {
                line.split()[-1]
                for line in fh
                if "openblas" in line.lower()
                and line.rstrip().endswith(".so")
                or ".so." in line
                and "openblas" in line.lower()
            }
        for path in sorted(libs):
            lib = ctypes.CDLL(path)
            for name in (
                "scipy_openblas_set_num_threads64_",
                "scipy_openblas_set_num_threads",
                "openblas_set_num_threads64_",
                "openblas_set_num_threads",
            ):
                fn = getattr(lib, name, None)
                if fn is not None:
                    fn(1)
                    break
    except (OSError, ValueError):  # not Linux / no OpenBLAS: only a performance hint
        pass


def _run_all(
    seed: int,
    p: Preset,
    out: Path,
    cache: Path,
    phases: list[list[Task]],
    workers: int,
    progress: Callable[[int], object],
) -> list[TaskResult]:
    results: list[TaskResult] = []
    pool = None
    if workers > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    try:
        for tasks in phases:
            order = sorted(range(len(tasks)), key=lambda i: -tasks[i].cost)
            got: list[TaskResult | None] = [None] * len(tasks)
            if pool is None:
                for i in order:
                    got[i] = run_task(seed, p.name, str(out), str(cache), tasks[i])
                    progress(1)
            else:
                pending: dict[Future[TaskResult], int] = {
                    pool.submit(run_task, seed, p.name, str(out), str(cache), tasks[i]): i
                    for i in order
                }
                while pending:
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for f in done:
                        got[pending.pop(f)] = f.result()
                        progress(1)
            results.extend(r for r in got if r is not None)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


def world_document(seed: int, p: Preset, counts: dict[str, int]) -> dict[str, Any]:
    """``world.json``: what the plan stage and ``load_world`` need.

    ``generator``/``version``/``seed``/``preset``; ``period`` {start, end} (ISO dates, the
    whole world); ``catalog`` (relative path of the root catalog); ``collections`` and
    ``item_counts``; ``data_margin_m``; ``acquisitions`` per sensor; ``regions``: per region
    ``name``, ``bbox`` [W, S, E, N] (samples *centred* in it are fully covered by every
    product), ``data_bbox`` (lon/lat envelope of the generated imagery), ``frame_epsg``,
    ``utm_epsgs`` (zones its products use), ``period``, ``snow_line_m`` (null: no snow),
    ``s2_datetimes``/``s1_datetimes``/``s1_orbit_states`` and the full landscape ``spec``.
    """
    regions = []
    for spec in region_specs(p):
        model = region_model(seed, p.name, spec.name)
        fr = model.frame
        regions.append(
            {
                "name": spec.name,
                "bbox": list(spec.bbox),
                "data_bbox": [round(v, 6) for v in fr.lonlat_envelope()],
                "frame_epsg": fr.epsg,
                "utm_epsgs": list(fr.utm_epsgs),
                "period": {"start": p.start.isoformat(), "end": p.end.isoformat()},
                "snow_line_m": spec.snow_line if spec.snow_line < 1e8 else None,
                "s2_datetimes": [a.iso for a in model.s2_acqs],
                "s1_datetimes": [a.iso for a in model.s1_acqs],
                "s1_orbit_states": [a.orbit_state for a in model.s1_acqs],
                "spec": spec_to_dict(spec),
            }
        )
    return {
        "generator": "terraloom.world",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "preset": p.name,
        "description": p.description,
        "period": {"start": p.start.isoformat(), "end": p.end.isoformat()},
        "catalog": "catalog.json",
        "collections": sorted(counts),
        "item_counts": dict(sorted(counts.items())),
        "data_margin_m": DATA_MARGIN_M,
        "acquisitions": {"s2": p.n_s2, "l1c": p.n_l1c, "s1": p.n_s1},
        "regions": regions,
    }


@dataclass(frozen=True)
class WorldInfo:
    """What :func:`generate_world` wrote."""

    root: Path
    seed: int
    preset: str
    item_counts: dict[str, int]
    nbytes: int
    seconds: float


def generate_world(
    out_dir: str | os.PathLike[str],
    preset: str = "tiny",
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    overwrite: bool = False,
) -> WorldInfo:
    """Write the world's static STAC catalog of COGs into ``out_dir`` (created)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    p = get_preset(preset)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} is not empty (pass overwrite=True to replace a world there)"
            )
        if not (out / "world.json").is_file():
            raise FileExistsError(
                f"{out} is not empty and holds no world.json: refusing to delete it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    phase_a, phase_b = plan_tasks(seed, p)
    if workers is None:
        ncpu = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        workers = max(1, min(ncpu, 8))
    cache = Path(tempfile.mkdtemp(prefix="terraloom-world-latent-"))
    bar = tqdm(
        total=len(phase_a) + len(phase_b),
        desc=f"world {p.name} seed={seed}",
        unit="task",
        disable=not progress,
    )
    try:
        for spec in region_specs(p):
            allocate_latent_cache(cache, region_model(seed, p.name, spec.name))
        results = _run_all(seed, p, out, cache, [phase_a, phase_b], workers, bar.update)
    finally:
        bar.close()
        shutil.rmtree(cache, ignore_errors=True)
    by_coll: dict[str, list[dict[str, Any]]] = {}
    nbytes = 0
    for r in results:
        nbytes += r.nbytes
        for coll, item in r.items:
            by_coll.setdefault(coll, []).append(item)
    present = [c for c in stac.COLLECTION_ORDER if c in by_coll]
    for coll in present:
        items = sorted(by_coll[coll], key=lambda i: i["id"])
        ids = [i["id"] for i in items]
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"duplicate item ids in {coll}")
        for item in items:
            nbytes += stac.write_json(out / coll / item["id"] / f"{item['id']}.json", item)
        nbytes += stac.write_json(out / coll / "collection.json", stac.collection_dict(coll, items))
    nbytes += stac.write_json(
        out / "catalog.json",
        stac.catalog_dict(present, f"terraloom synthetic world, preset {p.name}, seed {seed}"),
    )
    counts = {c: len(by_coll[c]) for c in present}
    doc = world_document(seed, p, counts)
    nbytes += stac.write_json(out / "world.json", doc)
    return WorldInfo(out, seed, p.name, counts, nbytes, time.perf_counter() - t0)


def code_hash() -> str:
    """A digest of the generator's source: part of cache keys, so a cached world is never
    older than the code that would generate it (bytes can change between version bumps)."""
    import hashlib

    h = hashlib.sha256()
    here = Path(__file__).parent
    for p in sorted(here.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return (
        Path(cache_dir)
        if cache_dir is not None
        else Path(tempfile.gettempdir()) / "terraloom-world-cache"
    )


def cached_world(
    preset: str = "tiny",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Path:
    """Generate a world once per (generator version and code, preset, seed); return its path.

    Concurrent callers (pytest-xdist workers) serialise on a lock file; the world is built in
    a temporary sibling and renamed into place, so a half-written world is never visible.
    """
    import fcntl

    get_preset(preset)
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"v{GENERATOR_VERSION}-{code_hash()}-{preset}-s{seed}"
    if (final / "world.json").is_file():
        return final
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (final / "world.json").is_file():
                return final
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
            try:
                generate_world(tmp, preset=preset, seed=seed, progress=progress)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final


__all__ = ["WorldInfo", "cached_world", "generate_world", "plan_tasks", "run_task"]
