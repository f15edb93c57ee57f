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

from terraloom.schemas import cliargs
from terraloom.schemas.config import ConfigError


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


# --------------------------------------------------------------------------- locations


def parse_locations(args: argparse.Namespace, *values: Any) -> list[Any]:
    """Every path/URL argument as a ``storage.Location`` (``None`` stays ``None``), all parsed
    before anything runs: a malformed URL raises ``LocationError`` (one line, exit 2) while
    nothing has been written, and never becomes a local folder named ``s3:``."""
    from terraloom.storage.location import Location, parse_storage_options

    opts = parse_storage_options(getattr(args, "storage_option", None))
    return [None if v is None else Location.parse(v, opts) for v in values]


def _expect_kind(loc: Any, kind: str) -> None:
    """``storage.kind.expect_store_kind`` where it can look (local stores)."""
    from terraloom.storage.kind import expect_store_kind

    if loc is not None and loc.is_local:
        expect_store_kind(loc.local_path, kind)


# --------------------------------------------------------------------------- train


def _flag(given: bool) -> bool | None:
    """A store_true flag as a config value: ``None`` when not given (the config decides)."""
    return True if given else None


def _not(given: bool) -> bool | None:
    """A ``--no-X`` flag as the value of field X: False when given, else ``None``."""
    return False if given else None


def add_train_parser(subparsers: cliargs.SubParsers) -> argparse.ArgumentParser:
    from terraloom.schemas.modalities import modalities
    from terraloom.tokenize_jobs.train import TrainConfig

    names = ", ".join(m.name for m in modalities(tokens=True))
    p = subparsers.add_parser(
        "train",
        help="train the tokenizer of one modality on a corpus (resumable; torchrun for DDP)",
        description="Train (or resume) a tokenizer: FSQ-VAE for image modalities, WordPiece for "
        "CAPTION; GEO only writes its config. Writes config.json + weights, ckpt.pt, "
        "train_log.json and an eval report (eval.json/md/png) into --out; a run that finds "
        "ckpt.pt there resumes it. Every TrainConfig field is reachable with --config/--set; "
        "the flags below are shortcuts for the common ones.",
    )

    def d(name: str, text: str = "") -> str:
        return cliargs.default_help(TrainConfig, name, text)

    p.add_argument("--modality", help=f"one of {names} (or `modality` in --config)")
    p.add_argument("--corpus", required=True, help="corpus directory holding <split>.zarr stores")
    p.add_argument(
        "--out",
        default=None,
        help="output directory or URL, e.g. s3://bucket/tok/s2l2a (default tokenizers/<modality>)",
    )
    cliargs.add_storage_option(p)
    cliargs.add_config_args(p, TrainConfig)
    p.add_argument("--steps", type=int, help=d("steps", "optimizer steps"))
    p.add_argument("--batch", type=int, help=d("batch", "crops per step and rank"))
    p.add_argument("--lr", type=float, help=d("lr", "peak learning rate"))
    p.add_argument("--warmup", type=int, help=d("warmup_steps", "linear warmup steps"))
    p.add_argument("--device", help=d("device", "auto, cpu, cuda, cuda:1 ..."))
    p.add_argument("--crop", type=int, help=d("crop_px", "training crop side, multiple of 16"))
    p.add_argument(
        "--width", type=int, help=d("width", "base channel width; the low-resolution stages use 4x")
    )
    p.add_argument(
        "--entropy-weight",
        type=float,
        help="FSQ codebook-usage regulariser weight (default: 0.1, S2L2A 0.02; 0 = off)",
    )
    p.add_argument(
        "--ema-decay", type=float, help=d("ema_decay", "EMA decay of the exported weights")
    )
    p.add_argument("--ckpt-every", type=int, help=d("ckpt_every", "checkpoint period in steps"))
    p.add_argument("--seed", type=int, help=d("seed", "seed of init and crop sampling"))
    p.add_argument(
        "--eval-samples", type=int, help=d("eval_samples", "val rows in the eval report")
    )
    p.add_argument("--vocab-size", type=int, help=d("vocab_size", "CAPTION vocabulary size"))
    p.add_argument(
        "--no-linear-init",
        action="store_true",
        help="start continuous tokenizers from random weights instead of the fitted linear "
        "tokenizer (and weight bands equally)",
    )
    p.add_argument(
        "--compand-alpha",
        type=float,
        help=d(
            "compand_alpha",
            "shape of the compander fitted by the linear start: 1 equalises the levels' "
            "use, 1/3 minimises rounding error",
        ),
    )
    p.add_argument(
        "--no-compand",
        action="store_true",
        help="no compander in front of the quantiser (evenly spaced FSQ levels)",
    )
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    cliargs.add_progress_flag(p)
    p.set_defaults(func=run_train)
    return p


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The tokenizer ``TrainConfig``: ``--config`` <- ``--set`` <- the flags given."""
    from terraloom.tokenize_jobs.train import TrainConfig

    no_linear = _not(args.no_linear_init)
    return cliargs.config_from_args(
        TrainConfig,
        args,
        {
            "modality": args.modality,
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "warmup_steps": args.warmup,
            "device": args.device,
            "crop_px": args.crop,
            "width": args.width,
            "entropy_weight": args.entropy_weight,
            "ema_decay": args.ema_decay,
            "ckpt_every": args.ckpt_every,
            "seed": args.seed,
            "eval_samples": args.eval_samples,
            "vocab_size": args.vocab_size,
            "linear_init": no_linear,
            "balance_bands": no_linear,
            "compand_alpha": args.compand_alpha,
            "compand_knots": 0 if args.no_compand else None,
            "amp": _not(args.no_amp),
            "progress": _not(args.no_progress),
        },
    )


def run_train(args: argparse.Namespace) -> int:
    from terraloom.schemas.modalities import UnknownModalityError, get_modality, modalities
    from terraloom.storage.kind import CORPUS, WrongStoreError

    def fail(message: str) -> int:
        print(f"terraloom-tokenize train: error: {message}", file=sys.stderr)
        return 2

    try:
        corpus, out = parse_locations(args, args.corpus, args.out)
        config = train_config_from_args(args)
        m = get_modality(config.modality)
        if not m.has_tokens:
            tokenized = ", ".join(t.name for t in modalities(tokens=True))
            return fail(f"{m.name} has no tokenizer; tokenized modalities: {tokenized}")
        if out is None:
            (out,) = parse_locations(args, os.path.join("tokenizers", m.name.lower()))
        if out.read_only:
            return fail(f"{out} is read-only ({out.scheme}://)")
        if not corpus.is_dir():
            return fail(f"corpus directory {corpus} does not exist")
        _expect_kind(corpus, CORPUS)
        from terraloom.tokenize_jobs.train import train_tokenizer

        train_tokenizer(config, corpus, out)
    except (
        UnknownModalityError,
        ConfigError,
        WrongStoreError,
        ValueError,
        FileNotFoundError,
    ) as exc:
        return fail(" ".join(str(exc).split()))
    if int(os.environ.get("RANK", "0")) == 0:
        eval_md = out / "eval.md"
        if eval_md.exists():
            print(eval_md.read_text())
        print(f"{m.name} tokenizer written to {out}")
    return 0


# --------------------------------------------------------------------------- encode


def add_encode_parser(subparsers: cliargs.SubParsers) -> argparse.ArgumentParser:
    from terraloom.tokenize_jobs.encode import EncodeConfig

    def d(name: str, text: str = "") -> str:
        return cliargs.default_help(EncodeConfig, name, text)

    p = subparsers.add_parser(
        "encode",
        help="tokenize a corpus into a token store (resumable; torchrun for several GPUs)",
        description="Encode every corpus row into K crops x every token modality. Committed "
        "shards are skipped, so a killed run resumes and a finished run re-run does nothing. "
        "Under torchrun each rank takes its own shards. Every EncodeConfig field is reachable "
        "with --config/--set; the flags below are shortcuts.",
    )
    p.add_argument(
        "--corpus", required=True, help="corpus directory or URL holding <split>.zarr stores"
    )
    p.add_argument(
        "--tokenizers",
        required=True,
        help="directory or URL holding one tokenizer folder per modality (s2l2a/, geo/, ...)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="token store directory or URL, e.g. s3://bucket/tokens (<out>/<split>.zarr)",
    )
    cliargs.add_storage_option(p)
    cliargs.add_config_args(p, EncodeConfig)
    p.add_argument("--crops", type=int, help=d("n_crops", "crops per sample; crop 0 is centred"))
    p.add_argument("--crop-size", type=int, help=d("crop_px", "crop side in pixels"))
    p.add_argument("--batch", type=int, help=d("batch", "crops per tokenizer forward pass"))
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, help=d("seed", "global crop seed"))
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
    p.add_argument("--prefetch", type=int, help=d("prefetch", "corpus shards read ahead"))
    p.add_argument("--read-threads", type=int, help=d("read_threads", "reader threads"))
    p.add_argument(
        "--verify-committed",
        action="store_true",
        help="on resume, re-read committed shards and compare their checksums (default: check "
        "that their files exist with the recorded sizes); shards that fail are re-encoded",
    )
    cliargs.add_progress_flag(p)
    p.set_defaults(func=run_encode)
    return p


def encode_config_from_args(args: argparse.Namespace) -> Any:
    """The ``EncodeConfig``: ``--config`` <- ``--set`` <- the flags given; device resolved."""
    from terraloom.tokenize_jobs.encode import EncodeConfig

    cfg = cliargs.config_from_args(
        EncodeConfig,
        args,
        {
            "n_crops": args.crops,
            "crop_px": args.crop_size,
            "batch": args.batch,
            "device": args.device,
            "seed": args.seed,
            "bf16": _not(args.no_bf16),
            "compile": _flag(args.compile),
            "prefetch": args.prefetch,
            "read_threads": args.read_threads,
            "modalities": args.modalities,
            "splits": args.splits,
            "progress": _not(args.no_progress),
            "verify_committed": _flag(args.verify_committed),
        },
    )
    given_device = args.device is not None or _config_sets(args, "device")
    if not given_device:
        import torch

        cfg = replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")
    return cfg


def _config_sets(args: argparse.Namespace, key: str) -> bool:
    """Whether ``--config`` or ``--set`` gave ``key`` (a default that depends on the machine)."""
    from terraloom.schemas.config import config_tree

    return key in config_tree(args.config, args.overrides)


def run_encode(args: argparse.Namespace) -> int:
    from terraloom.storage.kind import CORPUS, TOKENS, WrongStoreError
    from terraloom.storage.location import LocationError
    from terraloom.tokenize_jobs.encode import EncodeError, encode

    try:
        corpus, tokenizers, out = parse_locations(args, args.corpus, args.tokenizers, args.out)
        cfg = encode_config_from_args(args)
        _expect_kind(corpus, CORPUS)
        _expect_kind(out, TOKENS)
        report = encode(corpus, tokenizers, out, cfg)
    except (EncodeError, ConfigError, WrongStoreError, FileNotFoundError, LocationError) as exc:
        print(f"terraloom-tokenize encode: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        from terraloom.storage.files import is_disk_full

        if not is_disk_full(exc):
            raise
        print(
            f"terraloom-tokenize encode: error: no space left on the device of {args.out}; "
            "the token store is resumable: free space and re-run the same command",
            file=sys.stderr,
        )
        return 1
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


def add_verify_parser(subparsers: cliargs.SubParsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "verify",
        help="check a token store: layout, commits, checksums, alignment with the corpus",
        description="Exit 0 when the store is complete and intact, 1 with a list of findings otherwise, 2 on bad input.",
    )
    p.add_argument("tokens", help="token store directory or URL (or one <split>.zarr)")
    p.add_argument(
        "--corpus",
        default=None,
        help="corpus directory or URL (default: the location recorded by encode)",
    )
    cliargs.add_storage_option(p)
    p.set_defaults(func=run_verify)
    return p


def run_verify(args: argparse.Namespace) -> int:
    from terraloom.storage.kind import CORPUS, TOKENS
    from terraloom.tokenize_jobs.verify import verify_tokens

    try:
        tokens, corpus = parse_locations(args, args.tokens, args.corpus)
        _expect_kind(tokens, TOKENS)
        _expect_kind(corpus, CORPUS)
        report = verify_tokens(tokens, corpus)
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


# --------------------------------------------------------------------------- fetch


def add_fetch_parser(subparsers: cliargs.SubParsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "fetch",
        help="copy a token store (e.g. from s3://) to a local directory, once",
        description="Copy the committed shards of a token store to a local directory, so "
        "training memory-maps them from local disk. Commit by commit: a shard's marker is "
        "written locally after its data; shards already there unchanged are not copied "
        "again, so re-running it only brings what is new.",
    )
    p.add_argument("src", help="token store directory or URL (holding <split>.zarr)")
    p.add_argument("--out", required=True, help="local directory to copy it into")
    p.add_argument(
        "--splits", type=_csv, default=None, help="comma-separated splits (default: all)"
    )
    cliargs.add_storage_option(p)
    p.set_defaults(func=run_fetch)
    return p


def run_fetch(args: argparse.Namespace) -> int:
    from terraloom.tokenize_jobs.fetch import fetch_token_store

    def fail(message: str) -> int:
        print(f"terraloom-tokenize fetch: error: {message}", file=sys.stderr)
        return 2

    try:
        src, out = parse_locations(args, args.src, args.out)
        if not out.is_local:
            return fail(f"--out {out} must be a local directory (fetch copies to local disk)")
        if src.is_local and src.local_path.resolve() == out.local_path.resolve():
            return fail("--out is the source itself")
        report = fetch_token_store(src, out.local_path, args.splits)
    except (ValueError, FileNotFoundError) as exc:
        return fail(" ".join(str(exc).split()))
    for note in report.notes:
        print(f"note: {note}")
    for split in report.copied:
        print(
            f"{split}: {report.copied[split]} shards copied, {report.kept[split]} already there"
            + (f", {report.withdrawn[split]} withdrawn" if report.withdrawn[split] else "")
        )
    print(f"{report.bytes} bytes copied to {out}")
    return 0


# --------------------------------------------------------------------------- main

#: Subcommand registrations, in help order.
REGISTRATIONS: list[Callable[[cliargs.SubParsers], argparse.ArgumentParser]] = [
    add_train_parser,
    add_encode_parser,
    add_verify_parser,
    add_fetch_parser,
]


def build_parser() -> argparse.ArgumentParser:
    return cliargs.command_parser(
        "terraloom-tokenize",
        "Tokenizers and the pre-tokenization job of terraloom.",
        REGISTRATIONS,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return cliargs.run_command(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
