"""Convolutional encoder and decoder of the FSQ-VAE tokenizers.

The encoder reduces the resolution 16x (224 -> 14, one latent per 16 x 16 patch): a
pixel-unshuffle stem (4x by default) and stride-2 convolutions; the decoder mirrors it
with pixel-shuffle upsampling, so no convolution runs at full resolution and the
default model trains on a CPU. Both have a linear low-frequency path (patch means in,
smoothly interpolated latents out) so that "quantised patch level + smooth
interpolation" is the starting point and the convolutions learn the detail. Norms are
per pixel (no statistics over space), so a code depends only on its neighbourhood,
never on the crop size. The decoder sits behind the small :class:`Decoder` interface so
a diffusion or adversarial decoder can replace it without touching the encoder, the
quantiser or the checkpoint format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

N_DOWN = 4
"""Number of stride-2 stages: 2**4 = 16 = the patch size."""


class ChannelNorm(nn.Module):
    """LayerNorm over channels at each pixel.

    Unlike GroupNorm it uses no statistics over space, so a patch's code does not depend
    on the crop size or on the rest of the crop (training on small crops transfers to
    224 px) and a sample's overall level is not removed with a spatial mean.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).square().mean(dim=1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _norm(channels: int) -> nn.Module:
    return ChannelNorm(channels)


class ResBlock(nn.Module):
    """Pre-norm residual block: (norm, SiLU, conv3x3) x 2 plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@dataclass(frozen=True)
class ConvNetConfig:
    """Shape of the encoder/decoder pair.

    ``channel_mult[i]`` and ``blocks[i]`` describe the stage after the i-th
    downsampling (resolutions 1/2, 1/4, 1/8, 1/16 of the input); the last stage is the
    latent grid, where residual blocks are cheapest.
    """

    width: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    blocks: tuple[int, ...] = (0, 1, 1, 2)
    #: The first ``unshuffle`` halvings are pixel-(un)shuffles instead of convolutions
    #: (stages below it are skipped): much cheaper at high resolution.
    unshuffle: int = 2
    #: Low-frequency paths: the encoder adds a linear map of each patch's mean input to
    #: the latents; the decoder adds a linear map of the quantised latents upsampled
    #: with this ``F.interpolate`` mode to its output ("none": neither).
    skip: str = "bicubic"
    #: The linear paths the linear start (``linear_init``) needs: the encoder's is a
    #: linear map of the whole 16 x 16 patch (a stride-16 convolution) instead of its
    #: mean, and the decoder's reads the quantised latents through the inverse of the
    #: FSQ bound (``FSQ.unbound``). False is the format of tokenizers trained before.
    linear_paths: bool = False

    def __post_init__(self) -> None:
        if len(self.channel_mult) != N_DOWN or len(self.blocks) != N_DOWN:
            raise ValueError(f"channel_mult and blocks need {N_DOWN} entries (one per stage)")
        if self.width < 1 or min(self.channel_mult) < 1 or min(self.blocks) < 0:
            raise ValueError("width and channel_mult must be >= 1 and blocks >= 0")
        if not 0 <= self.unshuffle < N_DOWN:
            raise ValueError(f"unshuffle must be in 0..{N_DOWN - 1}")
        if self.skip not in ("none", "nearest", "bilinear", "bicubic"):
            raise ValueError(f"skip must be none, nearest, bilinear or bicubic, got {self.skip!r}")
        if self.linear_paths and self.skip == "none":
            raise ValueError("linear_paths needs a low-frequency path (skip != 'none')")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.width * m for m in self.channel_mult)


class Encoder(nn.Module):
    """(B, C_in, H, W) model-space input -> (B, d, H/16, W/16) continuous latents.

    With ``net.skip`` set, a linear map of each patch's mean input (of the whole patch
    with ``net.linear_paths``) is added to the latents: the per-pixel norm before the
    read-out keeps the latent scale bounded but divides out feature magnitudes, so
    without this path an absolute level (DEM elevation, S2 brightness) could only be
    encoded through a nonlinear detour.
    """

    def __init__(self, in_channels: int, latent_dim: int, net: ConvNetConfig) -> None:
        super().__init__()
        self.patch = 2**N_DOWN
        self.skip_patch = net.linear_paths
        self.skip: nn.Conv2d | None = None
        if net.skip != "none":
            kernel = self.patch if net.linear_paths else 1
            self.skip = nn.Conv2d(in_channels, latent_dim, kernel, stride=kernel)
        k = net.unshuffle
        layers: list[nn.Module] = [nn.PixelUnshuffle(2**k)] if k else []
        prev = in_channels * 4**k
        for width, n_blocks in list(zip(net.widths, net.blocks))[k:]:
            layers.append(nn.Conv2d(prev, width, 3, stride=2, padding=1))
            layers += [ResBlock(width) for _ in range(n_blocks)]
            prev = width
        layers += [_norm(prev), nn.SiLU(), nn.Conv2d(prev, latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        if self.skip is not None:
            if self.skip_patch:
                # a sum over the patch's pixels, scaled like a mean so that one optimizer
                # step moves z as much as it does through the 1x1 map of the patch means
                # (unscaled, Adam's per-weight steps add up coherently over 256 pixels)
                z = z + self.skip(x) / self.patch**2
            else:
                z = z + self.skip(F.avg_pool2d(x, self.patch))
        return z


class Decoder(nn.Module):
    """Interface: quantised latents (B, d, h, w) -> outputs (B, C_out, 16h, 16w).

    Outputs live in model space (normalised values or class logits); the tokenizer
    wrapper maps them back to stored values. Subclasses implement ``forward``.
    """

    def decode(self, z_q: torch.Tensor, low_in: torch.Tensor | None = None) -> torch.Tensor:
        """``low_in``: what the low-frequency path reads instead of ``z_q`` (the unbound
        latents, see ``ConvNetConfig.linear_paths``); decoders without one ignore it."""
        return self(z_q, low_in)


def _upsample(c_in: int, c_out: int, factor: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out * factor**2, 3, padding=1), nn.PixelShuffle(factor))


class ConvDecoder(Decoder):
    """Mirror of :class:`Encoder` with conv + pixel-shuffle upsampling.

    With ``net.skip`` set, a 1x1 projection of the quantised latents is interpolated to
    full resolution and added to the output: the codes then carry each patch's level
    directly and the smooth interpolation between patches comes for free (bicubic
    upsampling of exact patch means alone beats the patch-mean baseline by ~3x on smooth
    terrain), so the convolutional path only has to learn the detail.
    """

    def __init__(self, latent_dim: int, out_channels: int, net: ConvNetConfig) -> None:
        super().__init__()
        self.skip_mode = net.skip
        self.factor = 2**N_DOWN
        self.skip = nn.Conv2d(latent_dim, out_channels, 1) if net.skip != "none" else None
        widths, blocks, k = net.widths, net.blocks, net.unshuffle
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, widths[-1], 3, padding=1)]
        layers += [ResBlock(widths[-1]) for _ in range(blocks[-1])]
        for i in range(N_DOWN - 1, k, -1):
            layers.append(_upsample(widths[i], widths[i - 1]))
            layers += [ResBlock(widths[i - 1]) for _ in range(blocks[i - 1])]
        layers += [_norm(widths[k]), nn.SiLU(), _upsample(widths[k], out_channels, 2 ** (k + 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, z_q: torch.Tensor, low_in: torch.Tensor | None = None) -> torch.Tensor:
        out = self.net(z_q)
        if self.skip is not None:
            low = self.skip(z_q if low_in is None else low_in)
            if self.skip_mode == "nearest":
                low = F.interpolate(low, scale_factor=self.factor, mode="nearest")
            else:
                low = F.interpolate(
                    low, scale_factor=self.factor, mode=self.skip_mode, align_corners=False
                )
            out = out + low
        return out


#: Decoder implementations by name (the name is stored in the tokenizer config).
DECODERS: dict[str, Callable[[int, int, ConvNetConfig], Decoder]] = {"conv": ConvDecoder}


def build_decoder(name: str, latent_dim: int, out_channels: int, net: ConvNetConfig) -> Decoder:
    try:
        factory = DECODERS[name]
    except KeyError:
        raise ValueError(f"unknown decoder {name!r}; known: {sorted(DECODERS)}") from None
    return factory(latent_dim, out_channels, net)
