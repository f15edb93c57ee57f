"""Evaluation report of a trained tokenizer on a corpus split, next to simple baselines.

Image tokenizers are compared with the patch-mean baseline (each 16 x 16 patch replaced
by its per-band mean; LULC: the patch's majority class) on the same crops, in stored
units. The report is written as ``eval.json``, ``eval.md`` and ``eval.png`` (originals,
reconstructions and the baseline side by side).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraloom.schemas.modalities import CROP_PX, get_modality
from terraloom.tokenize_jobs.corpus_reader import open_split, read_rows, valid_rows
from terraloom.tokenize_jobs.crops import apply_crops, draw_crops, row_key
from terraloom.tokenize_jobs.tokenizers import metrics as M
from terraloom.tokenize_jobs.tokenizers.image import (
    IGNORE_INDEX,
    FSQImageTokenizer,
    class_index,
    valid_mask,
)

EVAL_SEED = 1234

#: Headline metric per modality: (name, higher is better).
HEADLINE: dict[str, tuple[str, bool]] = {
    "S2L2A": ("psnr", True),
    "S1GRD": ("psnr", True),
    "S1RTC": ("psnr", True),
    "DEM": ("mae", False),
    "NDVI": ("mae", False),
    "LULC": ("pixel_accuracy", True),
}


def load_eval_pixels(
    corpus: str | os.PathLike[str],
    split: str,
    modality: str,
    n_samples: int,
    n_crops: int,
    crop_px: int,
) -> np.ndarray:
    """Stored values of the evaluation crops of the first ``n_samples`` valid rows.

    Per row: the centre crop, then ``n_crops - 1`` seeded random crops with flips, drawn
    exactly as the encode job draws them (:func:`tokenize_jobs.crops.draw_crops`).
    """
    group = open_split(corpus, split)
    name = get_modality(modality).name
    rows = valid_rows(group)[:n_samples]
    samples = read_rows(group, name, rows)
    keys = [row_key(split, int(r)) for r in rows]
    crops = draw_crops(keys, n_crops, crop_px, int(group[name].shape[-1]), seed=EVAL_SEED)
    return apply_crops(samples, crops.reshape(-1, 5), src=np.repeat(np.arange(len(rows)), n_crops))


def _reconstruct(
    tok: FSQImageTokenizer, pixels: np.ndarray, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    recon, codes = [], []
    for i in range(0, len(pixels), batch):
        c = tok.encode(torch.from_numpy(np.ascontiguousarray(pixels[i : i + batch])))
        codes.append(c.cpu())
        recon.append(tok.decode(c).cpu())
    return torch.cat(recon), torch.cat(codes)


def _band_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    rng: torch.Tensor,
    ssim_every: int = 1,
) -> dict[str, Any]:
    """PSNR and MAE over all crops; SSIM (the costly one) over every ``ssim_every``-th crop."""
    psnr = M.psnr(pred, target, mask, rng)
    ssim = M.ssim(pred[::ssim_every], target[::ssim_every], mask[::ssim_every], rng)
    mae = M.mae(pred, target, mask)
    return {
        "psnr": [float(v) for v in psnr],
        "ssim": [float(v) for v in ssim],
        "mae": [float(v) for v in mae],
        "psnr_mean": float(psnr.mean()),
        "ssim_mean": float(ssim.mean()),
        "mae_mean": float(mae.mean()),
    }


def evaluate_image_tokenizer(
    tok: FSQImageTokenizer,
    corpus: str | os.PathLike[str],
    split: str = "val",
    n_samples: int = 32,
    n_crops: int = 4,
    crop_px: int = CROP_PX,
    batch: int = 8,
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Metrics of ``tok`` and its baseline on ``split``; writes the report files to ``out``."""
    m = get_modality(tok.modality)
    pixels = load_eval_pixels(corpus, split, m.name, n_samples, n_crops, crop_px)
    if len(pixels) == 0:
        raise ValueError(f"split {split!r} has no valid rows to evaluate on")
    recon, codes = _reconstruct(tok, pixels, batch)
    x = torch.from_numpy(pixels.astype(np.float32))
    report: dict[str, Any] = {
        "modality": m.name,
        "split": split,
        "n_samples": len(pixels) // n_crops,
        "n_crops": len(pixels),
        "crop_px": crop_px,
        "identity": tok.identity,
        "codebook": M.codebook_usage(codes, tok.vocab_size),
    }
    if tok.config.is_classes:
        target = class_index(x, tok.config.classes)
        pred = class_index(recon, tok.config.classes)
        base = M.patch_majority_baseline(
            target, len(tok.config.classes), IGNORE_INDEX, tok.patch_size
        )
        k = len(tok.config.classes)
        report["tokenizer"] = {
            "pixel_accuracy": M.pixel_accuracy(pred, target),
            "miou": M.mean_iou(pred, target, k),
        }
        report["baseline"] = {
            "pixel_accuracy": M.pixel_accuracy(base, target),
            "miou": M.mean_iou(base, target, k),
        }
        report["baseline_name"] = "patch majority class"
        base_img = torch.tensor(tok.config.classes, dtype=torch.float32)[
            base.clamp_max(k - 1)
        ].unsqueeze(1)
    else:
        mask = valid_mask(x, tok.config.nodata)
        rng = M.data_range(x, mask)
        base_img = M.patch_mean_baseline(x, mask, tok.patch_size)
        report["bands"] = list(m.band_names)
        report["data_range"] = [float(v) for v in rng]
        # SSIM on the centre crop of each row only (crop 0 of every group of n_crops)
        report["tokenizer"] = _band_metrics(recon, x, mask, rng, n_crops)
        report["baseline"] = _band_metrics(base_img, x, mask, rng, n_crops)
        report["baseline_name"] = "patch mean"
    name, higher = HEADLINE[m.name]
    key = name if tok.config.is_classes else f"{name}_mean"
    t_val, b_val = report["tokenizer"][key], report["baseline"][key]
    report["headline"] = {
        "metric": name,
        "tokenizer": t_val,
        "baseline": b_val,
        "beats_baseline": bool(t_val > b_val if higher else t_val < b_val),
    }
    if out is not None:
        write_report(
            report,
            out,
            pixels[::n_crops][:4],
            recon[::n_crops][:4].numpy(),
            base_img[::n_crops][:4].numpy(),
        )
    return report


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.4g}"


def report_markdown(report: dict[str, Any]) -> str:
    """A Markdown table of the report (per band for continuous modalities)."""
    lines = [f"# {report['modality']} tokenizer on {report['split']}", ""]
    if "bands" in report:
        t, b = report["tokenizer"], report["baseline"]
        lines += [
            f"| band | PSNR dB | PSNR {report['baseline_name']} | SSIM | SSIM baseline | MAE | MAE baseline |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, band in enumerate(report["bands"]):
            lines.append(
                f"| {band} | {_fmt(t['psnr'][i])} | {_fmt(b['psnr'][i])} | {_fmt(t['ssim'][i])} | "
                f"{_fmt(b['ssim'][i])} | {_fmt(t['mae'][i])} | {_fmt(b['mae'][i])} |"
            )
        lines.append(
            f"| **mean** | {_fmt(t['psnr_mean'])} | {_fmt(b['psnr_mean'])} | {_fmt(t['ssim_mean'])} | "
            f"{_fmt(b['ssim_mean'])} | {_fmt(t['mae_mean'])} | {_fmt(b['mae_mean'])} |"
        )
    elif "tokenizer" in report:
        lines += ["| metric | tokenizer | " + report["baseline_name"] + " |", "|---|---|---|"]
        for k in ("pixel_accuracy", "miou"):
            lines.append(
                f"| {k} | {_fmt(report['tokenizer'][k])} | {_fmt(report['baseline'][k])} |"
            )
    else:  # a tokenizer with nothing to train (GEO): its scalar figures, as in eval.json
        scalars = {
            k: v
            for k, v in report.items()
            if k not in ("modality", "split") and isinstance(v, int | float | str | bool)
        }
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v) if isinstance(v, float) else v} |" for k, v in scalars.items()]
    cb = report.get("codebook")
    if cb:
        lines += [
            "",
            f"Codebook: {int(cb['n_codes_used'])} of {int(cb['vocab_size'])} codes used "
            f"({100 * cb['used_fraction']:.1f}%), perplexity {cb['perplexity']:.0f} "
            f"over {int(cb['n_tokens'])} tokens.",
        ]
    if "headline" in report:
        h = report["headline"]
        lines += [
            "",
            f"Headline {h['metric']}: tokenizer {_fmt(h['tokenizer'])} vs baseline {_fmt(h['baseline'])} "
            f"-> {'beats' if h['beats_baseline'] else 'does NOT beat'} the baseline.",
        ]
    return "\n".join(lines) + "\n"


def write_png_grid(
    path: str | os.PathLike[str], modality: str, rows: list[tuple[str, np.ndarray]]
) -> None:
    """Columns = samples; rows = (label, (N, C, H, W) array) pairs such as original/recon,
    in the registry's display (one value range for the whole grid)."""
    from terraloom.render import Panel, write_figure

    n = len(rows[0][1])
    grid = [
        [Panel(modality, arr[c], f"{label} {c + 1}" if r == 0 else label) for c in range(n)]
        for r, (label, arr) in enumerate(rows)
    ]
    write_figure(path, grid, f"{modality}: originals vs reconstructions", panel_in=2.2)


def write_report(
    report: dict[str, Any],
    out: str | os.PathLike[str],
    originals: np.ndarray | None = None,
    recon: np.ndarray | None = None,
    baseline: np.ndarray | None = None,
) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "eval.md").write_text(report_markdown(report), encoding="utf-8")
    if originals is not None and recon is not None and len(originals):
        rows = [("original", originals), ("tokenizer", recon)]
        if baseline is not None:
            rows.append(("patch baseline", baseline))
        write_png_grid(out / "eval.png", report["modality"], rows)
