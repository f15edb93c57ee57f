"""Benchmark the storage layer: build, encode and the token loader on S3 against local disk.

Starts moto's S3 server (the one the tests use; no credentials) in its own process on a
free port of 127.0.0.1, plans ``--samples`` samples of the embedded ``tiny`` world and builds
it once to each target untimed (imports, page cache, clients warm). Each of ``--rounds``
interleaved rounds (the order of the targets alternates per round, so drift
on a shared machine hits both) then runs, on S3 and on local disk:

1. **build**: the plan into ``s3://<bucket>/run-<k>`` and into a local directory, a fresh
   output each, same engine and workers; samples/s, and per sample the bytes read from the
   source COGs (the engine's ``bytes_read`` counter), the bytes written to the output (every
   object: shards, tables, parts, markers) and the requests the S3 server answered;
2. **encode**: that round's corpus (the S3 one from S3, the local one locally) into a token
   store beside it (``terraloom.tokenize_jobs.encode`` takes locations), with small untrained
   FSQ-VAE tokenizers (``--tokenizer-width``; the I/O path is what is compared, and it is the
   same for trained ones); samples/s and bytes written per sample;
3. **token loader**: ``model.data.MaskedBatches`` (token inputs of ``--loader-variant``, 4M
   masking) over a ``--loader-rows``-row token store of random ids, ``--loader-batches``
   batches of ``--loader-batch``, opened from local disk, and from its S3 URL through the
   read-through cache (``model.data.local_root``) *cold* (cache empty: the fetch is timed)
   and *cached* (the fetch finds every committed shard present); samples/s with the open
   and the fetch included, and the fetch's own seconds.

Per measure: the median samples/s with its spread (min..max) and the S3/local ratio, the
requests per sample, and the CPU seconds of this process and of the S3 server (which shares
the machine's cores with the build, as a real endpoint would not); the load average before
and after. A loopback endpoint hides network latency, so the ratios are
the storage layer's overhead (requests, copies, CPU), not a cloud figure.

Last line: ``s3_over_local_build_ratio=<r>`` (median S3 build samples/s over median local
samples/s; target >= 0.8 on loopback). Example::

    .venv/bin/python bench/storage.py --samples 16 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ is sys.path[0]: its sibling scripts (bench/tokenizers.py) would
# shadow packages of the same name (Hugging Face ``tokenizers``, which the encode imports)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _bench_module(name: str) -> ModuleType:
    """A sibling bench script as a module (``bench/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: moto's S3 server, run in its own process, counting the requests it answers (``GET
#: /__requests`` returns the count and the server's CPU seconds; the path is no bucket
#: name, so it clashes with nothing).
_SERVER = """
import sys, threading, time
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
wsgi, lock, count = server._server, threading.Lock(), [0]
app = wsgi.app
def counting(environ, start_response):
    if environ.get("PATH_INFO") == "/__requests":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{count[0]} {time.process_time()}".encode()]
    with lock:
        count[0] += 1
    return app(environ, start_response)
wsgi.app = counting
while True:
    time.sleep(3600)
"""


def start_s3() -> tuple[Any, str]:
    """moto's S3 server in its own process on a free loopback port (as a real endpoint
    would be: not sharing the build's interpreter), the environment pointed at it."""
    import subprocess
    import urllib.request

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port)],
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


def server_counters(endpoint: str) -> tuple[int, float]:
    """Requests the server has answered so far (its own query not counted) and the CPU
    seconds it has used: on a shared machine the server competes with the build for cores,
    which a real endpoint would not."""
    import urllib.request

    with urllib.request.urlopen(f"{endpoint}/__requests", timeout=10) as resp:
        count, cpu = resp.read().split()
    return int(count), float(cpu)


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


def _timed(run: Callable[[], Any], endpoint: str, n: int) -> dict[str, Any]:
    """Run once: seconds, samples/s, the S3 requests it made per sample, and the CPU
    seconds of this process (its threads; worker processes not counted) and the server."""
    r0, s0 = server_counters(endpoint)
    c0, t0 = time.process_time(), time.perf_counter()
    value = run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    r1, s1 = server_counters(endpoint)
    return {
        "value": value,
        "seconds": seconds,
        "samples_per_s": n / seconds,
        "requests": (r1 - r0) / n,
        "cpu_s": cpu,
        "server_cpu_s": s1 - s0,
    }


def build_once(plan: Path, out: str, args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    from terraloom.pipeline.build import run_build

    def run() -> Any:
        return run_build(
            plan,
            out,
            engine=args.engine,
            workers=args.workers,
            shard_samples=args.shard_samples,
            progress=False,
        )

    got = _timed(run, endpoint, args.samples)
    summary = got.pop("value")
    n = sum(summary.planned.values())
    assert n == args.samples, (n, args.samples)
    got["bytes_read"] = summary.counters.get("bytes_read", 0) / n
    got["bytes_written"] = stored_bytes(out) / n
    return got


def encode_once(
    corpus: str, tokens: str, tokenizers: Path, args: argparse.Namespace, endpoint: str
) -> dict[str, Any]:
    from terraloom.tokenize_jobs.encode import EncodeConfig, encode

    cfg = EncodeConfig(
        n_crops=args.encode_crops, batch=args.encode_batch, splits=("train",), progress=False
    )
    got = _timed(lambda: encode(corpus, tokenizers, tokens, cfg), endpoint, args.samples)
    report = got.pop("value")
    assert report.splits[0].encoded_rows == args.samples, report
    got["bytes_written"] = stored_bytes(tokens) / args.samples
    return got


def loader_once(
    store: str, cache: Path | None, args: argparse.Namespace, endpoint: str
) -> dict[str, Any]:
    """Open the token store (through the read-through cache ``cache`` for a URL) and read
    ``--loader-batches`` masked batches; the fetch is timed on its own too."""
    from terraloom.model.config import MaskingConfig, model_preset
    from terraloom.model.data import MaskedBatches, local_root, split_path
    from terraloom.storage.transfer import CACHE_ENV

    if cache is not None:
        os.environ[CACHE_ENV] = str(cache)
    fetched: list[float] = []

    def run() -> int:
        t0 = time.perf_counter()
        root = local_root(store, "tokens")
        fetched.append(time.perf_counter() - t0)
        ds = MaskedBatches(
            split_path(root, "train"),
            None,
            model_preset(args.loader_variant, pixel_inputs=()),
            MaskingConfig(),
            global_batch=args.loader_batch,
        )
        n = 0
        for i in range(args.loader_batches):
            n += int(ds[(i // len(ds), i % len(ds))]["enc_ids"].shape[0])
        return n

    n = args.loader_batches * args.loader_batch
    got = _timed(run, endpoint, n)
    assert got.pop("value") == n
    got["fetch_s"] = fetched[0]
    return got


def loader_store(root: Path, args: argparse.Namespace) -> Path:
    """A committed token store of random ids (bench/loader.py's generator) at ``root``."""
    loader = _bench_module("loader")
    loader.generate_store(root / "train.zarr", args.loader_rows, 4, 64, workers=1)
    return root


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _rate(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _spread(rows: list[dict[str, Any]]) -> tuple[float, str]:
    rates = [r["samples_per_s"] for r in rows]
    return statistics.median(rates), f"{_rate(min(rates))}..{_rate(max(rates))}"


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16, help="samples of the plan (default 16)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--shard-samples", type=int, default=4, help="samples per block (default 4)")
    p.add_argument("--engine", choices=("beam", "dask"), default="beam")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--encode-crops", type=int, default=1, help="crops per sample (default 1)")
    p.add_argument("--encode-batch", type=int, default=16)
    p.add_argument("--tokenizer-width", type=int, default=8, help="FSQ-VAE width (default 8)")
    p.add_argument("--loader-rows", type=int, default=4096, help="rows of the loader's store")
    p.add_argument("--loader-batches", type=int, default=40)
    p.add_argument("--loader-batch", type=int, default=256)
    p.add_argument("--loader-variant", default="base", choices=["tiny", "small", "base", "large"])
    p.add_argument("--skip", nargs="*", default=(), choices=("encode", "loader"))
    args = p.parse_args(argv)

    server, endpoint = start_s3()
    scratch = Path(tempfile.mkdtemp(prefix="terraloom-bench-storage-"))
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def record(measure: str, target: str, got: dict[str, Any]) -> None:
        results.setdefault(measure, {}).setdefault(target, []).append(got)

    try:
        import s3fs

        from terraloom.storage import Location
        from terraloom.storage.transfer import upload_tree

        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
        plan = make_plan(args.samples, scratch)
        tokenizers: Path | None = None
        loader_url = f"s3://{bucket}/loader-tokens"
        if "loader" not in args.skip:
            local_tokens = loader_store(scratch / "loader-tokens", args)
            upload_tree(local_tokens, Location.parse(loader_url))
        # untimed warm-up of each measure on both targets: imports, the world's files in
        # the page cache, the clients; the first timed run would otherwise pay for them alone
        warm = {"local": str(scratch / "warm-up"), "s3": f"s3://{bucket}/warm-up"}
        for out in warm.values():
            build_once(plan, out, args, endpoint)
        if "encode" not in args.skip:
            encode_bench = _bench_module("encode")
            tokenizers = encode_bench.build_tokenizers(
                scratch / "tokenizers", Path(warm["local"]), args.tokenizer_width
            )
            for out in warm.values():
                encode_once(out, f"{out}-tokens", tokenizers, args, endpoint)
        if "loader" not in args.skip:
            loader_once(str(scratch / "loader-tokens"), None, args, endpoint)
        load0 = os.getloadavg()
        for k in range(args.rounds):
            order = ("local", "s3") if k % 2 == 0 else ("s3", "local")
            corpus = {"local": str(scratch / f"run-{k}"), "s3": f"s3://{bucket}/run-{k}"}
            for target in order:
                record("build", target, build_once(plan, corpus[target], args, endpoint))
            if tokenizers is not None:
                for target in order:
                    tokens = f"{corpus[target]}-tokens"
                    record(
                        "encode",
                        target,
                        encode_once(corpus[target], tokens, tokenizers, args, endpoint),
                    )
            if "loader" not in args.skip:
                cache = scratch / f"cache-{k}"  # empty: the cold read
                runs: list[tuple[str, str, Path | None]] = [
                    ("local", str(scratch / "loader-tokens"), None),
                    ("s3 cold", loader_url, cache),
                    ("s3 cached", loader_url, cache),
                ]
                for target, store, where in runs if k % 2 == 0 else [*runs[1:], runs[0]]:
                    record("loader", target, loader_once(store, where, args, endpoint))
                shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(corpus["local"])
            shutil.rmtree(f"{corpus['local']}-tokens", ignore_errors=True)
        load1 = os.getloadavg()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"{args.samples} samples ({args.shard_samples} per block), build engine {args.engine} "
        f"x{args.workers}, {args.rounds} interleaved rounds; load average {load0[0]:.1f} -> "
        f"{load1[0]:.1f} (1 min) on {os.cpu_count()} cores"
    )
    head = f"{'measure':<8}{'target':<11}{'samples/s median':>18}{'min..max':>18}{'s3/local':>10}"
    print(
        f"{head}{'read/sample':>13}{'written/sample':>16}{'requests/sample':>17}"
        f"{'CPU s: client':>15}{'server':>8}"
    )
    ratios: dict[str, float] = {}
    for measure, by_target in results.items():
        base, _ = _spread(by_target["local"])
        for target, rows in by_target.items():
            med, spread = _spread(rows)
            ratio = med / base
            if target == "s3":
                ratios[measure] = ratio
            read = _fmt_bytes(_median(rows, "bytes_read")) if "bytes_read" in rows[0] else "-"
            written = (
                _fmt_bytes(_median(rows, "bytes_written")) if "bytes_written" in rows[0] else "-"
            )
            remote = target != "local"
            reqs = f"{_median(rows, 'requests'):.1f}" if remote else "-"
            server_cpu = f"{_median(rows, 'server_cpu_s'):.2f}" if remote else "-"
            print(
                f"{measure:<8}{target:<11}{_rate(med):>18}{spread:>18}{ratio:>10.2f}"
                f"{read:>13}{written:>16}{reqs:>17}{_median(rows, 'cpu_s'):>15.2f}{server_cpu:>8}"
            )
    if "loader" in results:
        fetch = {t: _median(rows, "fetch_s") for t, rows in results["loader"].items()}
        print(
            f"loader: {args.loader_rows}-row token store, {args.loader_batches} batches of "
            f"{args.loader_batch} per run; fetch through the read-through cache "
            f"{fetch['s3 cold']:.2f} s cold, {fetch['s3 cached']:.2f} s cached (median)"
        )
    for measure in ("encode",):
        if measure in ratios:
            print(f"s3_over_local_{measure}_ratio={ratios[measure]:.2f}")
    print(f"s3_over_local_build_ratio={ratios['build']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
