"""``terraloom-model``: train the model, inspect configs.

Each subcommand registers itself through ``add_<cmd>_parser(subparsers)`` so other
modules (generation, evaluation) add commands without touching the others. Bad input
prints a message and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from terraloom.model.config import MODEL_PRESETS, load_config, modality_specs, save_config, to_dict
from terraloom.schemas.cliargs import (
    add_config_args,
    add_progress_flag,
    add_storage_option,
    command_parser,
    run_command,
)
from terraloom.schemas.modalities import UnknownModalityError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    from terraloom.model.config import TrainConfig

    add_config_args(p, TrainConfig)


def _reports() -> bool:
    """Whether this process prints the run's summary: rank 0 of a torchrun launch (the
    process group's rank, else torchrun's ``RANK``), or the only process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _run_train(args: argparse.Namespace) -> int:
    from terraloom.model.train import train
    from terraloom.storage.location import parse_storage_options

    for flag, value in (("--steps", args.steps), ("--max-steps", args.max_steps)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    overrides = list(args.overrides)
    if args.out_dir:
        overrides.append(f"out_dir={args.out_dir}")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if getattr(args, "init", None):
        # the model is the init weights' model (before the user's own --set model.* overrides)
        from terraloom.model.interop import init_overrides

        overrides = [*init_overrides(args.init), *overrides]
    cfg = load_config(args.config, overrides)
    reports = True
    try:
        result = train(
            cfg,
            resume=not args.no_resume,
            max_steps=args.max_steps,
            progress=not args.no_progress,
            storage_options=parse_storage_options(args.storage_option),
        )
        reports = _reports()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():  # launched by torchrun
            dist.destroy_process_group()
    if not reports:  # torchrun: every rank holds the same result; one summary line, not N
        return 0
    last: dict[str, Any] = next(
        (r for r in reversed(result.history) if r.get("split") == "train"), {}
    )
    print(
        json.dumps(
            {
                "steps": result.steps_done,
                "loss": last.get("loss"),  # null when this call trained nothing
                "out_dir": str(result.out_dir) if "://" not in cfg.out_dir else cfg.out_dir,
            }
        )
    )
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train (or resume) from the token store",
        description="Train the dual-scale encoder-decoder. Launch with torchrun for DDP/FSDP.",
    )
    _add_config_args(p)
    p.add_argument(
        "--out-dir",
        help="run directory or URL, e.g. s3://bucket/run (checkpoints, metrics.csv); "
        "overrides out_dir",
    )
    add_storage_option(p)
    p.add_argument("--steps", type=int, help="total schedule length; overrides steps")
    p.add_argument("--max-steps", type=int, help="stop after this step (schedule unchanged)")
    p.add_argument(
        "--no-resume", action="store_true", help="ignore existing checkpoints in the run directory"
    )
    p.add_argument(
        "--init",
        metavar="DIR",
        help="start from these weights and their model config (e.g. import-terramind's output)",
    )
    add_progress_flag(p)
    p.set_defaults(func=_run_train)
    return p


def _run_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.write:
        save_config(cfg, args.write)
        print(f"wrote {args.write}")
        return 0
    data = to_dict(cfg)
    if args.specs:
        specs = modality_specs(cfg.model)
        data = {
            "inputs": [to_dict(s) for s in specs.inputs],
            "targets": [to_dict(t) for t in specs.targets],
        }
    if args.params:
        import torch

        from terraloom.model.transformer import TerraloomModel

        with torch.device("meta"):  # shapes only: no memory, no init cost
            m = TerraloomModel(cfg.model)
        enc, dec = m.block_params()
        total = sum(p.numel() for p in m.parameters())
        data = {
            "total": total,
            "encoder_blocks": enc,
            "decoder_blocks": dec,
            "embeddings_and_heads": total - enc - dec,
        }
    print(json.dumps(data, indent=2))
    return 0


def add_config_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "config",
        help="print or write the resolved config",
        description=f"Resolve a config (presets: {', '.join(MODEL_PRESETS)}).",
    )
    _add_config_args(p)
    p.add_argument("--write", help="write the resolved config to this YAML/JSON path")
    p.add_argument("--specs", action="store_true", help="print the input/target modality specs")
    p.add_argument(
        "--params", action="store_true", help="build the model and print parameter counts"
    )
    p.set_defaults(func=_run_config)
    return p


# --------------------------------------------------------------------------- generate / evaluate / demo
# (issue 9: the runners live in model.generate, model.evaluate and model.demo)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps", type=int, default=8, help="parallel decoding steps of image targets (default 8)"
    )
    p.add_argument(
        "--schedule",
        choices=("cosine", "linear"),
        default="cosine",
        help="tokens unmasked per step",
    )
    p.add_argument(
        "--order",
        choices=("confidence", "random"),
        default="confidence",
        help="MaskGIT confidence order or random order",
    )
    p.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature; 0 = argmax"
    )
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument(
        "--cfg", type=float, default=0.0, help="classifier-free guidance scale (0 = off)"
    )
    p.add_argument(
        "--decode",
        choices=("tokens", "expected"),
        default="tokens",
        help="images from the tokens, or from the expected latents of their distributions "
        "(smooth where the model is unsure; docs/model.md, Sampling controls)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def _run_generate(args: argparse.Namespace) -> int:
    from terraloom.model.generate_command import run_generate_command

    return run_generate_command(args)


def _run_evaluate(args: argparse.Namespace) -> int:
    from terraloom.model.evaluate import run_evaluate_command

    return run_evaluate_command(args)


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate target modalities from inputs (GeoTIFFs + PNG panel)",
        description="Any-to-any generation: image targets by iterative parallel decoding, GEO/CAPTION autoregressively, "
        "chained (each generated modality joins the inputs). Writes <out>/<sample>/<TARGET>.tif in the sample's CRS, "
        "generated.json and panel.png (inputs | generated | reference).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint directory (model.safetensors + config.json) or a run directory; "
        "a path or URL",
    )
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="MODALITY=SAMPLE_ID|PATH",
        help="an input modality from a corpus sample id or a GeoTIFF (repeatable)",
    )
    p.add_argument(
        "--target",
        required=True,
        help="comma-separated targets, generated in this order, e.g. LULC,S2L2A,DEM",
    )
    p.add_argument("--out", required=True, help="output directory or URL")
    add_storage_option(p)
    p.add_argument("--corpus", help="corpus root (default: the checkpoint's data.corpus)")
    p.add_argument("--tokens", help="token-store root (default: the checkpoint's data.tokens)")
    p.add_argument("--tokenizers", help="tokenizer root (default: <tokens>/../tokenizers)")
    p.add_argument(
        "--crop", type=int, default=0, help="token-store crop of the sample (default 0, centred)"
    )
    p.add_argument(
        "--scales",
        choices=("both", "pixels", "tokens"),
        default="both",
        help="input scales to feed",
    )
    p.add_argument(
        "--no-chain",
        action="store_true",
        help="do not feed generated modalities to the next target",
    )
    _add_sampling_args(p)
    p.set_defaults(func=_run_generate)
    return p


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="generation metrics on val next to trivial baselines (Markdown + JSON)",
        description="S1GRD->S2L2A (PSNR, SSIM), S2L2A->LULC (accuracy, mIoU), S2L2A->DEM (MAE), S2L2A->S1GRD (MAE dB), "
        "S2L2A->GEO (median km), a 16 px grid-artifact row per image target, "
        "each next to a baseline fitted on train in the same run and the tokenizer ceiling.",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--out", required=True, help="directory or URL for evaluation.json / evaluation.md"
    )
    add_storage_option(p)
    p.add_argument("--corpus")
    p.add_argument("--tokens")
    p.add_argument("--tokenizers")
    p.add_argument("--split", default="val")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--scales", choices=("both", "pixels", "tokens"), default="both")
    add_progress_flag(p)
    _add_sampling_args(p)
    p.set_defaults(func=_run_evaluate, temperature=0.0, decode="expected")
    return p


from terraloom.model.interop.cli import (  # noqa: E402 - TerraMind interop (issue 21)
    add_embed_parser,
    add_export_terramind_parser,
    add_import_terramind_parser,
)

PARSERS = [
    add_train_parser,
    add_config_parser,
    add_generate_parser,
    add_evaluate_parser,
    add_import_terramind_parser,
    add_export_terramind_parser,
    add_embed_parser,
]


def build_parser() -> argparse.ArgumentParser:
    return command_parser(
        "terraloom-model",
        "terraloom model: train and inspect the dual-scale any-to-any transformer",
        PARSERS,
    )


# bad input: config errors (ConfigError is a ValueError), values the commands reject, missing
# files and unknown modality names; any other KeyError is a bug, not bad input
BAD_INPUT = (ValueError, FileNotFoundError, UnknownModalityError)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, BAD_INPUT)


if __name__ == "__main__":
    sys.exit(main())
