"""A tokenizer training run's configuration: :class:`TrainConfig` (hyper-parameters, the
network and the tokenizer it trains, recorded in ``config.json``) and the schedules it defines
(learning rate, EMA decay). The CLI's flags and ``--config`` / ``--set`` build it; the
training loop in :mod:`.train` only reads it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from terraloom.schemas.modalities import CAPTION_VOCAB, CROP_PX, TokenizerKind, get_modality
from terraloom.tokenize_jobs.corpus_reader import DEFAULT_CACHE_BYTES
from terraloom.tokenize_jobs.tokenizers.caption import DEFAULT_SENTINELS
from terraloom.tokenize_jobs.tokenizers.compand import DEFAULT_KNOTS
from terraloom.tokenize_jobs.tokenizers.image import (
    FSQVAEConfig,
)
from terraloom.tokenize_jobs.tokenizers.linear_init import (
    DEFAULT_COMPAND_ALPHA,
    DEFAULT_COMPAND_UNIFORM,
)
from terraloom.tokenize_jobs.tokenizers.nets import ConvNetConfig

#: Default weight of the codebook-usage regulariser per modality (others: 0.1). S2L2A:
#: 0.02. Its three spectral components fill few of the 15,360 cells jointly; without the
#: compander pushing the codes apart cost 2.5 dB at 0.02 (below the patch-mean
#: baseline), with it 0.15 dB for 29 % of the codes instead of 16 % (demo world).
DEFAULT_ENTROPY_WEIGHT: dict[str, float] = {"S2L2A": 0.02}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a tokenizer training run (recorded in ``config.json``)."""

    modality: str
    steps: int = 2000
    batch: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    crop_px: int = CROP_PX
    flips: bool = True
    #: Encoder/decoder shape (see ``ConvNetConfig``): by default a 4x pixel-unshuffle
    #: stem, then stride-2 stages at 1/8 and 1/16 with 4 * width channels.
    width: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    blocks: tuple[int, ...] = (0, 1, 1, 2)
    unshuffle: int = 2
    skip: str = "bicubic"
    #: Whole-patch encoder path and unbound decoder read-out (``ConvNetConfig``;
    #: needed by ``linear_init``; never for class maps).
    linear_paths: bool = True
    decoder: str = "conv"
    #: FSQ channel grouping (None: the modality default, see ``DEFAULT_FSQ_GROUPS``).
    fsq_groups: tuple[int, ...] | None = None
    #: Weight of the FSQ codebook-usage (entropy) regulariser; 0 disables it.
    entropy_weight: float | None = None
    entropy_temperature: float = 0.5
    #: Entropy of the joint codes (True) or of each channel's levels (False).
    entropy_joint: bool = True
    #: Per-band weights of the reconstruction loss (None = equal, or balanced when
    #: ``balance_bands``).
    band_weights: tuple[float, ...] | None = None
    #: Continuous multi-band modalities: weight each band by 1 / its within-patch
    #: variance (see ``linear_init.band_balance_weights``) unless ``band_weights`` is set.
    balance_bands: bool = True
    #: Continuous modalities: start from the linear tokenizer fitted on
    #: ``init_crops`` crops of up to as many distinct rows (see
    #: ``tokenize_jobs.tokenizers.linear_init``). The fit needs the corpus' whole range:
    #: on the demo world 64 crops started S2L2A 3 dB below 256 crops.
    linear_init: bool = True
    init_crops: int = 256
    #: Latent value of each fitted component's 99.9 % quantile (``linear_init``): lower
    #: is finer (more uniform) quantisation of the bulk, higher uses more of the levels.
    #: None: the modality's default (``linear_init.default_spread``).
    init_spread: float | None = None
    #: Compander in front of the quantiser, fitted by the linear start (knots; 0: none)
    #: and its shape (``compand.target_cdf``: ``alpha`` 1 equalises the levels' use,
    #: 1/3 minimises rounding error; ``uniform`` keeps levels on the tails).
    compand_knots: int = DEFAULT_KNOTS
    compand_alpha: float = DEFAULT_COMPAND_ALPHA
    compand_uniform: float = DEFAULT_COMPAND_UNIFORM
    seed: int = 0
    ckpt_every: int = 500
    #: "auto" = cuda (LOCAL_RANK) when available, else cpu.
    device: str = "auto"
    #: bf16 autocast on CUDA (ignored on CPU).
    amp: bool = True
    train_split: str = "train"
    eval_split: str = "val"
    eval_samples: int = 32
    eval_crops: int = 4
    eval_batch: int = 8
    #: CAPTION only: vocabulary capacity and number of sentinel tokens.
    vocab_size: int = CAPTION_VOCAB
    n_sentinels: int = DEFAULT_SENTINELS
    progress: bool = True
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", get_modality(self.modality).name)
        if self.steps < 1 or self.batch < 1 or self.ckpt_every < 1:
            raise ValueError("steps, batch and ckpt_every must be >= 1")
        if self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("lr must be > 0 and ema_decay in [0, 1)")
        if self.crop_px % 16:
            raise ValueError(f"crop_px {self.crop_px} must be a multiple of 16")
        if self.init_crops < 1 or (self.init_spread is not None and self.init_spread <= 0):
            raise ValueError("init_crops must be >= 1 and init_spread > 0")
        if self.entropy_weight is not None and self.entropy_weight < 0:
            raise ValueError("entropy_weight must be >= 0")
        if self.compand_knots == 1 or self.compand_knots < 0:
            raise ValueError("compand_knots must be 0 (no compander) or >= 2")
        if not (0 <= self.compand_alpha <= 1 and 0 <= self.compand_uniform <= 1):
            raise ValueError("compand_alpha and compand_uniform must lie in [0, 1]")

    #: Fields that do not change the training trajectory (may differ on resume).
    _NON_SCHEDULE = (
        "device",
        "progress",
        "ckpt_every",
        "eval_split",
        "eval_samples",
        "eval_crops",
        "eval_batch",
        "cache_bytes",
        "amp",
    )

    def schedule_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in self._NON_SCHEDULE:
            d.pop(k, None)
        return json.loads(json.dumps(d))

    def resolved_entropy_weight(self) -> float:
        """``entropy_weight``, or the modality's default when it is None."""
        if self.entropy_weight is not None:
            return self.entropy_weight
        return DEFAULT_ENTROPY_WEIGHT.get(self.modality, 0.1)

    def net(self) -> ConvNetConfig:
        return ConvNetConfig(
            self.width,
            tuple(self.channel_mult),
            tuple(self.blocks),
            self.unshuffle,
            self.skip,
            # class maps have no linear start; their logits read the codes as they are
            self.linear_paths
            and self.skip != "none"
            and get_modality(self.modality).tokenizer is not TokenizerKind.FSQ_VAE_CLASSES,
        )

    def model_config(self) -> FSQVAEConfig:
        """The tokenizer this run trains (before its linear start is fitted)."""
        net = self.net()
        return FSQVAEConfig.for_modality(
            self.modality,
            net,
            self.decoder,
            self.fsq_groups,
            # the compander is fitted by the linear start, so it comes only with one
            compand_knots=self.compand_knots if self.linear_init and net.linear_paths else 0,
        )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at the last step."""
    warm = min(config.warmup_steps, max(config.steps - 1, 0))
    if step < warm:
        return (step + 1) / warm
    span = max(config.steps - warm, 1)
    progress = min((step - warm) / span, 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * progress)
    )


def ema_decay(step: int, config: TrainConfig) -> float:
    """EMA decay with a warm start, so short runs are not dominated by the init."""
    return min(config.ema_decay, (1 + step) / (10 + step))
