"""Generation quality on a held-out split, each metric next to a trivial baseline.

Tasks (generate the target's tokens from the inputs, decode them with the tokenizer,
compare with the corpus crop):

| task | metrics | trivial baseline (from the train split, same run) |
|---|---|---|
| S1GRD -> S2L2A | PSNR, SSIM on DN / 10000 clipped to [0, 1] | the dataset-mean image |
| S2L2A -> LULC | pixel accuracy, mIoU | the class prior (majority class everywhere) |
| S2L2A -> DEM | MAE in metres | the mean elevation |
| S2L2A -> S1GRD | MAE in dB | the per-band mean backscatter |
| S2L2A -> GEO | median great-circle error in km | the dataset centroid |

Every image target (S2L2A, DEM, S1GRD) also gets the *grid artifact* row
(:func:`grid_ratio`): the energy of generated minus reference, less its per-crop plane, at
the token-patch period (16 px) and its harmonics, relative to the reference's own energy
there. A generator whose patches do not join up (a checkerboard or a staircase at the patch
period) scores far above the tokenizer's own reconstruction; a wrong crop-scale slope does
not count (it is no grid). Its yardstick is the tokenizer ceiling: a constant prediction
draws no grid, so the row has no verdict against the trivial baseline.

Also reported: the *tokenizer ceiling*, the same metric for the true tokens decoded, which
bounds what any token generator can reach with these tokenizers.

Why one module of ~670 lines: every task runs the same loop (generate, decode, compare with
the corpus crop) and reports each metric beside its baseline and the tokenizer ceiling; the
metrics are that loop's comparison step.
"""

from __future__ import annotations

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

from terraloom.model.generate import EXPECTED, SamplingConfig, decode_tokens, generate
from terraloom.model.samples import SampleReader
from terraloom.model.tim import confusion, iou_scores
from terraloom.model.transformer import TerraloomModel
from terraloom.schemas.modalities import LULC_CLASSES, PATCH_PX, S2_DN_SCALE, lulc_to_index

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class EvalTask:
    inputs: tuple[str, ...]
    target: str

    @property
    def name(self) -> str:
        return f"{'+'.join(self.inputs)} -> {self.target}"


DEFAULT_TASKS: tuple[EvalTask, ...] = (
    EvalTask(("S1GRD",), "S2L2A"),
    EvalTask(("S2L2A",), "LULC"),
    EvalTask(("S2L2A",), "DEM"),
    EvalTask(("S2L2A",), "S1GRD"),
    EvalTask(("S2L2A",), "GEO"),
)


@dataclass(frozen=True)
class EvalConfig:
    split: str = "val"
    #: Split the baselines are computed from.
    baseline_split: str = "train"
    batch_size: int = 16
    max_samples: int | None = None
    baseline_max_samples: int | None = 512
    #: Token-store crop index evaluated (0 = the centred crop).
    crop: int = 0
    #: Input scales: "both", "pixels" or "tokens".
    scales: str = "both"
    sampling: SamplingConfig = field(default_factory=lambda: EXPECTED)
    seed: int = 0
    progress: bool = True


# --------------------------------------------------------------------------- metrics


def s2_unit_scale(dn: torch.Tensor) -> torch.Tensor:
    """S2 DN -> the [0, 1] scale PSNR and SSIM use: DN / S2_DN_SCALE, clipped (NaN stays NaN).

    Not reflectance (``schemas.modalities.reflectance`` is): the processing-baseline offset
    is not removed. It would cancel in the errors anyway; a fixed scale keeps the figures
    comparable across corpora.
    """
    return (dn.float() / S2_DN_SCALE).clamp(0.0, 1.0)


def psnr(
    pred: torch.Tensor,
    true: torch.Tensor,
    data_range: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample PSNR (dB) of (B, C, H, W) images over the valid elements."""
    err = (pred.float() - true.float()) ** 2
    m = torch.ones_like(err, dtype=torch.bool) if mask is None else mask.expand_as(err)
    mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, true: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample SSIM (Wang et al. 2004: 11 px Gaussian window, sigma 1.5), mean over bands."""
    x, y = pred.float(), true.float()
    b, c, _, _ = x.shape
    g = _gauss().to(x.device)
    k = len(g)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(b * c, 1, *t.shape[-2:])
        t = F.conv2d(t, g.view(1, 1, 1, k))
        t = F.conv2d(t, g.view(1, 1, k, 1))
        return t.reshape(b, c, *t.shape[-2:])

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def grid_energy(x: torch.Tensor, period: int = PATCH_PX) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): energy of the component of ``x`` with the patch period.

    The average ``period`` x ``period`` tile of the image (over all tiles), less its mean,
    squared and averaged. That is exactly the DFT power of ``x`` at the patch frequency and
    its harmonics, ``(k H / p, l W / p)`` for ``(k, l) != (0, 0)``, divided by ``(H W)^2``
    (the DFT at those frequencies only sees the average tile), so no FFT is needed and no
    window leaks other frequencies in. A checkerboard at the token-patch period (every
    patch drawn with the same seam or ramp) lands entirely here; noise spreads over all
    frequencies and contributes only its share.
    """
    b, c, h, w = x.shape
    if h % period or w % period:
        raise ValueError(f"images of {h} x {w} are not a multiple of the period {period}")
    tile = x.float().reshape(b, c, h // period, period, w // period, period).mean((2, 4))
    return (tile - tile.mean((-2, -1), keepdim=True)).square().mean((-2, -1))


def detrend(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) less, per image and band, its least-squares plane ``a + b x + c y`` over
    the valid pixels (invalid pixels become 0).

    Why: a plane is a staircase plus a sawtooth of every tile's period, so an image-scale
    slope puts energy on the patch lattice although nothing in it repeats per patch. A
    generator that gets the slope of a whole crop wrong (or a constant prediction) would
    read as a grid; with the plane removed, the lattice holds what is left: seams, ramps
    and bumps drawn the same way in every patch (a staircase rendition of a slope among
    them: its sawtooth has no trend, so it stays).
    """
    b, c, h, w = x.shape
    dtype = torch.float64
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, h, dtype=dtype), torch.linspace(-1, 1, w, dtype=dtype), indexing="ij"
    )
    basis = torch.stack([torch.ones_like(xx), xx, yy]).to(x.device)  # (3, H, W)
    m = valid.expand_as(x).to(dtype)
    v = torch.where(valid.expand_as(x), x.to(dtype), torch.zeros((), dtype=dtype, device=x.device))
    gram = torch.einsum("bchw,ihw,jhw->bcij", m, basis, basis)
    rhs = torch.einsum("bchw,ihw->bci", v, basis)
    eye = torch.eye(3, dtype=dtype, device=x.device)
    coef = torch.linalg.solve(gram + 1e-9 * eye, rhs[..., None])[..., 0]  # (B, C, 3)
    plane = torch.einsum("bci,ihw->bchw", coef, basis)
    return ((v - plane) * m).to(torch.float32)


def grid_terms(
    pred: torch.Tensor,
    true: torch.Tensor,
    valid: torch.Tensor,
    period: int = PATCH_PX,
    detrended: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band sums over the batch: (grid energy of pred - true, grid energy of true).

    The difference is taken less its per-image plane (:func:`detrend`) unless
    ``detrended`` is False; the reference is not: the scale stays the reference's own
    energy on the lattice, its slope included (detrended, a smooth DEM keeps about 1/270
    of it, and the ratio would be noise over nearly nothing).

    Invalid reference pixels (nodata) count as no difference and, in the reference, as
    its band mean, so a nodata hole is not read as structure.
    """
    ok = valid.expand_as(true) & torch.isfinite(true) & torch.isfinite(pred)
    t = torch.where(ok, true.float(), torch.zeros_like(true, dtype=torch.float32))
    n = ok.flatten(2).sum(-1).clamp_min(1)
    mean = (t.flatten(2).sum(-1) / n)[..., None, None]
    ref = torch.where(ok, t, mean.expand_as(t))
    diff = torch.where(ok, pred.float() - t, torch.zeros_like(t))
    if detrended:  # the plane is fitted to the valid pixels only; holes stay 0
        diff = detrend(diff, ok)
    return grid_energy(diff, period).sum(0), grid_energy(ref, period).sum(0)


def grid_ratio(
    pred: torch.Tensor,
    true: torch.Tensor,
    valid: torch.Tensor | None = None,
    period: int = PATCH_PX,
    detrended: bool = True,
) -> float:
    """Grid-artifact measure of generated ``pred`` against reference ``true`` (B, C, H, W).

    Per band: the grid energy (:func:`grid_energy`) of ``pred - true`` less its per-image
    plane (:func:`detrend`), summed over the batch, over that of ``true``; the mean over
    bands. 0: no error at the patch period; 1: as much as the reference holds there (a
    staircase rendering of a slope scores about 1, a constant prediction the share of the
    reference's lattice energy that is not its plane; ``detrended=False``, the measure
    before the plane was removed, scores a constant exactly 1 and any wrong crop-scale
    slope as grid).
    """
    valid = torch.ones_like(true, dtype=torch.bool) if valid is None else valid
    num, den = grid_terms(pred, true, valid, period, detrended)
    return float((num / den.clamp_min(1e-12)).mean())


def haversine_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between (N, 2) lat/lon degree arrays (b may be (2,))."""
    a = np.radians(np.asarray(a, np.float64))
    b = np.radians(np.asarray(b, np.float64))
    dlat = b[..., 0] - a[..., 0]
    dlon = b[..., 1] - a[..., 1]
    h = np.sin(dlat / 2) ** 2 + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def spherical_centroid(latlon: np.ndarray) -> np.ndarray:
    """(2,) lat/lon of the normalised mean of the points' unit vectors."""
    r = np.radians(np.asarray(latlon, np.float64))
    v = np.stack(
        [np.cos(r[:, 0]) * np.cos(r[:, 1]), np.cos(r[:, 0]) * np.sin(r[:, 1]), np.sin(r[:, 0])], 1
    ).mean(0)
    v /= max(float(np.linalg.norm(v)), 1e-12)
    return np.degrees(np.array([math.asin(float(v[2])), math.atan2(float(v[1]), float(v[0]))]))


# --------------------------------------------------------------------------- baselines


@dataclass
class Baselines:
    """Trivial predictors fitted on the baseline split."""

    s2_mean_image: torch.Tensor | None = None  # (C, H, W) DN
    lulc_majority: int | None = None  # legend value
    lulc_prior: dict[int, float] = field(default_factory=dict)
    dem_mean: float | None = None
    s1_mean: torch.Tensor | None = None  # (C,) dB
    geo_centroid: np.ndarray | None = None
    n_samples: int = 0


def fit_baselines(reader: SampleReader, targets: Sequence[str], cfg: EvalConfig) -> Baselines:
    rows = reader.valid_rows
    if cfg.baseline_max_samples is not None:
        rows = rows[: cfg.baseline_max_samples]
    base = Baselines(n_samples=len(rows))
    s2_sum: torch.Tensor | None = None
    s2_cnt: torch.Tensor | None = None
    hist = np.zeros(256, np.int64)
    dem_sum, dem_n = 0.0, 0
    s1_sum: torch.Tensor | None = None
    s1_n: torch.Tensor | None = None
    geo: list[np.ndarray] = []
    for a in range(0, len(rows), cfg.batch_size):
        r = rows[a : a + cfg.batch_size]
        crops = reader.crops(r, cfg.crop)
        if "S2L2A" in targets:
            x = reader.pixels("S2L2A", r, crops)
            ok = x > 0
            s = torch.where(ok, x, torch.zeros_like(x)).sum(0)
            n = ok.sum(0)
            s2_sum = s if s2_sum is None else s2_sum + s
            s2_cnt = n if s2_cnt is None else s2_cnt + n
        if "LULC" in targets:
            y = reader.pixels("LULC", r, crops).numpy().astype(np.uint8)
            hist += np.bincount(y.ravel(), minlength=256)
        if "DEM" in targets:
            d = reader.pixels("DEM", r, crops).numpy()
            ok = np.isfinite(d)
            dem_sum += float(d[ok].sum())
            dem_n += int(ok.sum())
        if "S1GRD" in targets:
            x = reader.pixels("S1GRD", r, crops)
            ok = torch.isfinite(x)
            s = torch.where(ok, x, torch.zeros_like(x)).sum((0, 2, 3))
            n = ok.sum((0, 2, 3))
            s1_sum = s if s1_sum is None else s1_sum + s
            s1_n = n if s1_n is None else s1_n + n
        if "GEO" in targets:
            geo.append(reader.pixels("GEO", r, crops).numpy().astype(np.float64))
    if s2_sum is not None and s2_cnt is not None:
        base.s2_mean_image = s2_sum / s2_cnt.clamp_min(1)
    if hist[list(LULC_CLASSES)].sum():
        counts = {v: int(hist[v]) for v in LULC_CLASSES}
        total = sum(counts.values())
        base.lulc_prior = {v: c / total for v, c in counts.items()}
        base.lulc_majority = max(counts, key=lambda v: counts[v])
    if dem_n:
        base.dem_mean = dem_sum / dem_n
    if s1_sum is not None and s1_n is not None:
        base.s1_mean = s1_sum / s1_n.clamp_min(1)
    if geo:
        base.geo_centroid = spherical_centroid(np.concatenate(geo))
    return base


# --------------------------------------------------------------------------- accumulation


class _Acc:
    """Per-task sums for the model, the baseline and the tokenizer ceiling."""

    def __init__(self) -> None:
        self.lists: dict[tuple[str, str], list[float]] = {}
        self.conf: dict[str, torch.Tensor] = {}
        self.sums: dict[tuple[str, str], list[float]] = {}
        #: who -> per-band [grid energy of the error, grid energy of the reference]
        self.grid: dict[str, list[torch.Tensor]] = {}

    def extend(self, who: str, metric: str, values: Any) -> None:
        self.lists.setdefault((who, metric), []).extend(
            np.asarray(values, np.float64).ravel().tolist()
        )

    def add_sum(self, who: str, metric: str, total: float, count: int) -> None:
        s = self.sums.setdefault((who, metric), [0.0, 0.0])
        s[0] += total
        s[1] += count

    def add_grid(
        self, who: str, pred: torch.Tensor, true: torch.Tensor, valid: torch.Tensor
    ) -> None:
        num, den = grid_terms(pred, true, valid)
        g = self.grid.setdefault(who, [torch.zeros_like(num), torch.zeros_like(den)])
        g[0] += num
        g[1] += den

    def add_conf(self, who: str, conf: torch.Tensor) -> None:
        self.conf[who] = conf if who not in self.conf else self.conf[who] + conf


def _lulc_index(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(
        lulc_to_index(np.nan_to_num(x.numpy()).astype(np.uint8)).astype(np.int64)
    )


def _score(task: EvalTask, acc: _Acc, who: str, pred: Any, true: Any, ref_crops: Any) -> None:
    t = task.target
    if t == "S2L2A":
        p, y = s2_unit_scale(pred), s2_unit_scale(true)
        mask = true > 0
        acc.extend(who, "psnr", psnr(p, y, 1.0, mask))
        acc.extend(who, "ssim", ssim(p, y, 1.0))
        acc.add_grid(who, p, y, mask)
    elif t == "LULC":
        acc.add_conf(
            who, confusion(_lulc_index(pred[:, 0]), _lulc_index(true[:, 0]), len(LULC_CLASSES))
        )
    elif t == "DEM":
        ok = torch.isfinite(true)
        err = (pred.float() - true.float()).abs()
        acc.add_sum(who, "mae_m", float(err[ok].sum()), int(ok.sum()))
        acc.add_grid(who, pred.float(), true.float(), ok)
    elif t == "S1GRD":
        ok = torch.isfinite(true)
        err = (pred.float() - true.float()).abs()
        acc.add_sum(who, "mae_db", float(err[ok].sum()), int(ok.sum()))
        acc.add_grid(who, pred.float(), true.float(), ok)
    elif t == "GEO":
        acc.extend(
            who,
            "median_km",
            haversine_km(np.asarray(pred, np.float64), np.asarray(true, np.float64)),
        )
    else:
        raise ValueError(f"no metric for target {t}")


GRID_LABEL = "grid artifact (16 px)"

METRICS: dict[str, tuple[tuple[str, str, str], ...]] = {
    # target -> (metric key, label, better)
    "S2L2A": (
        ("psnr", "PSNR (dB)", "higher"),
        ("ssim", "SSIM", "higher"),
        ("grid", GRID_LABEL, "lower"),
    ),
    "LULC": (("accuracy", "pixel accuracy", "higher"), ("miou", "mIoU", "higher")),
    "DEM": (("mae_m", "MAE (m)", "lower"), ("grid", GRID_LABEL, "lower")),
    "S1GRD": (("mae_db", "MAE (dB)", "lower"), ("grid", GRID_LABEL, "lower")),
    "GEO": (("median_km", "median error (km)", "lower"),),
}


def _finish(task: EvalTask, acc: _Acc, who: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, _, _ in METRICS[task.target]:
        if task.target == "LULC":
            if who in acc.conf:
                out[key] = iou_scores(acc.conf[who])[key]
        elif key == "median_km":
            v = acc.lists.get((who, key))
            if v:
                out[key] = float(np.median(v))
        elif key == "grid":
            g = acc.grid.get(who)
            if g is not None:
                out[key] = float((g[0] / g[1].clamp_min(1e-12)).mean())
        elif key in ("mae_m", "mae_db"):
            s = acc.sums.get((who, key))
            if s and s[1]:
                out[key] = s[0] / s[1]
        else:
            v = acc.lists.get((who, key))
            if v:
                out[key] = float(np.mean(v))
    return out


# --------------------------------------------------------------------------- report


@dataclass
class EvalReport:
    rows: list[dict[str, Any]]
    split: str
    n_samples: int
    baseline_samples: int
    seconds: float
    config: dict[str, Any]
    crop_px: int = 224

    @property
    def all_beat_baseline(self) -> bool:
        return all(r["beats_baseline"] for r in self.rows if r["beats_baseline"] is not None)

    def to_markdown(self) -> str:
        lines = [
            "| task | metric | model | trivial baseline | tokenizer ceiling | beats baseline |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r['task']} | {r['metric']} | {_fmt(r['model'])} | {_fmt(r['baseline'])} ({r['baseline_name']}) | {_fmt(r.get('ceiling'))} | {_verdict(r['beats_baseline'])} |"
            )
        lines.append("")
        lines.append(
            f"{self.n_samples} {self.split} crops ({self.crop_px} px, crop {self.config.get('crop', 0)} of the token store); baselines fitted on {self.baseline_samples} train samples; {self.seconds:.0f} s."
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "crop_px": self.crop_px,
            "n_samples": self.n_samples,
            "baseline_samples": self.baseline_samples,
            "seconds": self.seconds,
            "rows": self.rows,
            "config": self.config,
            "all_beat_baseline": self.all_beat_baseline,
        }

    def write(self, out: str | os.PathLike[str]) -> tuple[Path, Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        j = out / "evaluation.json"
        m = out / "evaluation.md"
        j.write_text(json.dumps(self.to_json(), indent=2))
        m.write_text(self.to_markdown() + "\n")
        return j, m


def _verdict(beats: bool | None) -> str:
    return "-" if beats is None else "yes" if beats else "no"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


BASELINE_NAMES = {
    "S2L2A": "mean image",
    "LULC": "class prior",
    "DEM": "mean elevation",
    "S1GRD": "mean backscatter",
    "GEO": "centroid",
}


def _baseline_prediction(task: EvalTask, base: Baselines, true: Any) -> Any:
    t = task.target
    if t == "S2L2A":
        assert base.s2_mean_image is not None
        return base.s2_mean_image[None].expand_as(true)
    if t == "LULC":
        assert base.lulc_majority is not None
        return torch.full_like(true, float(base.lulc_majority))
    if t == "DEM":
        assert base.dem_mean is not None
        return torch.full_like(true, base.dem_mean)
    if t == "S1GRD":
        assert base.s1_mean is not None
        return base.s1_mean.view(1, -1, 1, 1).to(true.dtype).expand_as(true).clone()
    assert base.geo_centroid is not None
    return np.repeat(base.geo_centroid[None], len(true), 0)


def evaluate_generation(
    model: TerraloomModel,
    tokenizers: dict[str, Any],
    corpus: str | os.PathLike[str],
    tokens: str | os.PathLike[str],
    cfg: EvalConfig = EvalConfig(),
    tasks: Sequence[EvalTask] = DEFAULT_TASKS,
) -> EvalReport:
    """Run every task on ``cfg.split``; baselines are fitted on ``cfg.baseline_split``."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    model.eval()
    targets = [t.target for t in tasks]
    for t in targets:
        if t not in METRICS:
            raise ValueError(f"no evaluation metric for {t}; evaluable targets: {list(METRICS)}")
        if t not in tokenizers:
            raise ValueError(f"no tokenizer given for {t}")
    base = fit_baselines(SampleReader(corpus, tokens, cfg.baseline_split), targets, cfg)
    reader = SampleReader(corpus, tokens, cfg.split)
    rows = reader.valid_rows
    if cfg.max_samples is not None:
        rows = rows[: cfg.max_samples]
    if not len(rows):
        raise ValueError(f"split {cfg.split!r} has no valid rows to evaluate")
    accs = {t.name: _Acc() for t in tasks}
    n_batches = -(-len(rows) // cfg.batch_size)
    bar = tqdm(
        total=n_batches * len(tasks), desc="evaluate", unit="batch", disable=not cfg.progress
    )
    for ti, task in enumerate(tasks):
        tok = tokenizers[task.target]
        for a in range(0, len(rows), cfg.batch_size):
            r = rows[a : a + cfg.batch_size]
            crops = reader.crops(r, cfg.crop)
            cond = reader.conditioning(model, task.inputs, r, cfg.crop, scales=cfg.scales)
            gen = generate(model, cond, [task.target], cfg.sampling, seed=cfg.seed + 1000 * ti + a)
            pred = decode_tokens(
                tok,
                task.target,
                gen.tokens[task.target].cpu(),
                gen.lengths.get(task.target),
                gen.probs.get(task.target),
            )
            true = reader.pixels(task.target, r, crops)
            acc = accs[task.name]
            _score(task, acc, "model", _cpu(pred), true, crops)
            _score(task, acc, "baseline", _baseline_prediction(task, base, true), true, crops)
            if reader.store is not None and task.target in reader.store.modalities:
                toks, lens = reader.tokens([task.target], r, cfg.crop)
                ceil = decode_tokens(tok, task.target, toks[task.target], lens.get(task.target))
                _score(task, acc, "ceiling", _cpu(ceil), true, crops)
            bar.update(1)
    bar.close()
    out_rows = []
    for task in tasks:
        acc = accs[task.name]
        m, b, c = (_finish(task, acc, w) for w in ("model", "baseline", "ceiling"))
        for key, label, better in METRICS[task.target]:
            mv, bv = m.get(key, float("nan")), b.get(key, float("nan"))
            beats = mv > bv if better == "higher" else mv < bv
            out_rows.append(
                {
                    "task": task.name,
                    "metric": label,
                    "key": key,
                    "better": better,
                    "model": mv,
                    "baseline": bv,
                    "baseline_name": BASELINE_NAMES[task.target],
                    "ceiling": c.get(key),
                    # a constant has no grid by construction: the grid rows' yardstick is
                    # the tokenizer ceiling, not the trivial baseline
                    "beats_baseline": None if key == "grid" else bool(beats),
                }
            )
    cfg_d = asdict(cfg)
    return EvalReport(
        out_rows,
        cfg.split,
        len(rows),
        base.n_samples,
        time.perf_counter() - t0,
        json.loads(json.dumps(cfg_d, default=str)),
        model.cfg.image_px,
    )


def _cpu(x: Any) -> Any:
    return x.cpu() if isinstance(x, torch.Tensor) else x


def run_evaluate_command(args: Any) -> int:
    """``terraloom-model evaluate`` (see ``model.cli``): prints the Markdown table."""
    from terraloom.model.checkpoint import checkpoint_data_paths, resolve_checkpoint
    from terraloom.model.data import local_root
    from terraloom.model.generate_command import command_locations, output_stage, publish_outputs
    from terraloom.storage.location import Location
    from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers

    # every location parsed first (URLs read through the local cache, --out staged)
    locs = command_locations(args, "checkpoint", "out", "tokens", "corpus", "tokenizers")
    out = locs["out"]
    assert out is not None and locs["checkpoint"] is not None  # required arguments
    opts = out.storage_options
    ckpt = resolve_checkpoint(locs["checkpoint"])
    model = TerraloomModel.from_pretrained(ckpt, map_location=args.device).eval()
    paths = checkpoint_data_paths(ckpt)
    tokens_loc = locs["tokens"] or (
        Location.parse(paths["tokens"], opts) if paths.get("tokens") else None
    )
    corpus_loc = locs["corpus"] or (
        Location.parse(paths["corpus"], opts) if paths.get("corpus") else None
    )
    if tokens_loc is None or corpus_loc is None:
        raise ValueError("--tokens and --corpus are needed (the checkpoint records none)")
    tok_root = locs["tokenizers"] or tokens_loc.parent / "tokenizers"
    tokenizers = load_tokenizers(tok_root, [t.target for t in DEFAULT_TASKS], args.device)
    tokens = str(local_root(tokens_loc, "tokens", opts))
    corpus = str(local_root(corpus_loc, "corpus", opts))
    sampling = SamplingConfig(
        steps=args.steps, schedule=args.schedule, order=args.order, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg,
        choice_temperature=0.0 if args.temperature == 0 else SamplingConfig.choice_temperature,
        decode=args.decode,
    )  # fmt: skip
    cfg = EvalConfig(
        split=args.split,
        batch_size=args.batch,
        max_samples=args.max_samples,
        scales=args.scales,
        sampling=sampling,
        seed=args.seed,
        progress=not args.no_progress,
    )
    report = evaluate_generation(model, tokenizers, corpus, tokens, cfg)
    stage = output_stage(out)
    j, m = report.write(stage)
    if not out.is_local:
        j, m = publish_outputs(stage, out, [str(j), str(m)])
    print(report.to_markdown())
    print(f"wrote {j} and {m}")
    return 0
