"""Benchmark the corpus build against the per-sample ``odc.stac.load`` a user would write.

On the embedded ``bench`` world: plan it, then at two plan sizes (default 25 % and 100 %)
build the corpus with Beam (DirectRunner, multi-processing) and Dask (LocalCluster), each
on ``--workers`` workers, measuring samples/s (wall time of the whole build, engine start
included) and the peak RSS of every worker process (psutil, sampled in a background
thread). The baseline loads a subset of the same plan sample by sample with
``odc.stac.load`` (same grid, same resampling per the registry, same number of worker
processes) and its output is compared with the corpus for every modality odc can load.

Prints one table and, last, ``build_speedup_vs_odc_stac=<ratio>`` (best engine at the
largest size vs the baseline). Example::

    .venv/bin/python bench/build.py --workers 2 --odc-samples 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from terraloom.schemas.modalities import get_modality  # noqa: E402
from terraloom.schemas.tables import read_table, write_geoparquet  # noqa: E402

#: Modalities odc.stac can load onto the sample grid (S1GRD needs GCP warping, derived
#: modalities are computed by the build), with the resampling of the registry.
ODC_MODALITIES = ("S2L2A", "S2L1C", "S1RTC", "DEM", "LULC")
ODC_RESAMPLING = {
    "bilinear": "bilinear",
    "bilinear_power_db": "bilinear",
    "cubic": "cubic",
    "nearest": "nearest",
    "mode": "mode",
}


# --------------------------------------------------------------------------- memory


class RssMonitor:
    """Peak RSS and CPU time of this process and of each descendant process, sampled every
    ``interval_s``. CPU seconds make a load-independent figure on a shared machine."""

    def __init__(self, interval_s: float = 0.05) -> None:
        import psutil

        self._psutil = psutil
        self.interval_s = interval_s
        self.peak: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.driver_pid = os.getpid()
        t = psutil.Process(self.driver_pid).cpu_times()
        self._driver_cpu0 = t.user + t.system
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        me = self._psutil.Process(self.driver_pid)
        procs = [me]
        with contextlib.suppress(self._psutil.Error):
            procs += me.children(recursive=True)
        for p in procs:
            try:
                rss = p.memory_info().rss
                t = p.cpu_times()
                self.cpu[p.pid] = t.user + t.system
                if p.pid not in self.names:
                    self.names[p.pid] = " ".join(p.cmdline()[:4])
            except self._psutil.Error:
                continue
            self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssMonitor:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the descendants and by this process since the start."""
        self._sample()
        children = sum(v for pid, v in self.cpu.items() if pid != self.driver_pid)
        return children + self.cpu.get(self.driver_pid, self._driver_cpu0) - self._driver_cpu0

    def worker_peaks(self) -> list[int]:
        """Peak RSS of the processes that did the work (descendants, or the driver alone)."""
        children = {pid: v for pid, v in self.peak.items() if pid != self.driver_pid}
        # dask nannies / beam's grpc helpers are small; the workers are the big ones
        return sorted(children.values(), reverse=True) or [self.peak[self.driver_pid]]


# --------------------------------------------------------------------------- plan


def make_plan(
    work: Path, world: str, seed: int, samples_per_cell: int, cache_dir: str | None = None
) -> tuple[Path, Path]:
    """Generate (or reuse) the world and write its plan; return (plan path, world dir)."""
    from terraloom.pipeline.plan import PlanConfig, plan_samples, write_plan
    from terraloom.pipeline.sources import open_source
    from terraloom.pipeline.world.generate import cached_world

    world_dir = cached_world(world, seed, cache_dir=cache_dir, progress=True)
    plan_path = work / f"plan-{world}-{seed}-spc{samples_per_cell}.parquet"
    if not plan_path.exists():
        opened = open_source(f"world:{world_dir}")
        assert opened.region is not None and opened.time_range is not None
        table = plan_samples(
            opened.source,
            opened.region,
            opened.time_range,
            PlanConfig(samples_per_cell=samples_per_cell),
        )
        write_plan(table, plan_path)
    return plan_path, world_dir


def subset_plan(plan_path: Path, fraction: float, dest: Path) -> tuple[Path, int]:
    """The first ceil(fraction * n) rows of every split (rows stay 0..m-1), with the plan's
    ``terraloom:*`` metadata (its href scope: without it every href is refused)."""
    import pyarrow.parquet as pq

    plan = read_table("plan", plan_path)
    parts = []
    for split in sorted(set(plan.column("split").to_pylist())):
        part = plan.filter(pc.equal(plan.column("split"), split))
        m = max(1, math.ceil(fraction * part.num_rows))
        parts.append(part.filter(pc.less(part.column("row"), m)))
    table = pa.concat_tables(parts)
    meta = pq.read_schema(plan_path).metadata or {}
    extra = {k: v for k, v in meta.items() if k.startswith(b"terraloom:")}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    write_geoparquet("plan", table, dest)
    return dest, table.num_rows


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    name: str
    size: str
    samples: int
    seconds: float
    worker_rss_mb: list[float] = field(default_factory=list)
    driver_rss_mb: float = 0.0
    note: str = ""
    cpu_s: float = 0.0
    #: bytes the build decoded from source COGs (its ``bytes_read`` counter: decoded windows,
    #: an upper bound of the compressed bytes read) and wrote (the output's files); 0 for odc
    bytes_decoded: float = 0.0
    bytes_written: float = 0.0
    #: the modalities the run made
    modalities: tuple[str, ...] = ()
    #: 1-minute load average when the run ended: on a shared machine it says how far the
    #: wall-clock figures are from an idle machine's (CPU seconds do not move with it)
    load: float = field(default_factory=lambda: os.getloadavg()[0])

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def samples_per_cpu_s(self) -> float:
        return self.samples / self.cpu_s if self.cpu_s else 0.0


def run_engine_build(
    engine: str,
    plan_path: Path,
    out: Path,
    workers: int,
    shard_samples: int,
    size: str,
    config: Any,
    label: str = "",
) -> Run:
    from terraloom.pipeline.build import run_build

    shutil.rmtree(out, ignore_errors=True)
    with RssMonitor() as mon:
        t0 = time.perf_counter()
        summary = run_build(
            plan_path,
            out,
            engine=engine,
            workers=workers,
            config=config,
            shard_samples=shard_samples,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        cpu = mon.cpu_seconds()
    n = sum(summary.planned.values())
    acc = sum(summary.accepted.values())
    return Run(
        f"{engine} x{workers}{label}",
        size,
        n,
        seconds,
        [v / 2**20 for v in mon.worker_peaks()[:workers]],
        mon.peak[mon.driver_pid] / 2**20,
        f"accepted {acc}/{n}",
        cpu,
        bytes_decoded=float(summary.counters.get("bytes_read", 0)),
        bytes_written=float(sum(f.stat().st_size for f in out.rglob("*") if f.is_file())),
        modalities=tuple(config.modalities),
    )


# --------------------------------------------------------------------------- odc baseline


_ITEMS: dict[str, Any] = {}


def _init_worker(world_catalog: str) -> None:
    import pystac

    catalog = pystac.Catalog.from_file(world_catalog)
    _ITEMS.update(
        {f"{item.collection_id}/{item.id}": item for item in catalog.get_items(recursive=True)}
    )


def odc_load_sample(row: dict[str, Any], modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """What a user would write: one ``odc.stac.load`` per modality onto the sample's grid."""
    import odc.stac
    from affine import Affine
    from odc.geo.geobox import GeoBox

    gbox = GeoBox(
        (int(row["height"]), int(row["width"])),
        Affine(*row["transform"][:6]),
        f"EPSG:{row['epsg']}",
    )
    out: dict[str, np.ndarray] = {}
    for name in modalities:
        m = get_modality(name)
        scenes = [s for s in row["scenes"] if s["modality"] == m.name]
        if not scenes:
            continue
        items = [_ITEMS[f"{s['collection']}/{s['item_id']}"] for s in scenes]
        bands_in_order = [b.name for b in m.bands]
        key_of = {a["band"]: a["key"] for a in scenes[0]["assets"]}
        keys = [key_of[b] for b in bands_in_order if b in key_of]
        ds = odc.stac.load(
            items,
            bands=keys,
            geobox=gbox,
            resampling=ODC_RESAMPLING.get(m.resampling.value, "nearest"),
            groupby="solar_day",
            preserve_original_order=True,
        )
        stack = np.stack([ds[k].values[0] for k in keys])
        if m.resampling.value == "bilinear_power_db":
            with np.errstate(divide="ignore", invalid="ignore"):
                stack = 10 * np.log10(stack.astype(np.float32))
        out[m.name] = stack
    return out


def _odc_task(args: tuple[dict[str, Any], tuple[str, ...]]) -> dict[str, np.ndarray]:
    row, mods = args
    return odc_load_sample(row, mods)


def run_odc_baseline(
    world_dir: Path, rows: list[dict[str, Any]], workers: int, modalities: Sequence[str]
) -> tuple[Run, list[dict[str, Any]], list[dict[str, np.ndarray]]]:
    """Per-sample odc.stac.load of ``rows`` on ``workers`` processes (pool start-up not timed)."""
    with (
        RssMonitor() as mon,
        ProcessPoolExecutor(
            workers, initializer=_init_worker, initargs=(str(world_dir / "catalog.json"),)
        ) as pool,
    ):
        list(
            pool.map(_odc_task, [(rows[0], tuple(modalities))] * workers)
        )  # warm the pool: start-up not counted
        t0, cpu0 = time.perf_counter(), mon.cpu_seconds()
        loaded = list(pool.map(_odc_task, [(r, tuple(modalities)) for r in rows]))
        seconds, cpu = time.perf_counter() - t0, mon.cpu_seconds() - cpu0
    return (
        Run(
            f"odc.stac.load x{workers}",
            "subset",
            len(rows),
            seconds,
            [v / 2**20 for v in mon.worker_peaks()[:workers]],
            mon.peak[mon.driver_pid] / 2**20,
            "",
            cpu,
        ),
        rows,
        loaded,
    )


def compare_with_corpus(
    corpus: Path, rows: list[dict[str, Any]], loaded: list[dict[str, np.ndarray]]
) -> dict[str, dict[str, float]]:
    """Per modality: pixels compared, fraction within tolerance, mean |diff| (accepted samples only)."""
    import zarr

    index = (
        read_table("index", corpus / "index.parquet")
        .select(["sample_id", "split", "row"])
        .to_pylist()
    )
    where = {r["sample_id"]: (r["split"], r["row"]) for r in index}
    groups: dict[str, Any] = {}
    tol = {"S2L2A": 1.0, "S2L1C": 1.0, "S1RTC": 0.05, "DEM": 0.05, "LULC": 0.0}
    stats: dict[str, dict[str, float]] = {}
    for row, arrays in zip(rows, loaded):
        if row["sample_id"] not in where:
            continue
        split, r = where[row["sample_id"]]
        g = groups.setdefault(split, zarr.open_group(str(corpus / f"{split}.zarr"), mode="r"))
        for name, ref in arrays.items():
            if name not in g:
                continue
            ours = np.asarray(g[name][r], np.float64)
            ref = np.asarray(ref, np.float64)
            m = get_modality(name)
            ok = np.isfinite(ours) & np.isfinite(ref)
            if m.nodata is not None and not (isinstance(m.nodata, float) and math.isnan(m.nodata)):
                ok &= (ours != m.nodata) & (ref != m.nodata)
            d = np.abs(ours - ref)[ok]
            s = stats.setdefault(
                name, {"pixels": 0.0, "within_tol": 0.0, "sum_abs": 0.0, "max_abs": 0.0}
            )
            s["pixels"] += d.size
            s["within_tol"] += float((d <= tol[name]).sum())
            s["sum_abs"] += float(d.sum())
            s["max_abs"] = max(s["max_abs"], float(d.max()) if d.size else 0.0)
    return {
        k: {
            "pixels": v["pixels"],
            "frac_within_tol": v["within_tol"] / max(v["pixels"], 1),
            "mean_abs": v["sum_abs"] / max(v["pixels"], 1),
            "max_abs": v["max_abs"],
            "tol": tol[k],
        }
        for k, v in stats.items()
    }


# --------------------------------------------------------------------------- main


def spread(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` rows evenly spread over the plan (every region, not just the first block)."""
    if len(rows) <= n:
        return rows
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--world", default="bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--world-cache", default=None, help="world cache directory (default: the shared one)"
    )
    ap.add_argument("--samples-per-cell", type=int, default=9, choices=(1, 4, 9))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-samples", type=int, default=16)
    ap.add_argument(
        "--sizes", default="0.25,1.0", help="plan fractions to build (RSS must not grow with size)"
    )
    ap.add_argument("--engines", default="beam,dask")
    ap.add_argument(
        "--modalities",
        default=",".join(ODC_MODALITIES),
        help="modalities built in the timed runs (default: those odc.stac.load can load, "
        "so both sides do the same work); 'all' for the whole corpus",
    )
    ap.add_argument(
        "--full-run",
        action="store_true",
        help="also time one build of every modality (largest size, first engine)",
    )
    ap.add_argument("--odc-samples", type=int, default=100)
    ap.add_argument(
        "--work", default=None, help="scratch directory, kept (default: a temporary one, removed)"
    )
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="terraloom-bench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan_path, world_dir = make_plan(
        work, args.world, args.seed, args.samples_per_cell, args.world_cache
    )
    print(
        f"world {args.world!r} seed {args.seed} + plan: {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )

    from terraloom.pipeline.sample import BuildConfig

    config = (
        BuildConfig()
        if args.modalities == "all"
        else BuildConfig(modalities=tuple(args.modalities.split(",")))
    )
    runs: list[Run] = []
    sizes = sorted(float(s) for s in args.sizes.split(","))
    engines = args.engines.split(",")
    largest: dict[str, Path] = {}
    for frac in sizes:
        sub, n = subset_plan(plan_path, frac, work / f"plan-{frac:g}.parquet")
        for engine in engines:
            out = work / f"corpus-{engine}-{frac:g}"
            print(f"building {n} samples with {engine} x{args.workers} ...", file=sys.stderr)
            runs.append(
                run_engine_build(
                    engine, sub, out, args.workers, args.shard_samples, f"{frac:.0%}", config
                )
            )
            if frac == sizes[-1]:
                largest[engine] = out
            else:
                shutil.rmtree(out, ignore_errors=True)  # only its timing and RSS are needed
    full: Run | None = None
    if args.full_run:
        print(
            f"building {n} samples, every modality, with {engines[0]} x{args.workers} ...",
            file=sys.stderr,
        )
        full = run_engine_build(
            engines[0],
            sub,
            work / "corpus-full",
            args.workers,
            args.shard_samples,
            f"{sizes[-1]:.0%}",
            BuildConfig(),
            " all-mod",
        )
        shutil.rmtree(work / "corpus-full", ignore_errors=True)
    from terraloom.pipeline.verify import array_digests

    digests = [json.dumps(array_digests(p), sort_keys=True) for p in largest.values()]
    indexes = [read_table("index", p / "index.parquet").to_pylist() for p in largest.values()]
    engines_agree = len(set(digests)) == 1 and all(ix == indexes[0] for ix in indexes)

    corpus = next(iter(largest.values()))
    plan_rows = [r for r in read_table("plan", plan_path).to_pylist() if not r["unmatched"]]
    print(
        f"odc.stac.load baseline on {min(args.odc_samples, len(plan_rows))} samples ...",
        file=sys.stderr,
    )
    base, rows, loaded = run_odc_baseline(
        world_dir, spread(plan_rows, args.odc_samples), args.workers, ODC_MODALITIES
    )
    runs.append(base)
    equality = compare_with_corpus(corpus, rows, loaded)
    equal = bool(equality) and all(s["frac_within_tol"] >= 0.99 for s in equality.values())

    best = max((r for r in runs if r.size == f"{sizes[-1]:.0%}"), key=lambda r: r.samples_per_s)
    ratio = best.samples_per_s / base.samples_per_s if base.samples_per_s else float("nan")
    cpu_ratio = (
        best.samples_per_cpu_s / base.samples_per_cpu_s if base.samples_per_cpu_s else float("nan")
    )
    if full is not None:
        runs.insert(len(runs) - 1, full)

    print(
        f"\nbuilt modalities: {', '.join(config.modalities)}; workers: {args.workers}; shard: {args.shard_samples} samples"
    )
    print(
        f"{'run':<24}{'size':>6}{'samples':>9}{'seconds':>9}{'samples/s':>11}{'CPU s':>9}{'samples/CPU-s':>15}{'load':>6}  {'peak RSS/worker MiB':<21}{'driver':>7}  note"
    )
    for r in runs:
        rss = ", ".join(f"{v:.0f}" for v in r.worker_rss_mb)
        print(
            f"{r.name:<24}{r.size:>6}{r.samples:>9}{r.seconds:>9.1f}{r.samples_per_s:>11.2f}{r.cpu_s:>9.0f}{r.samples_per_cpu_s:>15.3f}{r.load:>6.1f}  {rss:<21}{r.driver_rss_mb:>7.0f}  {r.note}"
        )
    for engine in engines:
        mine = [r for r in runs if r.name == f"{engine} x{args.workers}"]
        if len(mine) >= 2:
            growth = max(mine[-1].worker_rss_mb) / max(mine[0].worker_rss_mb)
            print(
                f"{engine}: peak worker RSS at {mine[-1].size} / {mine[0].size} of the plan = {growth:.2f}x for {mine[-1].samples / mine[0].samples:.1f}x the samples"
            )
    print(f"engines agree (array sha256 + index rows, {sizes[-1]:.0%} plan): {engines_agree}")
    print(
        f"odc.stac.load vs corpus on {len(rows)} samples spread over the plan (accepted ones compared):"
    )
    for name, st in equality.items():
        print(
            f"  {name:<6} pixels {int(st['pixels']):>10}  within {st['tol']:g}: {100 * st['frac_within_tol']:.3f}%  mean |d| {st['mean_abs']:.4f}  max |d| {st['max_abs']:.3f}"
        )
    print(f"odc output equal within tolerance (>= 99% of pixels per modality): {equal}")
    print(
        f"speedup: {best.name} {best.samples_per_s:.2f} samples/s (engine start-up included) vs {base.name} {base.samples_per_s:.2f} samples/s (pool start-up excluded), {'same modalities' if set(config.modalities) == set(ODC_MODALITIES) else 'the build makes more modalities'}"
    )
    print(f"speedup per CPU second (load-independent on a shared machine): {cpu_ratio:.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "runs": [r.__dict__ for r in runs],
                    "equality": equality,
                    "equal": equal,
                    "engines_agree": engines_agree,
                    "speedup": ratio,
                    "cpu_speedup": cpu_ratio,
                },
                indent=1,
                default=str,
            )
        )
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"build_speedup_vs_odc_stac={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
