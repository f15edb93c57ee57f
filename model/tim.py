"""Thinking-in-Modalities (TiM) fine-tuning and a small segmentation downstream task.

TiM (TerraMind): before the trainable encoder sees a batch, the *frozen* pretrained
any-to-any model generates the tokens of one or more intermediate ("thought") modalities
from the real inputs (one or a few decoding steps), and those tokens join the inputs. The
fine-tuned network is the pretrained encoder plus a light head; the generator never
changes (no gradients, always in eval mode).

The downstream task here is land-cover / water segmentation from Sentinel-1 alone, with
LULC as the thought modality: :func:`finetune_segmentation` trains the same encoder + head
with and without thoughts on the same data and budget, and reports mIoU on val.

Why one module of ~650 lines: the thinking model, its segmentation task and the study are
one experiment: the study (seeds, both thought placements, a verdict against the spread)
runs :func:`finetune_segmentation` with and without thoughts (beside the generator's own
segmentation, :func:`generate_segmentation`), and the task's data and metrics exist only
for it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from terraloom.model.config import Kind, ModelConfig
from terraloom.model.generate import (
    Conditioning,
    SamplingConfig,
    encoder_batch,
    generate,
)
from terraloom.model.samples import SampleReader
from terraloom.model.transformer import TerraloomModel
from terraloom.schemas.config import to_dict
from terraloom.schemas.modalities import LULC_CLASS_NAMES, get_modality, lulc_to_index

IGNORE = 255


@dataclass(frozen=True)
class TiMConfig:
    """Which inputs the task sees, which modalities the frozen model "thinks" in, and how."""

    inputs: tuple[str, ...] = ("S1GRD",)
    thoughts: tuple[str, ...] = ("LULC",)
    #: Decoding steps of each thought (1 = a single parallel pass).
    steps: int = 1
    #: Feed inputs at "both" scales, or only "pixels" / "tokens".
    scales: str = "both"
    n_classes: int = len(LULC_CLASS_NAMES)
    head_hidden: int = 64

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("TiM needs at least one input modality")
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.scales not in ("both", "pixels", "tokens"):
            raise ValueError("scales must be both, pixels or tokens")


class EncoderBackbone(nn.Module):
    """The trainable part taken from a pretrained model: input embeddings + encoder stack."""

    def __init__(self, model: TerraloomModel) -> None:
        super().__init__()
        self.cfg: ModelConfig = model.cfg
        self.specs = model.specs
        self.inputs = copy.deepcopy(model.inputs)
        self.blocks = copy.deepcopy(model.encoder)
        self.norm = copy.deepcopy(model.encoder_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N, D) encoder features of the batch's input tokens."""
        pad = batch["enc_pad"]
        mask = (~pad)[:, None, None, :] if bool(pad.any()) else None
        x, emb = self.inputs(batch)
        x = x + emb
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x)


def pool_positions(specs: Any, batch: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
    """Mean of the features of all image-modality tokens at each patch position: (B, N_img, D)."""
    b, _, d = feats.shape
    n_img = specs.n_image_positions
    is_img = torch.tensor([s.kind is not Kind.SEQUENCE for s in specs.inputs], device=feats.device)
    keep = is_img[batch["enc_mod"]] & ~batch["enc_pad"]
    pos = torch.where(keep, batch["enc_pos"], 0)
    w = keep.to(feats.dtype)
    out = torch.zeros(b, n_img, d, dtype=feats.dtype, device=feats.device).scatter_add(
        1, pos[..., None].expand(b, -1, d), feats * w[..., None]
    )
    cnt = torch.zeros(b, n_img, dtype=feats.dtype, device=feats.device).scatter_add(1, pos, w)
    return out / cnt.clamp_min(1.0)[..., None]


class SegmentationHead(nn.Module):
    """Patch features (B, D, g, g) -> class logits (B, K, g*p, g*p): 3x3 conv, then a
    per-patch linear map to p x p pixels (pixel shuffle) refined by a 3x3 conv."""

    def __init__(self, dim: int, n_classes: int, patch: int, hidden: int = 64) -> None:
        super().__init__()
        self.patch = patch
        self.mix = nn.Sequential(nn.Conv2d(dim, hidden, 3, padding=1), nn.GELU())
        self.up = nn.Conv2d(hidden, n_classes * patch * patch, 1)
        self.refine = nn.Conv2d(n_classes, n_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pixel_shuffle(self.up(self.mix(x)), self.patch)
        return y + self.refine(y)


class TiMSegmenter(nn.Module):
    """Encoder + head fine-tuned for segmentation, optionally thinking in modalities.

    ``generator`` is a frozen copy of the pretrained model (only with ``use_tim``); the
    backbone (a copy of its input embeddings and encoder) and the head are trained.
    """

    def __init__(
        self, pretrained: TerraloomModel, cfg: TiMConfig = TiMConfig(), use_tim: bool = True
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.use_tim = use_tim
        keys = {s.key for s in pretrained.specs.inputs}
        targets = {t.modality for t in pretrained.specs.targets}
        for t in cfg.thoughts if use_tim else ():
            name = get_modality(t).name
            if name not in targets or f"{name}@tok" not in keys:
                raise ValueError(
                    f"thought modality {name} must be a target and a token input of the pretrained model"
                )
        self.generator: TerraloomModel | None = None
        if use_tim:
            self.generator = copy.deepcopy(pretrained).eval()
            self.generator.requires_grad_(False)
        self.backbone = EncoderBackbone(pretrained)
        self.head = SegmentationHead(
            pretrained.cfg.dim, cfg.n_classes, pretrained.cfg.patch_px, cfg.head_hidden
        )
        self.sampling = SamplingConfig(steps=cfg.steps, temperature=0.0, choice_temperature=0.0)

    def train(self, mode: bool = True) -> TiMSegmenter:
        super().train(mode)
        if self.generator is not None:
            self.generator.eval()  # frozen: never in training mode
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def think(self, cond: Conditioning) -> Conditioning:
        """The inputs plus the generated thought tokens (unchanged without TiM)."""
        if self.generator is None:
            return cond
        return generate(
            self.generator, cond, self.cfg.thoughts, self.sampling, seed=None, chain=True
        ).conditioning

    def forward(self, cond: Conditioning) -> torch.Tensor:
        """(B, K, H, W) class logits."""
        cond = self.think(cond)
        batch = encoder_batch(self.backbone, cond)
        feats = pool_positions(self.backbone.specs, batch, self.backbone(batch))
        g = int(round(feats.shape[1] ** 0.5))
        grid = feats.transpose(1, 2).reshape(feats.shape[0], -1, g, g)
        return self.head(grid)


# --------------------------------------------------------------------------- data


@dataclass
class SegmentationData:
    """Preloaded inputs and labels: ``cond`` for N crops, ``labels`` (N, H, W) class indices."""

    cond: Conditioning
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_segmentation_data(
    model: TerraloomModel,
    corpus: str | os.PathLike[str],
    tokens: str | os.PathLike[str],
    split: str,
    cfg: TiMConfig = TiMConfig(),
    crops: Sequence[int] = (0,),
    max_rows: int | None = None,
) -> SegmentationData:
    """Inputs (``cfg.inputs`` at ``cfg.scales``) and LULC labels of every valid row x crop."""
    reader = SampleReader(corpus, tokens, split)
    rows = reader.valid_rows
    if max_rows is not None:
        rows = rows[:max_rows]
    if not len(rows):
        raise ValueError(f"split {split!r} has no valid rows")
    conds, labels = [], []
    for k in crops:
        c = reader.conditioning(model, cfg.inputs, rows, k, scales=cfg.scales)
        lulc = reader.pixels("LULC", rows, reader.crops(rows, k))[:, 0]
        conds.append(c)
        labels.append(
            torch.from_numpy(lulc_to_index(lulc.numpy().astype(np.uint8)).astype(np.int64))
        )
    cond = Conditioning(
        {n: torch.cat([c.tokens[n] for c in conds]) for n in conds[0].tokens},
        {n: torch.cat([c.lengths[n] for c in conds]) for n in conds[0].lengths},
        {n: torch.cat([c.pixels[n] for c in conds]) for n in conds[0].pixels},
    )
    return SegmentationData(cond, torch.cat(labels))


# --------------------------------------------------------------------------- metrics


def confusion(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(K, K) counts [true, predicted] over pixels whose target is not ignored."""
    ok = target != IGNORE
    idx = target[ok].long() * n_classes + pred[ok].long().clamp(0, n_classes - 1)
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_scores(conf: torch.Tensor) -> dict[str, Any]:
    """Accuracy, per-class IoU and mIoU over the classes present in the reference."""
    conf = conf.double()
    tp = conf.diag()
    gt = conf.sum(1)
    pr = conf.sum(0)
    union = gt + pr - tp
    present = gt > 0
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.zeros_like(tp))
    return {
        "accuracy": float(tp.sum() / conf.sum().clamp_min(1)),
        "miou": float(iou[present].mean()) if bool(present.any()) else float("nan"),
        "iou": {
            LULC_CLASS_NAMES[i] if i < len(LULC_CLASS_NAMES) else str(i): float(iou[i])
            for i in range(len(iou))
            if bool(present[i])
        },
    }


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 200
    batch_size: int = 8
    lr: float = 3e-3
    #: Learning rate of the pretrained backbone relative to ``lr``.
    backbone_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    eval_batch: int = 16


@dataclass
class FinetuneResult:
    use_tim: bool
    metrics: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def evaluate_segmentation(
    model: TiMSegmenter, data: SegmentationData, batch_size: int = 16
) -> dict[str, Any]:
    model.eval()
    k = model.cfg.n_classes
    conf = torch.zeros(k, k, dtype=torch.long)
    with torch.no_grad():
        for a in range(0, len(data), batch_size):
            idx = list(range(a, min(a + batch_size, len(data))))
            logits = model(data.cond.select(idx))
            conf += confusion(logits.argmax(1).cpu(), data.labels[idx], k)
    return iou_scores(conf)


def finetune_segmentation(
    pretrained: TerraloomModel,
    train: SegmentationData,
    val: SegmentationData,
    cfg: TiMConfig = TiMConfig(),
    ft: FinetuneConfig = FinetuneConfig(),
    *,
    use_tim: bool = True,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune encoder + head (with or without TiM thoughts) and report val metrics."""
    from tqdm import tqdm

    torch.manual_seed(ft.seed)
    model = TiMSegmenter(pretrained, cfg, use_tim)
    head = list(model.head.parameters())
    backbone = list(model.backbone.parameters())
    opt = torch.optim.AdamW(
        [{"params": head, "lr": ft.lr}, {"params": backbone, "lr": ft.lr * ft.backbone_lr_ratio}],
        weight_decay=ft.weight_decay,
    )
    rng = np.random.default_rng(ft.seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(
        range(ft.steps),
        desc=f"finetune {'TiM' if use_tim else 'no TiM'}",
        unit="step",
        disable=not progress,
    )
    for step in bar:
        idx = rng.choice(len(train), size=min(ft.batch_size, len(train)), replace=False).tolist()
        lr_scale = 0.5 * (1 + np.cos(np.pi * step / max(ft.steps, 1)))
        for g, base in zip(opt.param_groups, (ft.lr, ft.lr * ft.backbone_lr_ratio)):
            g["lr"] = base * lr_scale
        logits = model(train.cond.select(idx))
        loss = F.cross_entropy(logits, train.labels[idx].to(logits.device), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    metrics = evaluate_segmentation(model, val, ft.eval_batch)
    return FinetuneResult(use_tim, metrics, losses, time.perf_counter() - t0)


def compare_tim(
    pretrained: TerraloomModel,
    train: SegmentationData,
    val: SegmentationData,
    cfg: TiMConfig = TiMConfig(),
    ft: FinetuneConfig = FinetuneConfig(),
    progress: bool = True,
) -> dict[str, Any]:
    """The same fine-tuning with and without TiM; a JSON-ready summary."""
    runs = {}
    for use in (False, True):
        r = finetune_segmentation(pretrained, train, val, cfg, ft, use_tim=use, progress=progress)
        runs["tim" if use else "no_tim"] = {
            **r.metrics,
            "final_loss": float(np.mean(r.losses[-10:])) if r.losses else float("nan"),
            "seconds": round(r.seconds, 1),
        }
    return {
        "task": f"LULC segmentation from {'+'.join(cfg.inputs)} ({cfg.scales})",
        "thoughts": list(cfg.thoughts),
        "config": {**asdict(cfg), **{f"ft_{k}": v for k, v in asdict(ft).items()}},
        "n_train": len(train),
        "n_val": len(val),
        **runs,
        "winner": "tim" if runs["tim"]["miou"] > runs["no_tim"]["miou"] else "no_tim",
    }


def write_tim_report(summary: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """``tim.json`` + ``tim.md`` (mIoU with and without TiM)."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tim.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"Task: {summary['task']}; thought modality: {', '.join(summary['thoughts'])} "
        "(generated by the frozen pretrained model).",
        "",
        "| fine-tuning | mIoU | pixel accuracy | water IoU | seconds |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("no_tim", "encoder + head"), ("tim", "encoder + head + TiM")):
        r = summary[key]
        water = r["iou"].get("water")
        lines.append(
            f"| {label} | {r['miou']:.3f} | {r['accuracy']:.3f} | {'-' if water is None else f'{water:.3f}'} | {r['seconds']} |"
        )
    lines.append("")
    lines.append(
        f"{summary['n_train']} training crops, {summary['n_val']} val crops; better: **{'TiM' if summary['winner'] == 'tim' else 'no TiM'}**."
    )
    (out / "tim.md").write_text("\n".join(lines) + "\n")
    return out / "tim.md"


# --------------------------------------------------------------------------- the TiM study


@dataclass(frozen=True)
class TiMStudyConfig:
    """The Thinking-in-Modalities comparison: thought sets x seeds, and both placements.

    *Fine-tuning* placement: the same encoder + head fine-tuned without thoughts and with
    each set in ``thoughts``, once per seed in ``seeds`` (the seed sets the head's init and
    the batch order; the data and the frozen generator are the same). *Inference-only*
    placement: no fine-tuning at all; the frozen any-to-any model generates the land cover
    from the inputs directly and through each thought set that does not hold the task's own
    modality (``S1GRD -> S2L2A -> LULC`` against ``S1GRD -> LULC``).
    """

    inputs: tuple[str, ...] = ("S1GRD",)
    #: Input scales of the downstream task ("pixels": the user has imagery, not tokens).
    scales: str = "pixels"
    #: Each entry is one thought set (generated in order, chained).
    thoughts: tuple[tuple[str, ...], ...] = (("LULC",), ("S2L2A",))
    #: Decoding steps of each thought, and of the land cover in the inference-only runs.
    thought_steps: int = 1
    generate_steps: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    #: Token-store crops per training row (val: crop 0).
    train_crops: int = 2
    inference_only: bool = True
    head_hidden: int = 64

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("the TiM study needs at least one seed")
        if self.thought_steps < 1 or self.generate_steps < 1 or self.train_crops < 1:
            raise ValueError("thought_steps, generate_steps and train_crops must be >= 1")
        if any(not t for t in self.thoughts):
            raise ValueError("an empty thought set; the run without thoughts is always made")

    def tim_config(self, thoughts: Sequence[str] = ()) -> TiMConfig:
        return TiMConfig(
            inputs=self.inputs,
            thoughts=tuple(thoughts) or ("LULC",),
            steps=self.thought_steps,
            scales=self.scales,
            head_hidden=self.head_hidden,
        )


def _check_thoughts(pretrained: TerraloomModel, thoughts: Sequence[str]) -> tuple[str, ...]:
    keys = {s.key for s in pretrained.specs.inputs}
    targets = {t.modality for t in pretrained.specs.targets}
    names = tuple(get_modality(t).name for t in thoughts)
    for name in names:
        if name not in targets or f"{name}@tok" not in keys:
            raise ValueError(
                f"thought modality {name} must be a target and a token input of the pretrained model"
            )
    return names


@torch.no_grad()
def with_thoughts(
    pretrained: TerraloomModel,
    data: SegmentationData,
    thoughts: Sequence[str],
    steps: int = 1,
    batch_size: int = 16,
) -> SegmentationData:
    """``data`` with the thought tokens the frozen model generates from its inputs.

    Thoughts are greedy (argmax tokens, most confident positions first), so each crop's
    thought is the same in every step and every run: computing them once here is exactly
    what :meth:`TiMSegmenter.think` does per batch, at a fraction of the cost.
    """
    names = _check_thoughts(pretrained, thoughts)
    if not names:
        return data
    sampling = SamplingConfig(steps=steps, temperature=0.0, choice_temperature=0.0)
    parts: list[dict[str, torch.Tensor]] = []
    for a in range(0, len(data), batch_size):
        idx = list(range(a, min(a + batch_size, len(data))))
        gen = generate(pretrained, data.cond.select(idx), names, sampling, seed=None, chain=True)
        parts.append({n: gen.tokens[n].cpu() for n in names})
    cond = data.cond
    for n in names:
        cond = cond.with_tokens(n, torch.cat([p[n] for p in parts]))
    return SegmentationData(cond, data.labels)


@torch.no_grad()
def generate_segmentation(
    pretrained: TerraloomModel,
    lulc_tokenizer: Any,
    data: SegmentationData,
    thoughts: Sequence[str] = (),
    steps: int = 4,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Inference-only TiM: the frozen model generates LULC (after ``thoughts``, chained)."""
    from terraloom.model.generate import decode_tokens

    names = _check_thoughts(pretrained, (*thoughts, "LULC"))
    k = len(LULC_CLASS_NAMES)
    conf = torch.zeros(k, k, dtype=torch.long)
    sampling = SamplingConfig(steps=steps, temperature=0.0, choice_temperature=0.0)
    for a in range(0, len(data), batch_size):
        idx = list(range(a, min(a + batch_size, len(data))))
        gen = generate(pretrained, data.cond.select(idx), names, sampling, seed=None, chain=True)
        legend = decode_tokens(lulc_tokenizer, "LULC", gen.tokens["LULC"].cpu())[:, 0]
        pred = torch.from_numpy(
            lulc_to_index(np.nan_to_num(legend.cpu().numpy()).astype(np.uint8)).astype(np.int64)
        )
        conf += confusion(pred, data.labels[idx], k)
    return iou_scores(conf)


def _spread(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    return {
        "values": [round(float(x), 4) for x in v],
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
    }


def verdict(diffs: Sequence[float]) -> str:
    """ "helps" / "hurts" when the mean paired difference is at least two standard errors
    from 0 (and, with fewer than 3 seeds, never), else "no clear difference"."""
    d = np.asarray(diffs, np.float64)
    if len(d) < 3:
        return "too few seeds"
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    m = float(d.mean())
    if m > 2 * se and m > 0:
        return "helps"
    if m < -2 * se and m < 0:
        return "hurts"
    return "no clear difference"


def tim_study(
    pretrained: TerraloomModel,
    train: SegmentationData,
    val: SegmentationData,
    study: TiMStudyConfig = TiMStudyConfig(),
    lulc_tokenizer: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the study; a JSON-ready summary (per seed, mean and standard deviation).

    Each thought set is compared with the run without thoughts *of the same seed* (paired
    differences), so a seed that is good for both does not count as a TiM win.
    """
    t0 = time.perf_counter()
    pretrained.eval()
    sets: list[tuple[str, ...]] = [()] + [tuple(t) for t in study.thoughts]
    runs: dict[str, dict[str, Any]] = {}
    for thoughts in sets:
        label = "+".join(thoughts) if thoughts else "none"
        tr = with_thoughts(pretrained, train, thoughts, study.thought_steps)
        va = with_thoughts(pretrained, val, thoughts, study.thought_steps)
        per_seed = []
        for seed in study.seeds:
            ft = dataclasses.replace(study.finetune, seed=seed)
            r = finetune_segmentation(
                pretrained, tr, va, study.tim_config(), ft, use_tim=False, progress=progress
            )
            per_seed.append(r)
        runs[label] = {
            "thoughts": list(thoughts),
            "miou": _spread([r.metrics["miou"] for r in per_seed]),
            "accuracy": _spread([r.metrics["accuracy"] for r in per_seed]),
            "seconds": round(sum(r.seconds for r in per_seed), 1),
        }
    base = runs["none"]["miou"]["values"]
    for label, run in runs.items():
        if label == "none":
            continue
        diffs = [a - b for a, b in zip(run["miou"]["values"], base)]
        run["miou_gain"] = _spread(diffs)
        run["verdict"] = verdict(diffs)
    inference: dict[str, Any] = {}
    if study.inference_only and lulc_tokenizer is not None:
        for thoughts in sets:
            if "LULC" in thoughts:
                continue  # the task's own modality is the answer, not a thought
            label = "+".join(thoughts) if thoughts else "none"
            inference[label] = generate_segmentation(
                pretrained, lulc_tokenizer, val, thoughts, study.generate_steps
            )
    return {
        "task": f"LULC segmentation from {'+'.join(study.inputs)} ({study.scales})",
        "config": json.loads(json.dumps(to_dict(study))),
        "n_train": len(train),
        "n_val": len(val),
        "finetune": runs,
        "inference_only": inference,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def write_tim_study(summary: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """``tim.json`` + ``tim.md``: mIoU mean +- standard deviation over seeds per thought set."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tim.json").write_text(json.dumps(summary, indent=2))
    seeds = summary["config"]["seeds"]
    lines = [
        f"Task: {summary['task']}; {summary['n_train']} training crops, {summary['n_val']} val "
        f"crops; seeds {', '.join(map(str, seeds))}. Thoughts are generated greedily by the "
        "frozen pretrained model.",
        "",
        "**Fine-tuning placement** (encoder + head fine-tuned with the thoughts as extra inputs; "
        "mIoU and pixel accuracy: mean +- standard deviation over seeds; gain: paired with the "
        "run without thoughts of the same seed):",
        "",
        "| thoughts | mIoU | per seed | pixel accuracy | mIoU gain | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in summary["finetune"].items():
        m, a = r["miou"], r["accuracy"]
        gain = r.get("miou_gain")
        lines.append(
            f"| {label} | {m['mean']:.3f} +- {m['std']:.3f} | {', '.join(f'{v:.3f}' for v in m['values'])} "
            f"| {a['mean']:.3f} +- {a['std']:.3f} | "
            + (f"{gain['mean']:+.3f} +- {gain['std']:.3f}" if gain else "-")
            + f" | {r.get('verdict', '-')} |"
        )
    inf = summary.get("inference_only") or {}
    if inf:
        lines += [
            "",
            "**Inference-only placement** (no fine-tuning: the frozen model generates the land "
            "cover, greedy, from the inputs directly or through the thoughts; deterministic, so "
            "no seeds):",
            "",
            "| generated | mIoU | pixel accuracy |",
            "|---|---|---|",
        ]
        for label, r in inf.items():
            src = "+".join(summary["config"]["inputs"])
            via = f"{src} -> {label} -> LULC" if label != "none" else f"{src} -> LULC"
            lines.append(f"| {via} | {r['miou']:.3f} | {r['accuracy']:.3f} |")
    lines += ["", f"{summary['seconds']:.0f} s."]
    (out / "tim.md").write_text("\n".join(lines) + "\n")
    return out / "tim.md"
