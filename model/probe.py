"""Linear probe of frozen encoder embeddings: how much land cover the patch tokens carry.

The standard check of a pretrained representation (issue 21): a linear classifier on
frozen per-patch encoder embeddings predicts each patch's majority land-cover class. Its
score means little alone (a linear layer on random features of a random encoder already
separates water from trees), so it is always reported next to two references: the same
probe on the same architecture at random init (fixed seed), and the majority-class guess.
What pretraining added is the gap to the random-init probe.

Pure functions on arrays, no I/O: the demo (``terraloom.orchestration``) reads the
``embed`` job's per-patch Zarr and the corpus' LULC and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from terraloom.model.tim import IGNORE, confusion, iou_scores


@dataclass(frozen=True)
class ProbeConfig:
    """The probe's fit (full-batch softmax regression on standardised features)."""

    #: Full-batch Adam steps; the convex loss settles well before 300 on the demo's features.
    steps: int = 300
    lr: float = 0.05
    #: L2 penalty on the weights (features are standardised, so one value fits every model).
    weight_decay: float = 1e-4
    #: Seed of the random-init reference encoder (and of the fit, which starts at zero).
    seed: int = 0
    #: Samples per ``embed`` batch.
    batch: int = 16
    #: The pixel inputs each probe's encoder sees, one probe per set. Optical + radar: land
    #: cover is nearly linear in the optical bands, so the probe mostly measures the pixels;
    #: radar alone (speckle) is where an encoder has something to add.
    inputs: tuple[tuple[str, ...], ...] = (("S2L2A", "S1GRD"), ("S1GRD",))

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.weight_decay < 0 or self.batch < 1:
            raise ValueError("probe: steps and batch must be >= 1, lr > 0, weight_decay >= 0")
        if not self.inputs or not all(self.inputs):
            raise ValueError("probe.inputs: at least one non-empty set of pixel modalities")


def patch_majority(classes: np.ndarray, patch: int, n_classes: int) -> np.ndarray:
    """(B, H, W) class indices (``IGNORE`` = no label) -> (B, (H/p)*(W/p)) majority class of
    each patch's labelled pixels, positions row-major (the encoder's token order); a patch
    with no labelled pixel is ``IGNORE``. Ties go to the lower class index."""
    b, h, w = classes.shape
    if h % patch or w % patch:
        raise ValueError(f"label size {h}x{w} is not a multiple of the patch size {patch}")
    g_h, g_w = h // patch, w // patch
    tiles = classes.reshape(b, g_h, patch, g_w, patch).transpose(0, 1, 3, 2, 4)
    tiles = tiles.reshape(b, g_h * g_w, patch * patch)
    counts = np.stack([(tiles == k).sum(-1) for k in range(n_classes)], -1)
    out = counts.argmax(-1).astype(np.uint8)
    out[counts.sum(-1) == 0] = IGNORE
    return out


def pool_modalities(tokens: np.ndarray, n_modalities: int) -> np.ndarray:
    """(B, M*N, D) per-patch embeddings of M pixel modalities (the ``embed`` job's order:
    modality-major) -> (B, N, D), the mean over the modalities at each patch position."""
    b, n, d = tokens.shape
    if n % n_modalities:
        raise ValueError(f"{n} tokens are not {n_modalities} modalities of equal length")
    return tokens.reshape(b, n_modalities, n // n_modalities, d).astype(np.float32).mean(1)


def pixel_patch_means(patches: np.ndarray, n_channels: int) -> np.ndarray:
    """(B, N, C*p*p) normalised patches, (c ph pw) inside a patch (``embed.center_patches``)
    -> (B, N, C): each band's mean over the patch. The probe's no-encoder reference: what a
    linear layer reads from the pixels themselves."""
    b, n, _ = patches.shape
    return patches.reshape(b, n, n_channels, -1).astype(np.float32).mean(-1)


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: standardisation of the training features, then ``x @ weight + bias``."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray  # (D, K)
    bias: np.ndarray  # (K,)

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float32) - self.mean) / self.std
        return np.asarray((z @ self.weight + self.bias).argmax(-1), dtype=np.int64)


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: ProbeConfig) -> LinearProbe:
    """Softmax regression of labels ``y`` (N,) on features ``x`` (N, D); ``IGNORE`` rows skipped.

    Deterministic: zero init, full batch, fixed step count (no data order, no early stop)."""
    keep = y != IGNORE
    if not keep.any():
        raise ValueError("no labelled patch to fit the probe on")
    xs = np.asarray(x[keep], np.float32)
    mean = xs.mean(0)
    std = xs.std(0) + 1e-6
    z = torch.from_numpy((xs - mean) / std)
    t = torch.from_numpy(np.asarray(y[keep], np.int64))
    torch.manual_seed(cfg.seed)
    w = torch.zeros(z.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=cfg.lr)
    # One thread: each step is a few (N, D) x (D, K) products, too small to split; on a
    # shared 2-core machine two threads spent 5x longer waiting for each other (35 s vs 7 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(cfg.steps):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(z @ w + b, t) + cfg.weight_decay * (w * w).sum()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return LinearProbe(mean, std, w.detach().numpy().copy(), b.detach().numpy().copy())


def scores(pred: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, mIoU (over the classes present in ``y``) and per-class IoU of the labelled
    patches: the TiM study's convention (``model.tim.iou_scores``)."""
    conf = confusion(torch.as_tensor(pred), torch.as_tensor(y.astype(np.int64)), n_classes)
    return iou_scores(conf)


def majority_class(y: np.ndarray) -> int:
    """The most frequent label of ``y`` (``IGNORE`` aside): the guess without features."""
    labelled = y[y != IGNORE].astype(np.int64)
    if labelled.size == 0:
        raise ValueError("no labelled patch")
    return int(np.bincount(labelled).argmax())


def probe_study(
    features: dict[str, tuple[np.ndarray, np.ndarray]],
    train_y: np.ndarray,
    val_y: np.ndarray,
    n_classes: int,
    cfg: ProbeConfig,
) -> dict[str, Any]:
    """Fit one probe per feature set on train, score it on val, next to the majority class.

    ``features`` maps a name (``pretrained``, ``random_init``, ``pixel_means``) to its
    (train, val) features,
    rows aligned with ``train_y`` / ``val_y``. Returns ``{"probes": {name: scores},
    "majority": scores, "patches": {...}}``.
    """
    out: dict[str, Any] = {"probes": {}}
    for name, (train_x, val_x) in features.items():
        if len(train_x) != len(train_y) or len(val_x) != len(val_y):
            raise ValueError(f"{name}: features and labels differ in length")
        probe = fit_probe(train_x, train_y, n_classes, cfg)
        out["probes"][name] = scores(probe.predict(val_x), val_y, n_classes)
    major = majority_class(train_y)
    out["majority"] = {
        **scores(np.full(len(val_y), major), val_y, n_classes),
        "class": major,
    }
    out["patches"] = {
        "train": int((train_y != IGNORE).sum()),
        "val": int((val_y != IGNORE).sum()),
    }
    return out
