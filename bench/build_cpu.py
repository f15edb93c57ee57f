"""CPU milliseconds per sample of the build's block work: a baseline commit vs the working tree.

``bench/build.py`` times whole builds on worker processes, whose wall clock moves with
whoever else uses a shared machine. This script measures the one figure a hot-path change
moves: the CPU time of :func:`pipeline.block.process_block` (read, warp, judge, derive,
caption, write and commit a block) over a plan, run block after block in one process, with
the baseline tree (``git archive`` of ``--baseline``) and the candidate (this tree) in
interleaved rounds (the side that goes first alternates). Engine start-up, planning and
the final merge are left out: they do not change with the hot path.

It then compares the two corpora byte for byte: every file of the output but the commit
markers (which carry timings), plus the arrays' digests and the index and rejects rows.

Prints a table and, last, ``build_cpu_ms_per_sample_ratio=<candidate / baseline>``
(medians). Example::

    .venv/bin/python bench/build_cpu.py --baseline HEAD~1 --world demo --rounds 3
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
import types
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ODC_MODALITIES = ("S2L2A", "S2L1C", "S1RTC", "DEM", "LULC")


def _worker(root: str, plan: str, out: str, modalities: str, shard: int) -> None:
    """Build ``plan`` into ``out`` with the code of ``root``; print the CPU figures as JSON.

    The ``terraloom`` package is pointed at ``root`` before anything of it is imported, so
    the baseline tree runs its own code in this process."""
    pkg = types.ModuleType("terraloom")
    pkg.__path__ = [root]
    sys.modules["terraloom"] = pkg
    import terraloom.pipeline.build as build
    from terraloom.pipeline import sample  # noqa: F401  (imported outside the timing)
    from terraloom.pipeline.block import EngineResult, process_block
    from terraloom.pipeline.build_config import BuildConfig

    assert Path(build.__file__).resolve().is_relative_to(Path(root).resolve()), build.__file__
    spent = [0.0]

    def run_engine(engine: str, job: object, keys: Sequence[object], *a: object, **k: object):
        c0 = time.process_time()
        outcomes = [process_block(job, key) for key in keys]  # type: ignore[arg-type]
        spent[0] += time.process_time() - c0
        return EngineResult(outcomes=outcomes, counters={}, workers=1)

    build.run_engine = run_engine  # type: ignore[assignment]
    config = (
        BuildConfig()
        if modalities == "all"
        else BuildConfig(modalities=tuple(modalities.split(",")))
    )
    summary = build.run_build(
        plan, out, engine="beam", config=config, shard_samples=shard, progress=False
    )
    n = sum(summary.planned.values())
    print(json.dumps({"samples": n, "accepted": sum(summary.accepted.values()), "cpu_s": spent[0]}))


def run_side(root: Path, plan: Path, out: Path, modalities: str, shard: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--_worker", str(root), str(plan), str(out), modalities]
    cmd.append(str(shard))
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"build with {root} failed:\n{done.stderr[-2000:]}")
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    result["ms_per_sample"] = result["cpu_s"] * 1e3 / max(result["samples"], 1)
    result["load"] = os.getloadavg()[0]
    return result


def same_outputs(a: Path, b: Path) -> tuple[bool, str]:
    """Whether two corpora are byte-identical (commit markers aside: they hold timings)."""
    from terraloom.pipeline.verify import array_digests
    from terraloom.schemas.tables import read_table

    def files(root: Path) -> dict[str, Path]:
        return {
            str(p.relative_to(root)): p
            for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".done")
        }

    fa, fb = files(a), files(b)
    if set(fa) != set(fb):
        return False, f"different files: {sorted(set(fa) ^ set(fb))[:5]}"
    differ = [k for k in sorted(fa) if fa[k].read_bytes() != fb[k].read_bytes()]
    if differ:
        return False, f"{len(differ)} of {len(fa)} files differ, e.g. {differ[:3]}"
    if array_digests(a) != array_digests(b):
        return False, "array digests differ"
    for table in ("index", "rejects"):
        if (
            read_table(table, a / f"{table}.parquet").to_pylist()
            != read_table(table, b / f"{table}.parquet").to_pylist()
        ):
            return False, f"{table} rows differ"
    return True, f"{len(fa)} files, arrays and index/rejects rows identical"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_worker"]:
        root, plan, out, modalities, shard = argv[1:6]
        _worker(root, plan, out, modalities, int(shard))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="git revision to compare against")
    ap.add_argument("--world", default="demo")
    ap.add_argument("--world-cache", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples-per-cell", type=int, default=9, choices=(1, 4, 9))
    ap.add_argument("--fraction", type=float, default=1.0, help="share of the plan built")
    ap.add_argument("--shard-samples", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modalities", default=",".join(ODC_MODALITIES), help="or 'all'")
    ap.add_argument("--work", default=None, help="scratch directory, kept (default: removed)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or not 0 < args.fraction <= 1:
        ap.error("--rounds must be >= 1 and --fraction in (0, 1]")

    sys.path.insert(0, str(ROOT / "bench"))
    from build import make_plan, subset_plan  # bench/build.py

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="terraloom-build-cpu-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        baseline = work / "baseline"
        shutil.rmtree(baseline, ignore_errors=True)
        baseline.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.baseline], cwd=ROOT, capture_output=True, check=False
        )
        if archive.returncode != 0:
            ap.error(f"git archive {args.baseline}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
        plan, _ = make_plan(work, args.world, args.seed, args.samples_per_cell, args.world_cache)
        if args.fraction < 1:
            plan, _ = subset_plan(plan, args.fraction, work / f"plan-{args.fraction:g}.parquet")
        sides = {"baseline": baseline, "candidate": ROOT}
        results: dict[str, list[dict]] = {name: [] for name in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                res = run_side(
                    sides[name], plan, work / f"out-{name}", args.modalities, args.shard_samples
                )
                results[name].append(res)
                print(
                    f"round {r + 1} {name:<9} {res['ms_per_sample']:7.2f} ms/sample "
                    f"({res['samples']} samples, {res['accepted']} accepted, load {res['load']:.1f})",
                    file=sys.stderr,
                )
        identical, detail = same_outputs(work / "out-baseline", work / "out-candidate")
        med = {}
        print(
            f"\nprocess_block CPU per sample, {args.world} world, {results['baseline'][0]['samples']} "
            f"samples, shard {args.shard_samples}, modalities {args.modalities}, {args.rounds} rounds"
        )
        for name, rs in results.items():
            v = [x["ms_per_sample"] for x in rs]
            med[name] = statistics.median(v)
            rev = args.baseline if name == "baseline" else "working tree"
            print(
                f"  {name:<9} ({rev}): median {med[name]:.1f} ms, range {min(v):.1f}-{max(v):.1f}, "
                f"rounds {', '.join(f'{x:.1f}' for x in v)}"
            )
        print(f"outputs byte-identical: {identical} ({detail})")
        print(f"build_cpu_ms_per_sample_ratio={med['candidate'] / med['baseline']:.3f}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
