"""Data-driven start for continuous FSQ-VAE tokenizers: begin as the best *linear*
tokenizer, then let training learn what a linear one cannot.

Why: the patch-mean baseline (every 16 x 16 patch replaced by its per-band mean) is hard
to beat with 14 bits per patch. A randomly initialised encoder/decoder spends most of a
short budget rediscovering "code = quantised patch level, decoder = smooth
interpolation" and lands far from it in precision (a DEM tokenizer 10x worse than the
baseline in metres). With ``net.linear_paths`` both nets have a linear low-frequency
path (encoder: a stride-16 linear map of each patch added to the latents; decoder: a 1x1
map of the unbound latents, bicubically upsampled). :func:`linear_init` fits those two
maps on a sample of training crops and zeroes the last layer of both convolutional
paths, so step 0 *is* the linear tokenizer:

* encoder: principal components of the (band-weighted) patch means, the strongest on
  the channel with the most levels, scaled so each one's 99.9 % magnitude quantile maps
  to ``spread`` in latent units (``tanh(1.0)`` = 76 % of the levels). Channels left over
  when a modality has fewer bands than channels (one-band DEM and NDVI) get the main
  component of what varies inside the patches (the DEM's slope), so every channel
  carries information and its levels are used from step 0;
* compander (models with ``compand_knots``): a monotone map per scalar fitted to the
  components' distribution so the levels sit where the patches are (see
  :mod:`tokenize_jobs.tokenizers.compand`), the component rescaled so the map's median
  slope is 1;
* decoder: least squares from the unbound quantised latents (``FSQ.unbound``, through the
  compander's inverse) back to the patch means, so quantisation is the only loss.

:func:`band_balance_weights` weights each band by the inverse of its within-patch
variance. The bench scores a tokenizer by the mean of per-band PSNRs, i.e. by the sum of
``log(MSE_b)``; an unweighted loss in normalised units would instead chase the bands
with the largest residual and leave the smooth ones (whose PSNR is easiest to gain or
lose) coarse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from terraloom.tokenize_jobs.tokenizers.compand import fit_knots
from terraloom.tokenize_jobs.tokenizers.image import FSQVAE
from terraloom.tokenize_jobs.tokenizers.nets import ConvDecoder

# The figures behind these defaults: docs/bench.md, "Measured choices behind defaults".
#: Latent value of each component's 99.9 % magnitude quantile after initialisation:
#: lower quantises the bulk more finely, higher spends more of the levels.
DEFAULT_SPREAD = 1.0
#: Per-modality spreads. DEM's one 15,360-level elevation scalar is a regression value
#: whose steps are far below its error either way: a wide spread puts the finest steps
#: on the bulk of the elevations and uses more codes at the same error.
MODALITY_SPREAD: dict[str, float] = {"DEM": 3.0}
#: Compander shape (see ``compand.target_cdf``) for models that have one: quality hardly
#: moves with the shape while the codes used grow, so the levels are equalised; the
#: uniform floor keeps some resolution in the tails.
DEFAULT_COMPAND_ALPHA = 1.0
DEFAULT_COMPAND_UNIFORM = 0.1


def default_spread(modality: str) -> float:
    return MODALITY_SPREAD.get(modality, DEFAULT_SPREAD)


#: Quantile of a level component's magnitude that maps to ``spread``.
_Q = 0.999
#: The same for shape components: heavy-tailed (most patches are nearly flat), so a
#: lower quantile spreads the bulk of the patches over the channel's few levels.
_Q_SHAPE = 0.9


def _patches(x: torch.Tensor, mask: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> patches as the encoder's linear path sees them, (N, C * patch**2)
    float64 in the (C, row, col) order of a stride-``patch`` convolution's weight, nodata
    as 0 (the zero-filled input), and the patches without any nodata (used for the fits)."""
    b, c, h, w = x.shape
    filled = torch.where(mask, x, torch.zeros_like(x)).double()
    p = filled.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    full = F.avg_pool2d(mask.double(), patch).amin(dim=1) >= 1.0
    return p.reshape(-1, c * patch * patch), full.reshape(-1)


def band_balance_weights(x: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """(C,) float32 loss weights, mean 1, proportional to 1 / within-patch variance.

    ``x`` are model-space inputs (normalised values), ``mask`` their valid elements.
    Bands with no valid residual (or a constant one) get weight 1 before normalising;
    the ratio between bands is clipped to 100 so no band is ignored.
    """
    xd, m = x.double(), mask.double()
    count = F.avg_pool2d(m, patch).clamp_min(1e-12)
    means = F.avg_pool2d(xd * m, patch) / count
    resid = (xd - F.interpolate(means, scale_factor=patch, mode="nearest")) * m
    var = resid.square().sum(dim=(0, 2, 3)) / m.sum(dim=(0, 2, 3)).clamp_min(1.0)
    ok = var > 0
    w = torch.where(ok, 1.0 / var.clamp_min(1e-12), torch.ones_like(var))
    if bool(ok.any()):
        w = w.clamp(max=float(w[ok].min()) * 100.0)
    return (w / w.mean()).float()


@torch.no_grad()
def linear_init(
    model: FSQVAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    band_weights: torch.Tensor | None = None,
    spread: float = DEFAULT_SPREAD,
    compand_alpha: float = DEFAULT_COMPAND_ALPHA,
    compand_uniform: float = DEFAULT_COMPAND_UNIFORM,
) -> dict[str, float]:
    """Turn ``model`` into the linear tokenizer fitted on model-space inputs ``x``.

    Needs a continuous modality and the linear paths (``net.skip``, ``net.linear_paths``).
    A model with a compander gets it fitted to the components (``compand_alpha``,
    ``compand_uniform``: see :func:`compand.target_cdf`). Returns a summary: the share of the patch means' variance the level components keep
    and the RMSE of the decoded patch means in model units.
    """
    cfg = model.config
    decoder = model.decoder
    if cfg.is_classes:
        raise ValueError("linear_init is for continuous modalities, not class maps")
    if model.encoder.skip is None or not isinstance(decoder, ConvDecoder) or decoder.skip is None:
        raise ValueError("linear_init needs the linear paths of the conv nets (net.skip)")
    if not cfg.net.linear_paths:
        raise ValueError("linear_init needs net.linear_paths (whole-patch and unbound paths)")
    patch = cfg.patch_size
    vec, full = _patches(x, mask, patch)
    fit = vec[full] if int(full.sum()) >= 16 else vec
    n_bands, n_lat = x.shape[1], len(cfg.quant_levels)
    w = (
        torch.ones(n_bands, dtype=torch.float64)
        if band_weights is None
        else band_weights.double().cpu()
    )
    area = patch * patch
    sw = w.sqrt()
    means = fit.view(len(fit), n_bands, area).mean(dim=2)
    # Components in patch space: first those of the patch means (the levels), then, for
    # channels left over when there are fewer bands than channels, those of what is left
    # inside the patches (a one-band DEM: its slopes).
    directions, quantiles = [], []
    _, s_mean, vh = torch.linalg.svd((means - means.mean(dim=0)) * sw, full_matrices=False)
    for j in range(min(n_lat, len(s_mean))):
        directions.append((vh[j] * sw).repeat_interleave(area) / area)
        quantiles.append(_Q)
    if n_lat > len(directions):
        resid = fit - means.repeat_interleave(area, dim=1)
        swp = sw.repeat_interleave(area)
        _, _, vr = torch.linalg.svd((resid - resid.mean(dim=0)) * swp, full_matrices=False)
        for j in range(min(n_lat - len(directions), vr.shape[0])):
            directions.append(vr[j] * swp)
            quantiles.append(_Q_SHAPE)
    mu = fit.mean(dim=0)
    # channels by number of levels, most first (stable: ties keep channel order)
    order = sorted(range(n_lat), key=lambda c: -cfg.quant_levels[c])
    w_enc = torch.zeros(n_lat, vec.shape[1], dtype=torch.float64)
    b_enc = torch.zeros(n_lat, dtype=torch.float64)
    fitted: list[int] = []
    for j, (direction, q) in enumerate(zip(directions, quantiles)):
        comp = (fit - mu) @ direction
        half_range = float(torch.quantile(comp.abs(), q))
        if half_range <= 1e-12:
            continue
        scale = spread / half_range
        w_enc[order[j]] = direction * scale
        b_enc[order[j]] = -(mu @ direction) * scale
        fitted.append(order[j])
    z64 = fit @ w_enc.T + b_enc  # the step-0 latents of the fit patches
    compander = model.compander
    if compander is not None:
        for c in fitted:
            knots_x, knots_y, gain = fit_knots(
                z64[:, c],
                cfg.quant_levels[c],
                float(model.fsq.shift[c]),
                compander.x_knots.shape[1],
                compand_alpha,
                compand_uniform,
            )
            w_enc[c] *= gain
            b_enc[c] *= gain
            z64[:, c] *= gain
            compander.set_channel(c, knots_x, knots_y)
    enc_skip, dec_skip = model.encoder.skip, decoder.skip
    assert enc_skip is not None and enc_skip.bias is not None
    assert dec_skip.bias is not None
    # the encoder divides its patch sum by the patch area (see ``Encoder.forward``)
    enc_skip.weight.copy_((w_enc * area).view(n_lat, n_bands, patch, patch).to(enc_skip.weight))
    enc_skip.bias.copy_((b_enc * area).to(enc_skip.bias))
    # The encoder's conv path is silenced only on the fitted channels; any other keeps
    # its random start, so its codes differ between patches from step 0 and training can
    # shape them (a silenced, constant channel gets near-identical gradients everywhere
    # and stays unused).
    _zero_last_conv(model.encoder.net, fitted)
    _zero_last_conv(decoder.net)

    z = z64.float().to(enc_skip.weight.device)
    if compander is not None:
        z = compander(z)

    # decoder: least squares from the unbound quantised latents back to the patch means
    z_q = model.fsq.quantize(z)
    lat = model.fsq.unbound(z_q)
    if compander is not None:
        lat = compander.inverse(lat)
    lat = lat.double().cpu()
    design = torch.cat([lat, torch.ones(len(lat), 1, dtype=torch.float64)], dim=1)
    ridge = 1e-9 * torch.eye(design.shape[1], dtype=torch.float64)
    coef = torch.linalg.solve(design.T @ design + ridge, design.T @ means)
    dec_skip.weight.copy_(coef[:n_lat].T.reshape(n_bands, n_lat, 1, 1).to(dec_skip.weight))
    dec_skip.bias.copy_(coef[n_lat].to(dec_skip.bias))
    rmse = float((design @ coef - means).square().mean().sqrt())
    kept = float(s_mean[:n_lat].square().sum() / s_mean.square().sum().clamp_min(1e-30))
    return {"variance_kept": kept, "patch_mean_rmse": rmse, "n_patches": float(len(fit))}


def _zero_last_conv(net: nn.Module, channels: list[int] | None = None) -> None:
    """Zero the last convolution of a path (only its output ``channels`` if given) so it
    adds nothing there until training moves it."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("no convolution to zero")
    rows = slice(None) if channels is None else channels
    convs[-1].weight[rows] = 0.0
    if convs[-1].bias is not None:
        convs[-1].bias[rows] = 0.0
