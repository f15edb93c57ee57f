"""The training loader at a million samples: samples/s per CPU core, DDP rank sharding, RSS.

Generates a token store of ``--samples`` rows (default 1,000,000) with every token modality
(S2L2A, S1GRD, S1RTC, DEM, LULC, NDVI image codes, GEO, CAPTION + lengths, crops) straight
through the store writer (``schemas.layouts.create_token_store`` template, zarr region writes
of many shards at once, ``tokenize_jobs.store`` commit markers with checksums and sizes):
random codes, no tokenizer, written by ``--gen-workers`` processes. Then measures the
training loader (``model.data.MaskedBatches``: a rank's batches of an epoch, 4M masking,
static-shape assembly; a token-only ``--variant`` config, since a million-sample corpus of
pixels does not fit here) in interleaved rounds (the order of configurations rotates):

* ``random, N workers``: the baseline, per-sample random order (``EpochOrder``: every
  sample read record by record, 11 chunk files per sample), ``model.data.TokenLoader`` with
  ``--workers`` worker processes, rank ``r`` of ``--world`` (r cycles over the rounds);
* ``block, N workers``: the same loader in block order (``BlockOrder``: chunk-level shuffle,
  per-rank shuffle windows of ``--shuffle-buffer`` samples read a chunk at a time), on the
  big store and on the ``--small-samples`` store (is memory flat in the store size?);
* ``block, rank r/W in process``: one rank built in this process, no workers;
* ``block, P rank processes``: ``--procs`` processes side by side, ranks 0..P-1 of ``W``;
* ``block, N workers, object-store cache``: a ``--cache-samples`` store put behind a
  ``memory://`` URL and opened as training opens a URL (``model.data.local_root``: fetched
  commit by commit into the local read-through cache, then read from there).

Per configuration: samples/s (wall), samples per CPU-second of the process and its workers
(the per-core figure: a shared 2-core machine inflates wall time, not CPU time), and the peak
RSS of the process tree (psutil, sampled every 50 ms) split into the private part (RSS minus
file-backed shared pages) and the total (which also counts page-cache pages of the store:
reclaimable, and bounded by the store). Block over random is also given per round (the two
ran side by side). The stores are deleted afterwards unless ``--keep``.

One script on purpose, like every bench: generating the store, the configurations it
compares and the table they print are one measurement, read top to bottom.

Target: >= 10,000 samples/s per core, 10x one H100's demand training ``base`` at the lean
rate of ``../shared/anchors/README.md`` (1,074 samples/s). Last line:
``loader_samples_per_s_per_core=<n>`` (median over rounds of the block-order worker loader
on the big store, samples per CPU-second).

    python bench/loader.py                                  # 1M + 100k + 20k stores, minutes
    python bench/loader.py --samples 20000 --small-samples 5000 --cache-samples 4096 \
        --rounds 2 --batches 8                              # smoke
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from terraloom.schemas.layouts import CAPTION_MAX_TOKENS, TOKEN_MODALITIES, create_token_store  # noqa: E402
from terraloom.schemas.modalities import CROP_PX, SAMPLE_PX, Layout, get_modality  # noqa: E402
from terraloom.tokenize_jobs.store import shard_checksums, shard_files, write_commit  # noqa: E402

#: samples/s one H100 consumes training ``base`` (lean probe, torch.compile; anchors README)
H100_BASE_SAMPLES_PER_S = 1074.0
TARGET_PER_CORE = 10_000.0


# --------------------------------------------------------------------------- store


def random_blocks(
    rng: np.random.Generator, rows: int, n_crops: int, crop_px: int = CROP_PX
) -> dict[str, np.ndarray]:
    """Random but well-formed token-store rows for every token modality (no tokenizer)."""
    t_img = (crop_px // 16) ** 2
    out: dict[str, np.ndarray] = {}
    for name in TOKEN_MODALITIES:
        m = get_modality(name)
        vocab = int(m.vocab_size or 1)
        if m.layout is Layout.IMAGE:
            out[name] = rng.integers(0, vocab, (rows, n_crops, t_img), dtype=np.uint16)
        elif m.layout is Layout.VECTOR:
            out[name] = rng.integers(0, vocab, (rows, n_crops, int(m.length or 1)), np.uint16)
        else:
            lens = rng.integers(4, CAPTION_MAX_TOKENS + 1, (rows, n_crops), dtype=np.uint16)
            ids = rng.integers(1, vocab, (rows, n_crops, CAPTION_MAX_TOKENS), dtype=np.uint16)
            ids[np.arange(CAPTION_MAX_TOKENS) >= lens[..., None]] = 0
            out[name], out[f"{name}_len"] = ids, lens
    crops = np.zeros((rows, n_crops, 5), np.int32)
    crops[..., :2] = rng.integers(0, SAMPLE_PX - crop_px + 1, (rows, n_crops, 2))
    crops[..., 2:4] = crop_px
    crops[..., 4] = rng.integers(0, 4, (rows, n_crops))
    out["crops"] = crops
    out["valid"] = np.ones(rows, bool)
    return out


def _write_slabs(
    path: str, slabs: list[tuple[int, int]], n_crops: int, shard: int, seed: int
) -> None:
    """Write whole-shard slabs (one zarr region write per array) and commit each shard.

    Commit markers are fsynced (the writer's contract), so they are written from a few
    threads to overlap the waits."""
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    group = zarr.open_group(path, mode="r+")
    arrays = {name: group[name] for name in group.array_keys()}
    files = shard_files(path)
    with ThreadPoolExecutor(8) as pool:
        for lo, hi in slabs:
            blocks = random_blocks(np.random.default_rng([seed, lo]), hi - lo, n_crops)
            for name, block in blocks.items():
                arrays[name][lo:hi] = block
            for s_lo in range(lo, hi, shard):
                s_hi = min(hi, s_lo + shard)
                part = {k: v[s_lo - lo : s_hi - lo] for k, v in blocks.items()}
                k = s_lo // shard
                record = {
                    "rows": [s_lo, s_hi],
                    "n_valid": int(part["valid"].sum()),
                    "checksums": shard_checksums(part),
                    "sizes": {n: info.chunk_file(k).stat().st_size for n, info in files.items()},
                    "tokenizers": {},
                    "crop_seed": seed,
                }
                pool.submit(write_commit, path, k, record)


def generate_store(
    path: Path,
    n: int,
    n_crops: int,
    shard: int,
    workers: int,
    seed: int = 0,
    slab_shards: int = 128,
) -> float:
    """Write an ``n``-row store with random codes; returns the wall seconds it took."""
    t = time.perf_counter()
    create_token_store(path, n, n_crops, shard_samples=shard)
    step = shard * slab_shards
    slabs = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    parts = [slabs[i::workers] for i in range(workers)]
    if workers <= 1:
        _write_slabs(str(path), slabs, n_crops, shard, seed)
    else:
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(target=_write_slabs, args=(str(path), p, n_crops, shard, seed))
            for p in parts
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode:
                raise RuntimeError(f"store writer process exited with {p.exitcode}")
    return time.perf_counter() - t


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (scandir: a million-sample store has ~375k files)."""
    total, stack = 0, [str(path)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    return total


# --------------------------------------------------------------------------- measuring


class PeakRss:
    """Peak RSS of this process and its children (sampled), total and private."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.total, self.private = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        total = private = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                mi = p.memory_info()
            except psutil.Error:
                continue
            total += mi.rss
            private += mi.rss - getattr(mi, "shared", 0)
        self.total, self.private = max(self.total, total), max(self.private, private)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and its live children (DataLoader workers)."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            c = p.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system
    return total


@dataclass(frozen=True)
class Figures:
    samples: int
    wall_s: float
    cpu_s: float
    rss_total: int = 0
    rss_private: int = 0

    @property
    def per_s(self) -> float:
        return self.samples / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        return self.samples / max(self.cpu_s, 1e-9)


def _dataset(store: Path, a: argparse.Namespace, rank: int, order: str) -> Any:
    from terraloom.model.config import MaskingConfig, model_preset
    from terraloom.model.data import MaskedBatches

    cfg = model_preset(a.variant, pixel_inputs=())
    return MaskedBatches(
        store,
        None,
        cfg,
        MaskingConfig(),
        global_batch=a.global_batch,
        rank=rank,
        world=a.world,
        seed=a.seed,
        store_mode=a.mode,
        order=order,
        shuffle_buffer=a.shuffle_buffer,
    )


def _batch_starts(n_per_epoch: int, n: int, round_: int) -> list[tuple[int, int]]:
    """``n`` consecutive batch keys starting at a round-dependent place of the epoch."""
    start = (round_ * 7919 * n) % max(1, n_per_epoch - n)
    return [(0, start + i) for i in range(n)]


def run_in_process(
    store: Path, a: argparse.Namespace, rank: int, round_: int, order: str = "block"
) -> Figures:
    ds = _dataset(store, a, rank, order)
    keys = _batch_starts(len(ds), a.batches + 1, round_)
    ds[keys[0]]  # open handles, epoch permutation
    with PeakRss() as rss:
        t, c = time.perf_counter(), time.process_time()
        got = sum(int(ds[k]["enc_ids"].shape[0]) for k in keys[1:])
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    return Figures(got, wall, cpu, rss.total, rss.private)


def run_workers(store: Path, a: argparse.Namespace, round_: int, order: str = "block") -> Figures:
    from terraloom.model.data import LoaderState, TokenLoader

    ds = _dataset(store, a, round_ % a.world, order)
    warm = 2 * a.workers  # workers started and past their first batches
    start = _batch_starts(len(ds), warm + a.batches + 8 * a.workers, round_)[0]
    loader = TokenLoader(ds, num_workers=a.workers, prefetch_factor=4, state=LoaderState(*start))
    with PeakRss() as rss:
        it: Iterator[Any] = iter(loader)
        for _ in range(warm):
            next(it)
        # steady state: the workers produce as fast as they are consumed, so the CPU of the
        # process tree over the timed batches is the CPU those batches cost
        t, c = time.perf_counter(), tree_cpu_seconds()
        got = sum(int(next(it)["enc_ids"].shape[0]) for _ in range(a.batches))
        wall, cpu = time.perf_counter() - t, tree_cpu_seconds() - c
        del it  # shuts the workers down
    return Figures(got, wall, cpu, rss.total, rss.private)


def _proc_main(store: str, a: dict[str, Any], rank: int, round_: int, q: Any) -> None:
    ns = argparse.Namespace(**a)
    f = run_in_process(Path(store), ns, rank, round_)
    q.put((f.samples, f.wall_s, f.cpu_s, f.rss_total, f.rss_private))


def run_processes(store: Path, a: argparse.Namespace, round_: int) -> Figures:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_proc_main, args=(str(store), vars(a), r, round_, q))
        for r in range(a.procs)
    ]
    for p in procs:
        p.start()
    res = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return Figures(
        sum(r[0] for r in res),
        max(r[1] for r in res),
        sum(r[2] for r in res),
        sum(r[3] for r in res),
        sum(r[4] for r in res),
    )


# --------------------------------------------------------------------------- main


def through_object_store(path: Path, root: Path) -> tuple[Path, float, float]:
    """Put a store behind an object-store URL and open it as training opens a URL.

    The store is uploaded to ``memory://`` (the storage layer's in-process object store: no
    network, so the fetch time is a floor; ``bench/storage.py`` measures S3), then
    ``model.data.local_root`` fetches it commit by commit into the local read-through cache,
    which the loader then reads. The in-memory objects are dropped before any measuring.
    Returns the cached split store and the upload and fetch seconds.
    """
    import uuid

    import fsspec

    from terraloom.model.data import local_root, split_path
    from terraloom.storage.location import Location
    from terraloom.storage.transfer import CACHE_ENV, upload_tree

    url = f"memory://terraloom-bench-loader-{uuid.uuid4().hex[:8]}/tokens"
    t = time.perf_counter()
    upload_tree(path.parent, Location.parse(url))
    up = time.perf_counter() - t
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(root / "cache")
    try:
        t = time.perf_counter()
        local = local_root(url, "tokens")
        fetch = time.perf_counter() - t
    finally:
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before
        fsspec.filesystem("memory").rm(url.split("/tokens")[0], recursive=True)
    return split_path(local, "train"), up, fetch


def _fmt_mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=1_000_000, help="rows of the big store")
    p.add_argument(
        "--small-samples", type=int, default=100_000, help="rows of the RSS-check store (0: none)"
    )
    p.add_argument(
        "--cache-samples",
        type=int,
        default=20_000,
        help="rows of the store read through the object-store cache (0: none)",
    )
    p.add_argument("--crops", type=int, default=1, help="crops per sample in the store")
    p.add_argument("--shard-samples", type=int, default=32, help="rows per token-store shard")
    p.add_argument("--gen-workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--variant", default="base", choices=["tiny", "small", "base", "large"])
    p.add_argument("--world", type=int, default=8, help="simulated DDP world size W")
    p.add_argument("--global-batch", type=int, default=1024, help="global batch (W x per-rank)")
    p.add_argument(
        "--mode",
        default="memmap",
        choices=["memmap", "memory", "auto"],
        help="TokenStore read mode (memmap: the local store's raw chunk files)",
    )
    p.add_argument(
        "--shuffle-buffer",
        type=int,
        default=4096,
        help="samples per shuffle window of the block order (model.order.BlockOrder)",
    )
    p.add_argument(
        "--no-random",
        action="store_true",
        help="skip the per-sample random order (the baseline) on the big store",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--procs", type=int, default=2, help="rank processes run side by side")
    p.add_argument(
        "--batches",
        type=int,
        default=64,
        help="timed per-rank batches per configuration (two shuffle windows by default)",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dir", type=Path, default=None, help="where the stores go (default: a temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the generated stores")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    if (
        a.samples < a.global_batch
        or a.global_batch % a.world
        or a.procs > a.world
        or min(a.rounds, a.batches, a.workers, a.shuffle_buffer, a.crops, a.shard_samples) < 1
    ):
        print(
            "need samples >= global batch, global batch divisible by world, procs <= world, "
            "and rounds, batches, workers, shuffle buffer, crops, shard samples >= 1",
            file=sys.stderr,
        )
        return 2

    root = a.dir or Path(tempfile.mkdtemp(prefix="terraloom_loader_"))
    root.mkdir(parents=True, exist_ok=True)
    sizes = sorted(
        {n for n in (a.cache_samples, a.small_samples, a.samples) if n >= a.global_batch}
    )
    stores: dict[int, Path] = {}
    report: dict[str, Any] = {"load_average_start": os.getloadavg()[0], "stores": {}}
    cached: Path | None = None
    try:
        for n in sizes:
            path = root / f"tokens_{n}" / "train.zarr"
            if not (path / "zarr.json").exists() or not a.keep:
                shutil.rmtree(path.parent, ignore_errors=True)
                secs = generate_store(path, n, a.crops, a.shard_samples, a.gen_workers, a.seed)
            else:
                secs = float("nan")
            size = du(path.parent)
            stores[n] = path
            report["stores"][n] = {"write_s": secs, "bytes": size}
            how = (
                f"written in {secs:.1f} s ({n / secs:,.0f} samples/s)"
                if secs == secs
                else "reused (--keep)"
            )
            print(
                f"store {n:>9,} samples x {a.crops} crop(s), shards of {a.shard_samples}: "
                f"{size / 1e9:.2f} GB, {how}"
            )
        if a.cache_samples in stores:
            cached, up_s, fetch_s = through_object_store(stores[a.cache_samples], root)
            report["object_store"] = {"upload_s": up_s, "fetch_s": fetch_s}
            print(
                f"store {a.cache_samples:>9,} samples behind memory://: uploaded in {up_s:.1f} s, "
                f"fetched into the read-through cache in {fetch_s:.1f} s "
                f"({a.cache_samples / fetch_s:,.0f} samples/s)"
            )

        big = max(n for n in (a.small_samples, a.samples) if n in stores)
        w = f"{a.workers} workers"
        configs: list[tuple[str, int, Callable[[int], Figures]]] = []
        if not a.no_random:
            configs.append(
                (f"random, {w}", big, lambda r, s=stores[big]: run_workers(s, a, r, "random"))
            )
        configs.append((f"block, {w}", big, lambda r, s=stores[big]: run_workers(s, a, r)))
        for n, path in sorted(stores.items()):
            if n == a.small_samples and n != big:
                configs.append((f"block, {w}", n, lambda r, s=path: run_workers(s, a, r)))
        configs.append(
            (
                f"block, rank r/{a.world} in process",
                big,
                lambda r, s=stores[big]: run_in_process(s, a, r % a.world, r),
            )
        )
        if a.procs > 1:
            configs.append(
                (
                    f"block, {a.procs} rank processes",
                    big,
                    lambda r, s=stores[big]: run_processes(s, a, r),
                )
            )
        if cached is not None:
            configs.append(
                (
                    f"block, {w}, object-store cache",
                    a.cache_samples,
                    lambda r: run_workers(cached, a, r),
                )
            )
        results: dict[tuple[str, int], list[Figures]] = {(c, n): [] for c, n, _ in configs}
        for r in range(a.rounds):
            order = configs[r % len(configs) :] + configs[: r % len(configs)]
            for name, n, fn in order:
                results[(name, n)].append(fn(r))
        load = os.getloadavg()[0]

        print(
            f"\nvariant={a.variant} (token inputs only) world={a.world} global_batch={a.global_batch} "
            f"local_batch={a.global_batch // a.world} shuffle_buffer={a.shuffle_buffer} "
            f"rounds={a.rounds} batches/config={a.batches} cpus={os.cpu_count()} "
            f"load_average={load:.1f}"
        )
        head = f"{'configuration':<40}{'store':>11}{'samples/s':>11}{'spread':>15}{'/CPU-s':>9}{'spread':>15}{'RSS MB':>9}{'private':>9}"
        print(head)
        rows_out = []
        for (name, n), figs in results.items():
            ws = [f.per_s for f in figs]
            cs = [f.per_cpu_s for f in figs]
            row = {
                "configuration": name,
                "store_samples": n,
                "samples_per_s": statistics.median(ws),
                "samples_per_s_range": [min(ws), max(ws)],
                "samples_per_cpu_s": statistics.median(cs),
                "samples_per_cpu_s_range": [min(cs), max(cs)],
                "samples_per_cpu_s_all": cs,
                "peak_rss": max(f.rss_total for f in figs),
                "peak_rss_private": max(f.rss_private for f in figs),
            }
            rows_out.append(row)
            print(
                f"{name:<40}{n:>11,}{row['samples_per_s']:>11,.0f}{f'{min(ws):,.0f}-{max(ws):,.0f}':>15}"
                f"{row['samples_per_cpu_s']:>9,.0f}{f'{min(cs):,.0f}-{max(cs):,.0f}':>15}"
                f"{_fmt_mb(row['peak_rss']):>9}{_fmt_mb(row['peak_rss_private']):>9}"
            )

        def find(name: str, n: int) -> dict[str, Any] | None:
            return next(
                (r for r in rows_out if r["configuration"] == name and r["store_samples"] == n),
                None,
            )

        head_row = find(f"block, {w}", big)
        assert head_row is not None
        per_core = head_row["samples_per_cpu_s"]
        base_row = find(f"random, {w}", big)
        if base_row is not None:
            # per round, side by side: block over random
            pairs = [
                b / r
                for b, r in zip(
                    head_row["samples_per_cpu_s_all"], base_row["samples_per_cpu_s_all"]
                )
            ]
            print(
                f"block over random order (per CPU-s, per round): median "
                f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f})"
            )
            report["block_over_random"] = statistics.median(pairs)
        small = [
            r
            for r in rows_out
            if r["configuration"] == f"block, {w}" and r["store_samples"] not in (big,)
        ]
        if small:
            ratio = head_row["peak_rss_private"] / max(small[0]["peak_rss_private"], 1)
            print(
                f"private RSS {big:,} vs {small[0]['store_samples']:,} samples: "
                f"{ratio:.2f}x (flat = about 1)"
            )
        print(
            f"one H100 training base consumes {H100_BASE_SAMPLES_PER_S:,.0f} samples/s: "
            f"{per_core / H100_BASE_SAMPLES_PER_S:.1f}x per core; target {TARGET_PER_CORE:,.0f} "
            f"per core {'met' if per_core >= TARGET_PER_CORE else 'NOT met'}"
        )
        report.update(
            rows=rows_out, load_average_end=load, args={k: str(v) for k, v in vars(a).items()}
        )
        report["loader_samples_per_s_per_core"] = per_core
        if a.json:
            a.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"loader_samples_per_s_per_core={per_core:.0f}")
    finally:
        if cached is not None:
            shutil.rmtree(root / "cache", ignore_errors=True)
        if not a.keep and a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
        elif not a.keep:
            for path in stores.values():
                shutil.rmtree(path.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
