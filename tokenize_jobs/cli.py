"""``terraloom-tokenize``: one argparse entry point; each subcommand registers itself.

Every subcommand lives in an ``add_<cmd>_parser(subparsers)`` function that adds its
parser and sets ``func`` (``args -> exit code``), so the commands stay independent.
Exit codes: 0 success, 1 a check failed (``verify``), 2 bad input (a clear message on
stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from terraloom.schemas.modalities import CROP_PX

SubParsers = Any  # argparse._SubParsersAction


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


# --------------------------------------------------------------------------- train


def add_train_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    from terraloom.schemas.modalities import modalities

    names = ", ".join(m.name for m in modalities(tokens=True))
    p = subparsers.add_parser(
        "train",
        help="train the tokenizer of one modality on a corpus (resumable; torchrun for DDP)",
        description="Train (or resume) a tokenizer: FSQ-VAE for image modalities, WordPiece for "
        "CAPTION; GEO only writes its config. Writes config.json + weights, ckpt.pt, "
        "train_log.json and an eval report (eval.json/md/png) into --out; a run that finds "
        "ckpt.pt there resumes it.",
    )
    p.add_argument("--modality", required=True, help=f"one of {names}")
    p.add_argument("--corpus", required=True, help="corpus directory holding <split>.zarr stores")
    p.add_argument("--out", default=None, help="output directory (default tokenizers/<modality>)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--batch", type=int, default=16, help="crops per step and rank (default 16)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument("--warmup", type=int, default=100, help="linear warmup steps (default 100)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument(
        "--crop",
        type=int,
        default=CROP_PX,
        help=f"training crop side, multiple of 16 (default {CROP_PX})",
    )
    p.add_argument(
        "--width",
        type=int,
        default=32,
        help="base channel width; the low-resolution stages use 4x (default 32)",
    )
    p.add_argument(
        "--entropy-weight",
        type=float,
        default=None,
        help="FSQ codebook-usage regulariser weight (default: 0.1, S2L2A 0.02; 0 = off)",
    )
    p.add_argument(
        "--ema-decay", type=float, default=0.999, help="EMA decay of the exported weights"
    )
    p.add_argument(
        "--ckpt-every", type=int, default=500, help="checkpoint period in steps (default 500)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of init and crop sampling (default 0)")
    p.add_argument(
        "--eval-samples", type=int, default=32, help="val rows in the eval report (default 32)"
    )
    p.add_argument(
        "--vocab-size", type=int, default=None, help="CAPTION vocabulary size (default: registry)"
    )
    p.add_argument(
        "--no-linear-init",
        action="store_true",
        help="start continuous tokenizers from random weights instead of the fitted linear "
        "tokenizer (and weight bands equally)",
    )
    p.add_argument(
        "--compand-alpha",
        type=float,
        default=None,
        help="shape of the compander fitted by the linear start: 1 equalises the levels' "
        "use, 1/3 minimises rounding error (default 1.0)",
    )
    p.add_argument(
        "--no-compand",
        action="store_true",
        help="no compander in front of the quantiser (evenly spaced FSQ levels)",
    )
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from terraloom.schemas.modalities import UnknownModalityError, get_modality, modalities

    def fail(message: str) -> int:
        print(f"terraloom-tokenize train: error: {message}", file=sys.stderr)
        return 2

    try:
        m = get_modality(args.modality)
    except UnknownModalityError as exc:
        return fail(str(exc))
    if not m.has_tokens:
        return fail(
            f"{m.name} has no tokenizer; tokenized modalities: {', '.join(t.name for t in modalities(tokens=True))}"
        )
    corpus = Path(args.corpus)
    if not corpus.is_dir():
        return fail(f"corpus directory {corpus} does not exist")
    from terraloom.tokenize_jobs.train import TrainConfig, train_tokenizer

    try:
        config = TrainConfig(
            modality=m.name,
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            warmup_steps=args.warmup,
            device=args.device,
            crop_px=args.crop,
            width=args.width,
            entropy_weight=args.entropy_weight,
            ema_decay=args.ema_decay,
            ckpt_every=args.ckpt_every,
            seed=args.seed,
            eval_samples=args.eval_samples,
            vocab_size=args.vocab_size or int(m.vocab_size or 0),
            amp=not args.no_amp,
            progress=not args.no_progress,
            linear_init=not args.no_linear_init,
            balance_bands=not args.no_linear_init,
        )
        if args.no_compand:
            config = replace(config, compand_knots=0)
        if args.compand_alpha is not None:
            config = replace(config, compand_alpha=args.compand_alpha)
        out = Path(args.out) if args.out else Path("tokenizers") / m.name.lower()
        train_tokenizer(config, corpus, out)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        return fail(str(exc))
    if int(os.environ.get("RANK", "0")) == 0:
        eval_md = out / "eval.md"
        if eval_md.exists():
            print(eval_md.read_text(encoding="utf-8"))
        print(f"{m.name} tokenizer written to {out}")
    return 0


# --------------------------------------------------------------------------- encode


def add_encode_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "encode",
        help="tokenize a corpus into a token store (resumable; torchrun for several GPUs)",
        description="Encode every corpus row into K crops x every token modality. Committed shards are skipped, so a killed run resumes and a finished run re-run does nothing. Under torchrun each rank takes its own shards.",
    )
    p.add_argument("--corpus", required=True, help="corpus directory holding <split>.zarr stores")
    p.add_argument(
        "--tokenizers",
        required=True,
        help="directory holding one tokenizer folder per modality (s2l2a/, geo/, ...)",
    )
    p.add_argument("--out", required=True, help="token store directory (tokens/<split>.zarr)")
    p.add_argument(
        "--crops", type=int, default=4, help="crops per sample; crop 0 is centred (default 4)"
    )
    p.add_argument(
        "--crop-size", type=int, default=CROP_PX, help=f"crop side in pixels (default {CROP_PX})"
    )
    p.add_argument(
        "--batch", type=int, default=64, help="crops per tokenizer forward pass (default 64)"
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="global crop seed (default 0)")
    p.add_argument(
        "--splits",
        type=_csv,
        default=None,
        help="comma-separated splits (default: all in the corpus)",
    )
    p.add_argument(
        "--modalities",
        type=_csv,
        default=None,
        help="comma-separated token modalities (default: all)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the image tokenizers")
    p.add_argument(
        "--no-bf16",
        action="store_true",
        help="encode in float32 on CUDA (bf16 autocast is the default there)",
    )
    p.add_argument("--prefetch", type=int, default=2, help="corpus shards read ahead (default 2)")
    p.add_argument("--read-threads", type=int, default=2, help="reader threads (default 2)")
    p.add_argument(
        "--verify-committed",
        action="store_true",
        help="on resume, re-read committed shards and compare their checksums (default: check "
        "that their files exist with the recorded sizes); shards that fail are re-encoded",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_encode)
    return p


def run_encode(args: argparse.Namespace) -> int:
    import torch

    from terraloom.tokenize_jobs.encode import EncodeConfig, EncodeError, encode

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        cfg = EncodeConfig(
            n_crops=args.crops,
            crop_px=args.crop_size,
            batch=args.batch,
            device=device,
            seed=args.seed,
            bf16=False if args.no_bf16 else None,
            compile=args.compile,
            prefetch=args.prefetch,
            read_threads=args.read_threads,
            modalities=args.modalities,
            splits=args.splits,
            progress=not args.no_progress,
            verify_committed=args.verify_committed,
        )
        report = encode(args.corpus, args.tokenizers, args.out, cfg)
    except (EncodeError, FileNotFoundError, KeyError) as exc:
        print(f"terraloom-tokenize encode: error: {exc}", file=sys.stderr)
        return 2
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tag = f"[rank {os.environ.get('RANK', '0')}/{world}] " if world > 1 else ""
    for s in report.splits:
        for shard, why in s.redone:
            print(f"{tag}{s.split}: committed shard {shard} failed its check ({why}); re-encoded")
        done = (
            "nothing to do"
            if not s.encoded_shards
            else f"encoded {s.encoded_shards} shards, {s.encoded_rows} rows ({s.valid_rows} valid) in {s.seconds:.1f} s, {s.samples_per_s:.1f} samples/s"
        )
        print(
            f"{tag}{s.split}: {s.n_shards} shards, {s.already_committed} already committed; {done}"
        )
    return 0


# --------------------------------------------------------------------------- verify


def add_verify_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "verify",
        help="check a token store: layout, commits, checksums, alignment with the corpus",
        description="Exit 0 when the store is complete and intact, 1 with a list of findings otherwise, 2 on bad input.",
    )
    p.add_argument("tokens", help="token store directory (or one <split>.zarr)")
    p.add_argument(
        "--corpus", default=None, help="corpus directory (default: the path recorded by encode)"
    )
    p.set_defaults(func=run_verify)
    return p


def run_verify(args: argparse.Namespace) -> int:
    from terraloom.tokenize_jobs.verify import verify_tokens

    try:
        report = verify_tokens(args.tokens, args.corpus)
    except (FileNotFoundError, ValueError) as exc:
        print(f"terraloom-tokenize verify: error: {exc}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"note: {note}")
    for f in report.findings:
        print(f"FAIL: {f}")
    print(
        f"{'OK' if report.ok else 'FAILED'}: {report.checked_shards} shards checked, {len(report.findings)} findings"
    )
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- main

#: Subcommand registrations, in help order.
REGISTRATIONS: list[Callable[[SubParsers], argparse.ArgumentParser]] = [
    add_train_parser,
    add_encode_parser,
    add_verify_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="terraloom-tokenize",
        description="Tokenizers and the pre-tokenization job of terraloom.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRATIONS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
