"""Benchmark of the encode job and the token store reader.

1. ``encode_io_efficiency``: samples/s of the whole encode job (read corpus shards,
   crop, tokenize every modality, write, checksum, commit) divided by the samples/s of
   the tokenizers alone on the same crops already in memory on the same device, same
   batch size, measured side by side in one process (best of ``--repeats`` each, run
   alternately so background load hits both alike). 1.0 = the device never waits on I/O.
2. ``token_reader_samples_per_s``: ``TokenStore.batch`` of random 256-row batches x all
   token modalities, on a store of ``--reader-rows`` rows (synthetic tokens: the reader
   does not care what the ids mean), memmap and in-memory modes.

Without ``--corpus``/``--tokenizers`` it builds a toy corpus and untrained FSQ-VAE
tokenizers of the default (trainable) size with fixed seeds. The last two lines are
``encode_io_efficiency=<ratio>`` and ``token_reader_samples_per_s=<n>``.

    python bench/encode.py                    # CPU here: toy corpus, 32 samples
    python bench/encode.py --device cuda --n-samples 256 --batch 128
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# run as a script, bench/ is sys.path[0]: its sibling scripts (bench/tokenizers.py) would
# shadow packages of the same name (Hugging Face ``tokenizers``)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from terraloom.schemas.layouts import CAPTION_MAX_TOKENS, TOKEN_MODALITIES, create_token_store  # noqa: E402
from terraloom.schemas.modalities import SAMPLE_PX, Layout, get_modality  # noqa: E402
from terraloom.tokenize_jobs.crops import apply_crops, draw_crops  # noqa: E402
from terraloom.tokenize_jobs.encode import EncodeConfig, encode, sample_keys  # noqa: E402
from terraloom.tokenize_jobs.store import TokenStore, array_checksum, write_commit  # noqa: E402
from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers  # noqa: E402


def build_tokenizers(out: Path, corpus: Path, width: int, seed: int = 0) -> Path:
    """Untrained FSQ-VAE tokenizers (fixed seed; same compute as trained ones) + GEO + CAPTION."""
    import zarr

    from terraloom.tokenize_jobs.tokenizers.caption import train_wordpiece
    from terraloom.tokenize_jobs.tokenizers.geo import GeoTokenizer
    from terraloom.tokenize_jobs.tokenizers.image import FSQVAE, FSQVAEConfig
    from terraloom.tokenize_jobs.tokenizers.io import (
        save_caption_tokenizer,
        save_geo_tokenizer,
        save_image_tokenizer,
    )
    from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig

    for i, name in enumerate(TOKEN_MODALITIES):
        m = get_modality(name)
        if m.is_image:
            torch.manual_seed(seed + i)
            save_image_tokenizer(
                FSQVAE(FSQVAEConfig.for_modality(name, net=ConvNetConfig(width=width))).eval(),
                out / name.lower(),
            )
        elif m.layout is Layout.VECTOR:
            save_geo_tokenizer(GeoTokenizer(), out / name.lower())
        else:
            g: Any = zarr.open_group(str(corpus / "train.zarr"), mode="r")
            caps = [bytes(r).rstrip(b"\0").decode() for r in np.asarray(g[name][:])]
            save_caption_tokenizer(
                train_wordpiece(caps, vocab_size=1024, min_frequency=1), out / name.lower()
            )
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tokenizers_alone(
    corpus_split: Path, tokenizers: dict, cfg: EncodeConfig, device: torch.device
) -> tuple[float, int]:
    """Seconds for the tokenizers on every valid row's crops, pre-cut on the device."""
    import zarr

    g: Any = zarr.open_group(str(corpus_split), mode="r")
    rows = np.flatnonzero(np.asarray(g["valid"][:], bool))
    keys = sample_keys(corpus_split.parent, corpus_split.name[:-5], int(g.attrs["n_samples"]))
    crops = draw_crops(list(keys[rows]), cfg.n_crops, cfg.crop_px, SAMPLE_PX, cfg.seed).reshape(
        -1, 5
    )
    src = np.repeat(np.arange(len(rows)), cfg.n_crops)
    bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    inputs: dict[str, torch.Tensor] = {}
    seqs: dict[str, np.ndarray] = {}
    for name in cfg.modality_names:
        values = np.asarray(g[name][:])[rows]
        if get_modality(name).is_image:
            x = torch.from_numpy(values.astype(np.float32)).to(device)
            inputs[name] = apply_crops(x, crops, src)  # in memory, on the device, cut
            del x
        else:
            seqs[name] = values
    n = len(crops)
    with torch.inference_mode():
        for name, x in inputs.items():  # warm-up (allocator, kernels)
            tokenizers[name].to(device).encode(x[: min(cfg.batch, n)])
        _sync(device)
        t0 = time.perf_counter()
        for name, x in inputs.items():
            tok = tokenizers[name]
            for a in range(0, n, cfg.batch):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    tok.encode(x[a : a + cfg.batch])
        for name, values in seqs.items():
            if get_modality(name).layout is Layout.VECTOR:
                tokenizers[name].encode_batch(values.astype(np.float64), 2)
            else:
                tokenizers[name].encode_batch(
                    [bytes(r).rstrip(b"\0").decode() for r in values], CAPTION_MAX_TOKENS
                )
        _sync(device)
    return time.perf_counter() - t0, len(rows)


def synthetic_store(
    path: Path, n_rows: int, n_crops: int, crop_px: int, shard: int, seed: int = 0
) -> Path:
    """A committed token store of random ids (the reader's speed does not depend on them)."""
    g = create_token_store(
        path, n_samples=n_rows, n_crops=n_crops, crop_px=crop_px, shard_samples=shard
    )
    rng = np.random.default_rng(seed)
    arrays = {name: g[name] for name in g.array_keys()}
    for k, lo in enumerate(range(0, n_rows, shard)):
        hi = min(lo + shard, n_rows)
        blocks: dict[str, np.ndarray] = {}
        for name, arr in arrays.items():
            shape = (hi - lo, *arr.shape[1:])
            blocks[name] = (
                np.ones(shape, bool)
                if name == "valid"
                else rng.integers(0, 1000, shape).astype(arr.dtype)
            )
            arr[lo:hi] = blocks[name]
        write_commit(
            path,
            k,
            {"rows": [lo, hi], "checksums": {n: array_checksum(b) for n, b in blocks.items()}},
        )
    return path


def reader_rate(
    path: Path, mode: str, batch: int, seconds: float, warm_s: float = 5.0, seed: int = 0
) -> float:
    store = TokenStore(path, mode=mode)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    rows = store.valid_rows
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warm_s:  # warm: arrays loaded / chunk maps opened
        store.batch(rng.choice(rows, batch), rng.integers(0, store.n_crops, batch))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        store.batch(
            rng.choice(rows, batch), rng.integers(0, store.n_crops, batch), TOKEN_MODALITIES
        )
        n += batch
    return n / (time.perf_counter() - t0)


def bench_encode(args: argparse.Namespace, work: Path) -> float:
    """Print the job-vs-tokenizers table; return the efficiency ratio."""
    device = torch.device(args.device)
    corpus = args.corpus
    if corpus is None:
        from terraloom.tokenize_jobs.testing import make_toy_corpus

        corpus = work / "corpus"
        if not (corpus / f"{args.split}.zarr").exists():
            t = time.perf_counter()
            make_toy_corpus(
                corpus,
                {args.split: args.n_samples},
                seed=0,
                splits=(args.split,),
                shard_samples=args.shard_samples,
                modalities=TOKEN_MODALITIES,
            )
            print(f"toy corpus: {args.n_samples} samples in {time.perf_counter() - t:.1f} s")
    tok_dir = args.tokenizers or build_tokenizers(work / "tokenizers", corpus, args.width)
    cfg = EncodeConfig(
        n_crops=args.crops,
        crop_px=args.crop_size,
        batch=args.batch,
        device=args.device,
        compile=args.compile,
        splits=(args.split,),
        progress=False,
    )
    toks = load_tokenizers(tok_dir, cfg.modality_names)
    base_s, job_s = [], []
    n_rows = n_valid = 0
    for r in range(args.repeats):  # alternate, so background load hits both alike
        s, n_valid = tokenizers_alone(corpus / f"{args.split}.zarr", toks, cfg, device)
        base_s.append(s)
        out = work / f"tokens-{r}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        rep = encode(corpus, tok_dir, out, cfg)
        job_s.append(time.perf_counter() - t0)
        n_rows = rep.splits[0].encoded_rows
        assert rep.splits[0].valid_rows == n_valid
    base_rate, job_rate = n_valid / min(base_s), n_valid / min(job_s)
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"\ndevice: {dev_name}; {n_rows} rows ({n_valid} valid) x {args.crops} crops of "
        f"{args.crop_size} px x {len(cfg.modality_names)} modalities, batch {args.batch}"
    )
    print(f"{'measure':<44}{'seconds (best)':>16}{'samples/s':>12}")
    print(f"{'tokenizers alone, crops in device memory':<44}{min(base_s):>16.2f}{base_rate:>12.2f}")
    print(f"{'encode job end to end (read..commit)':<44}{min(job_s):>16.2f}{job_rate:>12.2f}")
    print(
        f"all runs: alone {[round(v, 2) for v in base_s]} s, job {[round(v, 2) for v in job_s]} s"
    )
    return job_rate / base_rate


def bench_reader(args: argparse.Namespace, work: Path) -> float:
    """Print reader rates per mode; return the memmap rate (the mode of large stores)."""
    store_path = work / "reader" / "train.zarr"
    if not store_path.exists():
        t = time.perf_counter()
        synthetic_store(store_path, args.reader_rows, args.crops, args.crop_size, 32)
        print(
            f"\nreader store: {args.reader_rows} rows x {args.crops} crops written in "
            f"{time.perf_counter() - t:.1f} s"
        )
    rates = {}
    for mode in ("memmap", "memory"):
        rates[mode] = reader_rate(store_path, mode, args.reader_batch, args.reader_seconds)
        print(
            f"TokenStore.batch({args.reader_batch} random rows, all modalities), "
            f"{mode:<7}: {rates[mode]:>10.0f} samples/s"
        )
    return rates["memmap"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--corpus", type=Path, help="corpus directory (default: a toy corpus)")
    p.add_argument(
        "--tokenizers",
        type=Path,
        help="tokenizer directory (default: untrained default-size FSQ-VAEs)",
    )
    p.add_argument("--split", default="train")
    p.add_argument("--n-samples", type=int, default=32, help="toy corpus rows")
    p.add_argument("--shard-samples", type=int, default=8, help="toy corpus rows per shard")
    p.add_argument("--width", type=int, default=64, help="FSQ-VAE width of the built tokenizers")
    p.add_argument("--crops", type=int, default=4)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--reader-rows", type=int, default=50_000)
    p.add_argument("--reader-batch", type=int, default=256)
    p.add_argument("--reader-seconds", type=float, default=3.0)
    p.add_argument("--workdir", type=Path, help="keep files here (default: a temporary directory)")
    p.add_argument("--only", choices=("encode", "reader"), help="run one of the two measurements")
    args = p.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-encode-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ratio = bench_encode(args, work) if args.only != "reader" else None
        rate = bench_reader(args, work) if args.only != "encode" else None
        if ratio is not None:
            print(f"encode_io_efficiency={ratio:.3f}")
        if rate is not None:
            print(f"token_reader_samples_per_s={rate:.0f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
