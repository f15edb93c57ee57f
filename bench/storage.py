"""Benchmark a corpus build into an S3 endpoint against the same build on local disk.

Starts moto's S3 server (the one the tests use; no credentials) in its own process on a
free port of 127.0.0.1, plans ``--samples`` samples of the embedded ``tiny`` world, then builds the
same plan ``--rounds`` times into ``s3://<bucket>/run-<k>`` and into a local directory,
interleaved (the order alternates per round, so drift on a shared machine hits both),
each build a fresh output with the same engine and workers. Reports per target the
median samples/s with its spread (min..max), and per sample the bytes the build read
from the source COGs (the engine's ``bytes_read`` counter) and the bytes it wrote to the
output (every object of the store, tables, parts and markers included).

What it does not measure: the encode and the token loader from a URL (``bench/encode.py``
and ``bench/loader.py`` run them locally); a loopback endpoint hides network latency,
so the ratio is the storage layer's overhead, not a cloud figure.

Last line: ``s3_over_local_build_ratio=<r>`` (median S3 samples/s over median local
samples/s; target >= 0.8 on loopback). Example::

    .venv/bin/python bench/storage.py --samples 16 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_s3() -> tuple[Any, str]:
    """moto's S3 server in its own process on a free loopback port (as a real endpoint
    would be: not sharing the build's interpreter), the environment pointed at it."""
    import subprocess
    import urllib.request

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("moto's S3 server did not start") from None
            time.sleep(0.2)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(key, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": endpoint,
        }
    )
    return server, endpoint


def make_plan(samples: int, dest: Path) -> Path:
    """The first ``samples`` train rows of a plan of the tiny world."""
    import pyarrow.compute as pc

    from terraloom.pipeline.plan import PlanConfig, plan_samples, write_plan
    from terraloom.pipeline.sources import open_source
    from terraloom.pipeline.world.generate import cached_world

    opened = open_source(f"world:{cached_world('tiny', 0)}")
    assert opened.region is not None and opened.time_range is not None
    table = plan_samples(
        opened.source, opened.region, opened.time_range, PlanConfig(samples_per_cell=9)
    )
    keep = pc.and_(pc.equal(table["split"], "train"), pc.less(table["row"], samples))
    small = table.filter(keep).replace_schema_metadata(table.schema.metadata)
    if small.num_rows < samples:
        raise SystemExit(f"the tiny world plans only {small.num_rows} train samples")
    path = write_plan(small, dest / "plan.parquet")
    return Path(str(path))


def stored_bytes(out: str) -> int:
    from terraloom.storage import Location

    loc = Location.parse(out)
    return sum((loc / rel).size() for rel in loc.walk_files())


def build_once(plan: Path, out: str, args: argparse.Namespace) -> dict[str, Any]:
    from terraloom.pipeline.build import run_build

    t0 = time.perf_counter()
    summary = run_build(
        plan,
        out,
        engine=args.engine,
        workers=args.workers,
        shard_samples=args.shard_samples,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    n = sum(summary.planned.values())
    return {
        "seconds": seconds,
        "samples_per_s": n / seconds,
        "bytes_read": summary.counters.get("bytes_read", 0) / n,
        "bytes_written": stored_bytes(out) / n,
    }


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16, help="samples of the plan (default 16)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--shard-samples", type=int, default=4, help="samples per block (default 4)")
    p.add_argument("--engine", choices=("beam", "dask"), default="beam")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)

    server, endpoint = start_s3()
    scratch = Path(tempfile.mkdtemp(prefix="terraloom-bench-storage-"))
    try:
        import s3fs

        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
        plan = make_plan(args.samples, scratch)
        load0 = os.getloadavg()
        results: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
        for k in range(args.rounds):
            order = ("local", "s3") if k % 2 == 0 else ("s3", "local")
            for target in order:
                out = str(scratch / f"run-{k}") if target == "local" else f"s3://{bucket}/run-{k}"
                results[target].append(build_once(plan, out, args))
                if target == "local":
                    shutil.rmtree(out)
        load1 = os.getloadavg()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"build of {args.samples} samples ({args.shard_samples} per block), engine "
        f"{args.engine} x{args.workers}, {args.rounds} interleaved rounds; load average "
        f"{load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'target':<8}{'samples/s median':>18}{'min..max':>16}{'read/sample':>14}{'written/sample':>16}"
    )
    med: dict[str, float] = {}
    for target, rows in results.items():
        rates = [r["samples_per_s"] for r in rows]
        med[target] = statistics.median(rates)
        print(
            f"{target:<8}{med[target]:>18.2f}{f'{min(rates):.2f}..{max(rates):.2f}':>16}"
            f"{_fmt_bytes(statistics.median(r['bytes_read'] for r in rows)):>14}"
            f"{_fmt_bytes(statistics.median(r['bytes_written'] for r in rows)):>16}"
        )
    print(f"s3_over_local_build_ratio={med['s3'] / med['local']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
