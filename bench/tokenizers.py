"""Train every tokenizer for a fixed budget and compare it with simple baselines.

Usage::

    python bench/tokenizers.py --corpus corpus/            # a built corpus (demo world)
    python bench/tokenizers.py --toy 96                    # no corpus yet: a toy corpus

Each image tokenizer (S2L2A, S1GRD, S1RTC, DEM, NDVI, LULC) is trained with the same
recipe for ``--steps`` steps and evaluated on the val split next to baselines computed in
the same run on the same crops: every 16 x 16 patch replaced by its per-band mean
(LULC: by its majority class). Required: each image tokenizer beats its baseline (PSNR;
MAE for DEM and NDVI), LULC pixel accuracy >= 0.9, codebook usage >= 25 % of the codes.
CAPTION and GEO are trained/written and checked for exact round trips. The last line is
``tokenizers_beat_baseline=<k>/<n> ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ is sys.path[0] and this file would shadow Hugging Face's
# ``tokenizers`` package (the CAPTION tokenizer imports it): drop bench/, add the root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from terraloom.schemas.cliargs import add_config_args, config_from_args  # noqa: E402
from terraloom.schemas.config import to_dict  # noqa: E402
from terraloom.schemas.modalities import get_modality  # noqa: E402
from terraloom.tokenize_jobs.train import TrainConfig  # noqa: E402

IMAGE_MODALITIES = ("S2L2A", "S1GRD", "S1RTC", "DEM", "NDVI", "LULC")
REQUIRED_USAGE = 0.25
REQUIRED_LULC_ACC = 0.9

#: The recipe every image tokenizer of the bench trains with (``modality`` is replaced per
#: modality); flags and ``--config``/``--set`` change its fields. The demo trains with the
#: same recipe at its own budget (``orchestration.demo.DemoConfig.tokenizer``).
RECIPE = TrainConfig(
    modality="S2L2A",
    steps=1000,
    batch=8,
    lr=1e-3,
    warmup_steps=20,
    crop_px=96,
    width=16,
    eval_samples=48,
    eval_crops=4,
    progress=True,
)


def recipe_from_args(args: argparse.Namespace) -> TrainConfig:
    """RECIPE <- ``--config`` <- ``--set`` <- the flags given."""
    flags = {
        k: getattr(args, k)
        for k in (
            "steps", "batch", "crop_px", "width", "lr", "entropy_weight", "compand_alpha",
            "compand_uniform", "compand_knots", "eval_samples", "eval_crops", "device",
        )
    }  # fmt: skip
    return config_from_args(TrainConfig, args, flags, base=to_dict(RECIPE))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", type=Path, help="built corpus directory (<split>.zarr)")
    src.add_argument(
        "--toy", type=int, default=None, help="build a toy corpus with N train rows (default 96)"
    )
    p.add_argument("--workdir", type=Path, default=Path("bench_out/tokenizers"))
    p.add_argument("--modalities", default=",".join(IMAGE_MODALITIES) + ",CAPTION,GEO")
    # shortcuts for fields of the recipe (a tokenizer TrainConfig, RECIPE); None: the recipe's
    for flag, field, tp, text in (
        ("--steps", "steps", int, "training steps per image tokenizer"),
        ("--batch", "batch", int, ""),
        ("--crop", "crop_px", int, "training crop (eval always uses 224)"),
        ("--width", "width", int, ""),
        ("--lr", "lr", float, ""),
        ("--compand-alpha", "compand_alpha", float, "compander shape"),
        ("--compand-uniform", "compand_uniform", float, ""),
        ("--compand-knots", "compand_knots", int, "0: no compander"),
        ("--eval-samples", "eval_samples", int, "val rows evaluated (toy val split size)"),
        ("--eval-crops", "eval_crops", int, ""),
        ("--device", "device", str, ""),
    ):
        p.add_argument(
            flag,
            dest=field,
            type=tp,
            default=None,
            help=f"{text + ' ' if text else ''}(default {getattr(RECIPE, field)})",
        )
    p.add_argument(
        "--entropy-weight",
        dest="entropy_weight",
        type=float,
        default=None,
        help="codebook-usage regulariser (default: the modality's, see TrainConfig)",
    )
    add_config_args(p, TrainConfig)
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)"
    )
    p.add_argument(
        "--fresh", action="store_true", help="retrain even if a finished tokenizer exists"
    )
    return p.parse_args(argv)


def corpus_for(args: argparse.Namespace) -> tuple[Path, str]:
    """The corpus to use and a label saying what it is."""
    if args.corpus is not None:
        if not (args.corpus / "train.zarr").is_dir():
            raise SystemExit(f"error: {args.corpus} has no train.zarr")
        return args.corpus, f"corpus {args.corpus}"
    from terraloom.tokenize_jobs.testing import make_toy_corpus

    n = args.toy or 96
    n_val = max(8, args.recipe.eval_samples)
    root = args.workdir / f"toy_{n}"
    marker = root / "done.json"
    if not marker.exists():
        t0 = time.perf_counter()
        make_toy_corpus(
            root,
            {"train": n, "val": n_val},
            seed=0,
            shard_samples=16,
            modalities=(*IMAGE_MODALITIES, "GEO", "CAPTION"),
        )
        marker.write_text(
            json.dumps({"train": n, "val": n_val, "seconds": time.perf_counter() - t0})
        )
    return (
        root,
        f"TOY corpus ({n} train / {n_val} val rows, tokenize_jobs.testing) - not the demo world",
    )


def train_one(modality: str, corpus: Path, args: argparse.Namespace) -> dict[str, Any]:
    from terraloom.tokenize_jobs.train import train_tokenizer

    out = args.workdir / "tokenizers" / modality.lower()
    if args.fresh and out.exists():
        import shutil

        shutil.rmtree(out)
    recipe = args.recipe
    cfg = dataclasses.replace(
        recipe,
        modality=modality,
        warmup_steps=min(recipe.warmup_steps, recipe.steps // 10),
        ckpt_every=max(recipe.steps, 1),
    )
    t0 = time.perf_counter()
    train_tokenizer(cfg, corpus, out)
    seconds = time.perf_counter() - t0
    report: dict[str, Any] = json.loads((out / "eval.json").read_text())
    log_path = out / "train_log.json"
    if log_path.exists():
        report["train_seconds"] = json.loads(log_path.read_text())["last_run"]["seconds"]
    report["total_seconds"] = seconds
    return report


def _row(report: dict[str, Any]) -> list[str]:
    h, cb = report["headline"], report["codebook"]
    extra = ""
    if "bands" in report:
        extra = (
            f"SSIM {report['tokenizer']['ssim_mean']:.3f} vs {report['baseline']['ssim_mean']:.3f}"
        )
    else:
        extra = f"mIoU {report['tokenizer']['miou']:.3f} vs {report['baseline']['miou']:.3f}"
    return [
        report["modality"],
        h["metric"],
        f"{h['tokenizer']:.4g}",
        f"{h['baseline']:.4g}",
        "yes" if h["beats_baseline"] else "NO",
        f"{100 * cb['used_fraction']:.1f}%",
        f"{cb['perplexity']:.0f}",
        extra,
        f"{report.get('train_seconds', float('nan')):.0f}",
    ]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        args.recipe = r = recipe_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    wanted = [get_modality(m).name for m in args.modalities.split(",") if m.strip()]
    corpus, label = corpus_for(args)
    print(f"# tokenizer bench on {label}")
    print(
        f"# recipe: {r.steps} steps x batch {r.batch} of {r.crop_px} px crops, width {r.width}, "
        f"lr {r.lr}, entropy weight {'per modality' if r.entropy_weight is None else r.entropy_weight}, "
        f"{'linear start' if r.linear_init else 'plain start'}, compander knots {r.compand_knots}; "
        f"eval: {r.eval_samples} val rows x {r.eval_crops} crops of 224 px; "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default') if not args.threads else args.threads}"
    )
    reports = {}
    for m in wanted:
        print(f"== {m}", flush=True)
        reports[m] = train_one(m, corpus, args)
    image = [m for m in wanted if m in IMAGE_MODALITIES]
    print()
    header = [
        "modality",
        "metric",
        "tokenizer",
        "baseline",
        "beats",
        "codes used",
        "perplexity",
        "other",
        "train s",
    ]
    print_table(header, [_row(reports[m]) for m in image])
    for m in ("CAPTION", "GEO"):
        if m in reports:
            r = reports[m]
            if m == "CAPTION":
                print(
                    f"CAPTION: WordPiece {r['trained_vocab_size']} / {r['vocab_size']} ids, exact round trip "
                    f"{100 * r['round_trip_exact']:.1f}% of {r['n_samples']} val captions, "
                    f"{r['tokens_per_caption_mean']:.1f} tokens per caption, UNK {100 * r['unk_fraction']:.2f}%"
                )
            else:
                print(
                    f"GEO: max error lat {r['max_error_lat_deg']:.4f} deg, lon {r['max_error_lon_deg']:.4f} deg "
                    f"over {r['n_samples']} val samples (bound 0.125)"
                )
    beats = sum(reports[m]["headline"]["beats_baseline"] for m in image)
    usage = min((reports[m]["codebook"]["used_fraction"] for m in image), default=float("nan"))
    lulc_acc = reports["LULC"]["tokenizer"]["pixel_accuracy"] if "LULC" in reports else float("nan")
    ok = (
        beats == len(image)
        and usage >= REQUIRED_USAGE
        and (lulc_acc >= REQUIRED_LULC_ACC or "LULC" not in reports)
    )
    summary = {
        "corpus": label,
        "beats": beats,
        "n": len(image),
        "min_codebook_usage": usage,
        "lulc_acc": lulc_acc,
        "reports": {
            m: {k: r[k] for k in ("headline", "codebook") if k in r} for m, r in reports.items()
        },
    }
    (args.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"tokenizers_beat_baseline={beats}/{len(image)} lulc_pixel_acc={lulc_acc:.3f} "
        f"min_codebook_usage={usage:.3f} requirements={'met' if ok else 'NOT met'} "
        f"corpus={'toy' if args.corpus is None else 'built'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
