"""Reconstruction metrics and the simple baselines tokenizers are judged against.

All functions take (B, C, H, W) float tensors of *stored* values with a boolean mask of
valid elements and return one value per band, so reports read in physical units
(metres for DEM). PSNR and SSIM use a per-band data range given by the caller
(the range of the originals), the same for a tokenizer and its baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-band mean of (B, C, H, W) over valid elements -> (C,) float64."""
    m = mask.to(x.dtype)
    total = (x * m).sum(dim=(0, 2, 3), dtype=torch.float64)
    return total / m.sum(dim=(0, 2, 3), dtype=torch.float64).clamp_min(1.0)


def _diff(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred - target in float32, zero outside the mask so NaN nodata never leaks into sums."""
    d = pred.float() - target.float()
    return torch.where(mask, d, torch.zeros((), dtype=d.dtype, device=d.device))


def mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_mean(_diff(pred, target, mask).abs(), mask)


def mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_mean(_diff(pred, target, mask).square(), mask)


def psnr(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_range: torch.Tensor
) -> torch.Tensor:
    """Per-band PSNR in dB: 10 log10(range^2 / MSE)."""
    err = mse(pred, target, mask).clamp_min(1e-20)
    return 10.0 * torch.log10(data_range.double().square() / err)


def data_range(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-band max - min of the valid originals (1 where a band is constant or empty)."""
    t = target.float()
    hi = torch.where(mask, t, torch.full_like(t, -math.inf)).amax(dim=(0, 2, 3))
    lo = torch.where(mask, t, torch.full_like(t, math.inf)).amin(dim=(0, 2, 3))
    r = hi - lo
    return torch.where(torch.isfinite(r) & (r > 0), r, torch.ones_like(r))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _band_matrix(g: torch.Tensor, n: int) -> torch.Tensor:
    """(n - k + 1, n) matrix whose rows hold the window ``g`` at each valid offset."""
    k = g.numel()
    m = torch.zeros(n - k + 1, n, dtype=g.dtype, device=g.device)
    for i in range(n - k + 1):
        m[i, i : i + k] = g
    return m


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    data_range: torch.Tensor,
    window: int = 11,
    sigma: float = 1.5,
    chunk: int = 8,
) -> torch.Tensor:
    """Per-band SSIM (Wang et al. 2004, gaussian window, valid convolution).

    Nodata elements are filled with the band's valid mean in both images and the SSIM
    map is averaged over windows centred on valid elements. Images are scaled by the
    data range first, so float32 is exact enough; ``chunk`` images at a time bound the
    memory.
    """
    b, c, h, w = pred.shape
    r = data_range.float().view(1, -1, 1, 1)
    fill = (
        _masked_mean(torch.where(mask, target.float(), torch.zeros(())) / r, mask)
        .float()
        .view(1, -1, 1, 1)
    )
    # Separable "valid" gaussian blur as two banded matrix products: single-channel
    # convolutions are very slow on CPU, batched matmuls are not.
    g = _gaussian_window(window, sigma, pred.device)
    gh, gw = _band_matrix(g, h), _band_matrix(g, w)
    c1, c2 = 0.01**2, 0.03**2
    off = (window - 1) // 2
    total = torch.zeros(c, dtype=torch.float64)
    count = torch.zeros(c, dtype=torch.float64)
    for i in range(0, b, chunk):
        m = mask[i : i + chunk]
        t = torch.where(m, target[i : i + chunk].float() / r, fill)
        p = torch.where(m, pred[i : i + chunk].float() / r, fill)
        stack = torch.stack([p, t, p * p, t * t, p * t])
        mu_p, mu_t, e_pp, e_tt, e_pt = gh @ (stack @ gw.T)
        s_pp, s_tt, s_pt = e_pp - mu_p**2, e_tt - mu_t**2, e_pt - mu_p * mu_t
        smap = ((2 * mu_p * mu_t + c1) * (2 * s_pt + c2)) / (
            (mu_p**2 + mu_t**2 + c1) * (s_pp + s_tt + c2)
        )
        centre = m[:, :, off : off + smap.shape[2], off : off + smap.shape[3]].float()
        total += (smap * centre).sum(dim=(0, 2, 3), dtype=torch.float64).cpu()
        count += centre.sum(dim=(0, 2, 3), dtype=torch.float64).cpu()
    return total / count.clamp_min(1.0)


def patch_mean_baseline(x: torch.Tensor, mask: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """Each patch x patch block replaced by its per-band mean over valid elements."""
    m = mask.float()
    v = torch.where(mask, x.float(), torch.zeros((), device=x.device))
    s = F.avg_pool2d(v, patch)
    n = F.avg_pool2d(m, patch)
    mean = torch.where(n > 0, s / n.clamp_min(1e-12), torch.zeros_like(s))
    return F.interpolate(mean, scale_factor=patch, mode="nearest")


def patch_majority_baseline(
    index: torch.Tensor, n_classes: int, ignore: int = 255, patch: int = 16
) -> torch.Tensor:
    """(B, H, W) class indices -> each patch replaced by its most frequent valid class."""
    ok = index != ignore
    onehot = F.one_hot(torch.where(ok, index, 0), n_classes).permute(0, 3, 1, 2).float()
    counts = F.avg_pool2d(onehot * ok.unsqueeze(1), patch)
    major = counts.argmax(dim=1, keepdim=True).float()
    return F.interpolate(major, scale_factor=patch, mode="nearest")[:, 0].long()


def pixel_accuracy(pred: torch.Tensor, target: torch.Tensor, ignore: int = 255) -> float:
    ok = target != ignore
    return float((pred[ok] == target[ok]).double().mean()) if bool(ok.any()) else float("nan")


def mean_iou(pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore: int = 255) -> float:
    """Mean IoU over the classes present in the target or the prediction (valid pixels)."""
    ok = target != ignore
    p, t = pred[ok], target[ok]
    ious = []
    for k in range(n_classes):
        inter = int(((p == k) & (t == k)).sum())
        union = int(((p == k) | (t == k)).sum())
        if union:
            ious.append(inter / union)
    return float(sum(ious) / len(ious)) if ious else float("nan")


def codebook_usage(codes: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Fraction of codes used, perplexity exp(H) of the code histogram, counts."""
    flat = codes.reshape(-1).long()
    hist = torch.bincount(flat, minlength=vocab_size).double()
    n = float(hist.sum())
    prob = hist[hist > 0] / max(n, 1.0)
    entropy = float(-(prob * prob.log()).sum())
    used = int((hist > 0).sum())
    return {
        "used_fraction": used / vocab_size,
        "n_codes_used": float(used),
        "perplexity": math.exp(entropy),
        "perplexity_fraction": math.exp(entropy) / vocab_size,
        "n_tokens": n,
        "vocab_size": float(vocab_size),
    }
