"""Benchmark the synthetic world generator: time, size on disk and samples per preset.

    .venv/bin/python bench/world.py                 # tiny + demo (fresh, not cached)
    .venv/bin/python bench/world.py --presets tiny demo bench --workers 2

Targets (issue 3): tiny < 10 s, demo < 120 s and < 1 GB on 2 cores, demo >= 300 samples,
bench >= 2000 samples. Prints a table and, last, ``world_demo_seconds=<n>``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from terraloom.pipeline.world import generate_world  # noqa: E402

TARGETS = {"tiny": (10.0, None, 20), "demo": (120.0, 1e9, 300), "bench": (None, None, 2000)}


def du_bytes(path: Path) -> int:
    """Allocated size on disk (``du``), falling back to the sum of file sizes."""
    try:
        out = subprocess.run(
            ["du", "-sb", "--apparent-size", str(path)], capture_output=True, text=True, check=True
        )
        apparent = int(out.stdout.split()[0])
        out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
        return max(apparent, int(out.stdout.split()[0]) * 1024)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the generator's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def samples(world_json: Path) -> dict[int, int | None]:
    """Samples centred in the regions' bboxes, per samples-per-cell layout (pipeline.grid)."""
    doc = json.loads(world_json.read_text())
    try:
        from terraloom.pipeline.grid import Region
    except ImportError:
        return {k: None for k in (1, 4, 9)}
    return {
        k: sum(len(Region.from_bbox(*r["bbox"]).samples(k)) for r in doc["regions"])
        for k in (1, 4, 9)
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--presets", nargs="+", default=["tiny", "demo"], choices=list(TARGETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workers", type=int, default=2, help="generator processes (the targets are for 2 cores)"
    )
    ap.add_argument("--keep", type=Path, default=None, help="keep the worlds under this directory")
    args = ap.parse_args(argv)

    rows = []
    demo_seconds = None
    base = (
        Path(tempfile.mkdtemp(prefix="terraloom-bench-world-")) if args.keep is None else args.keep
    )
    try:
        for name in args.presets:
            out = base / f"{name}-s{args.seed}"
            if out.exists():
                shutil.rmtree(out)
            t0 = time.perf_counter()
            c0 = _cpu()
            info = generate_world(
                out, preset=name, seed=args.seed, progress=False, workers=args.workers
            )
            secs = time.perf_counter() - t0
            cpu = _cpu() - c0
            size = du_bytes(out)
            n_files = sum(1 for p in out.rglob("*") if p.is_file())
            smp = samples(out / "world.json")
            rows.append((name, secs, cpu, size, n_files, sum(info.item_counts.values()), smp))
            if name == "demo":
                demo_seconds = secs
            if args.keep is None:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    print(
        f"cores available: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}, workers: {args.workers}"
    )
    print(
        f"{'preset':<7} {'seconds':>8} {'target':>7} {'cpu s':>7} {'MB on disk':>10} {'target':>7} "
        f"{'files':>6} {'items':>6} {'samples 1/4/9 per cell':>24} {'target':>7}"
    )
    ok = True
    for name, secs, cpu, size, n_files, n_items, smp in rows:
        t_s, t_b, t_n = TARGETS[name]
        s9 = smp.get(9)
        ok &= (
            (t_s is None or secs < t_s)
            and (t_b is None or size < t_b)
            and (s9 is None or s9 >= t_n)
        )
        smp_txt = "/".join("-" if v is None else str(v) for v in smp.values())
        print(
            f"{name:<7} {secs:8.1f} {('<' + format(t_s, '.0f')) if t_s else '-':>7} {cpu:7.1f} {size / 1e6:10.1f} "
            f"{('<' + format(t_b / 1e6, '.0f')) if t_b else '-':>7} {n_files:6d} {n_items:6d} {smp_txt:>24} {'>=' + str(t_n):>7}"
        )
    print(f"targets met: {ok}")
    print("(seconds = wall clock; on a machine shared with other jobs compare cpu s / workers)")
    if demo_seconds is not None:
        print(f"world_demo_seconds={demo_seconds:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
