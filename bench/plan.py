"""Benchmark planning against the synthetic global STAC API: single process vs a distributed job.

    .venv/bin/python bench/plan.py                         # 2 x 2 degrees, dask x2, 3 rounds
    .venv/bin/python bench/plan.py --engine beam --rounds 5 --latency 0.1

The API (``pipeline.world.stac_server``, every Major TOM cell of the globe) runs as its own
process on 127.0.0.1 with ``--latency`` seconds per answer and logs every request. One
untimed single-process plan first fills the server's answer cache, so in the timed rounds
the server hands out encoded pages from memory and what is measured is the planner, not
the synthetic server's JSON encoding on the same two cores (a real API answers from other
machines; its answer time is ``--latency``). Rounds
interleave the single-process planner (``plan_samples``, one HTTP request at a time) and the
distributed one (``plan_dataset`` on ``--engine`` with ``--workers`` processes, cluster start
included), each with an empty response cache, so every search is really asked. Per planner:
cells/s, CPU-seconds per cell (this process and the engine's processes, which have exited and
been reaped by then; the server's own process is left out), requests and bytes read per cell
(from the server's log, which records each answer's size), median and spread (min..max) over
the rounds, and whether the two plans are equal row for row. ``--json FILE`` writes them for
``bench/cost.py --plan-json``.

Extrapolation to the whole land grid (issue 22): ``--land-fraction`` of the grid's cells
(0.292 by default, Earth's land share of the surface; an input, not a fact of the grid) at
the measured per-worker cell rate on N workers, and the floor a global request rate
(``--api-rate``, requests/s the API allows) puts under it: wall = max(cells / (N x per-worker
rate), cells x requests per cell / api rate). On 2 shared cores the server, the planner and
the workers compete for the CPU, so the per-worker rate is a lower bound.

Last line: ``plan_cells_per_s=<n>`` (the distributed planner, median).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from terraloom.pipeline.grid import GRID, Region  # noqa: E402
from terraloom.pipeline.plan import PlanConfig, plan_samples, region_blocks  # noqa: E402
from terraloom.pipeline.plan_engines import EngineConfig, SourceSpec, plan_dataset  # noqa: E402
from terraloom.pipeline.sources import parse_time_range  # noqa: E402
from terraloom.pipeline.sources.stac_api import StacApiSource  # noqa: E402
from terraloom.pipeline.world.stac_server import LogEntry, read_log  # noqa: E402


def grid_cells() -> int:
    """Cells of the whole Major TOM grid (sum of the columns of every row)."""
    lo, hi = GRID.row_range
    return sum(GRID.n_cols(r) for r in range(lo, hi + 1))


def start_server(latency: float, lifetime: float, log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "terraloom.pipeline.world.stac_server", "--latency", str(latency),
         "--lifetime", str(lifetime), "--log", str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("url="):
        proc.kill()
        raise SystemExit(f"bench/plan.py: the synthetic STAC API did not start ({line!r})")
    return proc, line[4:]


def spread(xs: Sequence[float]) -> str:
    return f"{statistics.median(xs):8.1f}  ({min(xs):.1f}..{max(xs):.1f})"


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited and been waited for
    (an engine's worker processes after the job; the server, still running, is not among
    them)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Measured:
    """One planner's figures over the rounds."""

    def __init__(self) -> None:
        self.cps: list[float] = []
        self.rpc: list[float] = []
        self.cpu: list[float] = []
        self.kb: list[float] = []

    def add(self, cells: int, wall: float, cpu: float, asked: list[LogEntry]) -> None:
        self.cps.append(cells / wall)
        self.cpu.append(cpu / cells)
        self.rpc.append(len(asked) / cells)
        self.kb.append(sum(e.bytes for e in asked) / 1e3 / cells)

    def medians(self) -> dict[str, float]:
        return {
            "cells_per_s": statistics.median(self.cps),
            "cpu_s_per_cell": statistics.median(self.cpu),
            "requests_per_cell": statistics.median(self.rpc),
            "kb_per_cell": statistics.median(self.kb),
        }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bbox", default="9,45,12,47", help="W,S,E,N of the measured subset")
    ap.add_argument("--time", default="2023-06-01/2023-06-30")
    ap.add_argument("--block-deg", type=float, default=0.5)
    ap.add_argument("--engine", default="dask", choices=("dask", "beam", "local"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--threads", type=int, default=EngineConfig.threads, help="dask threads per worker"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.05, help="API seconds per answer")
    ap.add_argument("--page-size", type=int, default=500)
    ap.add_argument("--land-fraction", type=float, default=0.292)
    ap.add_argument("--api-rate", type=float, default=10.0, help="requests/s the API allows")
    ap.add_argument("--scale-workers", default="8,32,128")
    ap.add_argument("--json", type=Path, help="also write the figures here (bench/cost.py)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.workers < 1:
        print("bench/plan.py: error: --rounds and --workers must be >= 1", file=sys.stderr)
        return 2

    w, s, e, n = (float(x) for x in args.bbox.split(","))
    region = Region.from_bbox(w, s, e, n)
    period = parse_time_range(args.time)
    config = PlanConfig(block_deg=args.block_deg)
    cells = len(region.cell_ids())
    blocks = len(region_blocks(region, config))
    tmp = Path(tempfile.mkdtemp(prefix="terraloom-bench-plan-"))
    log_path = tmp / "requests.jsonl"
    server, url = start_server(args.latency, 3600.0, log_path)
    print(
        f"subset {args.bbox}: {cells} cells in {blocks} blocks of {args.block_deg} deg, "
        f"{args.time}; API latency {args.latency:g} s; {args.rounds} interleaved rounds"
    )
    results = {"single": Measured(), "distributed": Measured()}
    equal = True
    samples = 0
    try:
        warm = StacApiSource(url, use_cache=False, limit=args.page_size)
        plan_samples(warm, region, period, config)  # untimed: fills the server's answer cache
        for r in range(args.rounds):
            seen = len(read_log(str(log_path)))
            t0, c0 = time.perf_counter(), cpu_seconds()
            src = StacApiSource(url, use_cache=False, limit=args.page_size)
            single = plan_samples(src, region, period, config)
            dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            asked = read_log(str(log_path))[seen:]
            results["single"].add(cells, dt, cpu, asked)
            samples = single.num_rows

            seen += len(asked)
            out = tmp / f"plan-{r}"
            t0, c0 = time.perf_counter(), cpu_seconds()
            res = plan_dataset(
                SourceSpec(f"stac:{url}", use_cache=False, page_size=args.page_size),
                region,
                period,
                out,
                config,
                EngineConfig(args.engine, workers=args.workers, threads=args.threads),
            )
            dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            asked = read_log(str(log_path))[seen:]
            results["distributed"].add(cells, dt, cpu, asked)
            equal = equal and res.table.to_pylist() == single.to_pylist()
            shutil.rmtree(out, ignore_errors=True)
            print(
                f"round {r + 1}: single {results['single'].cps[-1]:.1f} cells/s, "
                f"{args.engine} x{args.workers} {results['distributed'].cps[-1]:.1f} cells/s",
                file=sys.stderr,
            )
    finally:
        server.kill()
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    label = f"{args.engine} x{args.workers}"
    print(
        f"\n{'planner':<22}{'cells/s median (min..max)':>30}{'CPU ms/cell':>13}"
        f"{'requests/cell':>15}{'kB/cell':>9}"
    )
    for name, shown in (("single", "single process"), ("distributed", label)):
        rs = results[name]
        m = rs.medians()
        print(
            f"{shown:<22}{spread(rs.cps):>30}{m['cpu_s_per_cell'] * 1e3:>13.1f}"
            f"{m['requests_per_cell']:>15.3f}{m['kb_per_cell']:>9.1f}"
        )
    ratio = statistics.median(results["distributed"].cps) / statistics.median(results["single"].cps)
    print(f"speedup {label} vs single process: {ratio:.2f}x")
    print(f"plans equal row for row: {equal}")

    total = grid_cells()
    land = round(total * args.land_fraction)
    per_worker = statistics.median(results["distributed"].cps) / args.workers
    rpc = statistics.median(results["distributed"].rpc)
    floor_h = land * rpc / args.api_rate / 3600.0
    print(
        f"\nwhole land grid: {land:,} cells ({args.land_fraction:g} of {total:,}); "
        f"{per_worker:.1f} cells/s per worker measured; {rpc:.3f} requests/cell; "
        f"API limit {args.api_rate:g} req/s -> at least {floor_h:.1f} h"
    )
    print(f"{'workers':>8}{'compute-bound h':>17}{'with API limit h':>18}")
    for nw in (int(x) for x in args.scale_workers.split(",")):
        compute_h = land / (per_worker * nw) / 3600.0
        print(f"{nw:>8}{compute_h:>17.1f}{max(compute_h, floor_h):>18.1f}")
    if args.json:
        doc = {
            "cells": cells,
            "samples": samples,
            "samples_per_cell": samples / cells,
            "engine": args.engine,
            "workers": args.workers,
            "latency_s": args.latency,
            "plans_equal": equal,
            **{name: rs.medians() for name, rs in results.items()},
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"plan_cells_per_s={statistics.median(results['distributed'].cps):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
