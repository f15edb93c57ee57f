"""Typed, frozen configs of the model, the masking, the data and a training run.

Sizes follow TerraMind v1 (terratorch's ``terramind_register``): tiny/small use GELU MLPs
with biases, base/large use SwiGLU MLPs without biases. Configs load from YAML and take
``key.sub=value`` overrides from the CLI, so a run is fully described by one file.

Also here: the *modality specs* derived from a config (which inputs the encoder sees, which
targets the decoder predicts, their vocabularies and position counts), shared by the masking,
the loader and the model so the three never disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from terraloom.schemas.config import (
    apply_overrides,
    dump_config,
    from_dict,
    parse_override,
    read_config_file,
)
from terraloom.schemas.config import to_dict as to_dict  # re-exported: checkpoints, CLI
from terraloom.schemas.layouts import CAPTION_MAX_TOKENS, n_image_tokens
from terraloom.schemas.modalities import CROP_PX, PATCH_PX, Layout, get_modality, modalities

PIXEL_SUFFIX = "@px"
TOKEN_SUFFIX = "@tok"
#: Every registry modality at each scale, in registry order: the default model sees them all.
PIXEL_MODALITIES: tuple[str, ...] = tuple(m.name for m in modalities(pixels=True))
TOKEN_MODALITIES: tuple[str, ...] = tuple(m.name for m in modalities(tokens=True))


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the dual-scale encoder-decoder and which modalities it sees."""

    #: ``{size: base, ...}`` in a config starts from that TerraMind v1 preset.
    PRESET_KEY: ClassVar[str] = "size"

    dim: int = 192
    enc_depth: int = 12
    dec_depth: int = 4
    heads: int = 3
    #: "gelu" (fc1 -> GELU -> fc2) or "swiglu" (gated, SiLU).
    mlp: str = "gelu"
    #: MLP hidden width; 0 means 4 * dim.
    mlp_hidden: int = 0
    bias: bool = True
    norm_eps: float = 1e-6
    patch_px: int = PATCH_PX
    image_px: int = CROP_PX
    #: Pixel-scale inputs (normalised pixels through per-modality linear patch embeddings).
    pixel_inputs: tuple[str, ...] = PIXEL_MODALITIES
    #: Token-scale inputs (tokenizer codes through per-modality embedding tables).
    token_inputs: tuple[str, ...] = TOKEN_MODALITIES
    #: Token modalities the decoder predicts.
    targets: tuple[str, ...] = TOKEN_MODALITIES
    #: Decoder self-attention backend: "auto" (FlexAttention block mask when compiled on
    #: CUDA, else an SDPA boolean mask), "flex" or "dense".
    dec_attn: str = "auto"
    init_std: float = 0.02
    #: Bias of the encoder -> decoder context projection; None follows ``bias``. TerraMind
    #: always has one (``decoder_proj_context``), so its imported base/large set True.
    context_bias: bool | None = None
    #: LayerNorm bias; None follows ``bias``. TerraMind v1's norms have none at every size.
    norm_bias: bool | None = None
    #: One modality embedding per token modality for encoder inputs and decoder queries,
    #: as TerraMind shares them; keeps a trained model exactly exportable to terratorch.
    tie_modality_emb: bool = False

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.dec_attn not in ("auto", "flex", "dense"):
            raise ValueError(f"dec_attn must be auto, flex or dense, got {self.dec_attn!r}")
        if self.image_px % self.patch_px:
            raise ValueError("image_px must be a multiple of patch_px")
        for name in self.pixel_inputs:
            if not get_modality(name).has_pixels:
                raise ValueError(
                    f"{name} has no pixel scale; pixel_inputs must be pixel modalities"
                )
        for name in (*self.token_inputs, *self.targets):
            if not get_modality(name).has_tokens:
                raise ValueError(
                    f"{name} has no token scale; token inputs and targets must be tokenized"
                )
        if not self.targets:
            raise ValueError("the model needs at least one target modality")
        if not (self.pixel_inputs or self.token_inputs):
            raise ValueError("the model needs at least one input modality")

    @classmethod
    def from_preset(cls, name: str) -> ModelConfig:
        return model_preset(name)

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.dim

    @property
    def n_positions(self) -> int:
        return n_image_tokens(self.image_px, self.patch_px)


#: TerraMind v1 shapes. base/large: SwiGLU with hidden int(2/3 * 4 * dim), no biases.
MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(dim=192, enc_depth=12, dec_depth=4, heads=3, mlp="gelu", bias=True),
    "small": ModelConfig(dim=384, enc_depth=12, dec_depth=6, heads=6, mlp="gelu", bias=True),
    "base": ModelConfig(
        dim=768, enc_depth=12, dec_depth=12, heads=12, mlp="swiglu", mlp_hidden=2048, bias=False
    ),
    "large": ModelConfig(
        dim=1024, enc_depth=24, dec_depth=24, heads=16, mlp="swiglu", mlp_hidden=2730, bias=False
    ),
}


def model_preset(size: str, **overrides: Any) -> ModelConfig:
    """A TerraMind v1 size with optional field overrides."""
    try:
        base = MODEL_PRESETS[size]
    except KeyError:
        raise ValueError(
            f"unknown model size {size!r}; valid: {', '.join(MODEL_PRESETS)}"
        ) from None
    return replace(base, **overrides)


# --------------------------------------------------------------------------- masking


@dataclass(frozen=True)
class AlphaMixture:
    """One Dirichlet component of the 4M masking mixture.

    ``input_only`` / ``target_only`` restrict the component to some modalities (alpha 0
    elsewhere); input keys may be a registry name (both scales) or ``NAME@px`` / ``NAME@tok``.
    """

    name: str = "all_to_all"
    weight: float = 1.0
    input_alpha: float = 0.5
    target_alpha: float = 0.5
    input_only: tuple[str, ...] = ()
    target_only: tuple[str, ...] = ()


@dataclass(frozen=True)
class MaskingConfig:
    """Fixed per-sample token budgets (static shapes) and the Dirichlet mixture."""

    input_budget: int = 256
    target_budget: int = 256
    mixtures: tuple[AlphaMixture, ...] = (
        AlphaMixture("all_to_all", 1.0, 0.5, 0.5),
        AlphaMixture("s2l2a_to_all", 1.0, 1.0, 0.5, input_only=("S2L2A",)),
    )

    def __post_init__(self) -> None:
        if self.input_budget < 1 or self.target_budget < 1:
            raise ValueError("input_budget and target_budget must be >= 1")
        if not self.mixtures:
            raise ValueError("masking needs at least one alpha mixture")
        if any(m.weight < 0 for m in self.mixtures) or sum(m.weight for m in self.mixtures) <= 0:
            raise ValueError("mixture weights must be >= 0 with a positive sum")


# --------------------------------------------------------------------------- data / optim / run


@dataclass(frozen=True)
class DataConfig:
    """Where the token store and the corpus live and how the loader runs."""

    #: Token store root (holds ``<split>.zarr``).
    tokens: str = ""
    #: Corpus root (holds ``<split>.zarr``); needed when the model has pixel inputs.
    corpus: str = ""
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 2
    prefetch_factor: int = 4
    #: Pin host memory (only takes effect on CUDA).
    pin_memory: bool = True
    #: Pixel patches travel to the device in this dtype ("float16" halves the traffic).
    pixel_dtype: str = "float16"
    #: Sample order (``model.data.MaskedBatches``): ``random`` (per sample, the same global
    #: batches at any world size), ``block`` (chunk shuffle + shuffle windows: a chunk read
    #: serves many samples) or ``auto`` (random for a store held in RAM, else block).
    order: str = "auto"
    #: Samples per shuffle window of the block order (rounded up to whole local batches).
    shuffle_buffer: int = 4096

    def __post_init__(self) -> None:
        if self.order not in ORDER_KINDS:
            raise ValueError(
                f"data.order must be one of {', '.join(ORDER_KINDS)}, got {self.order!r}"
            )
        if self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {self.shuffle_buffer}")


#: the sample orders of the loader (``DataConfig.order``, ``MaskedBatches(order=...)``)
ORDER_KINDS: tuple[str, ...] = ("auto", "random", "block")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    clip_grad: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """One training run: model, masking, data, optimiser and run controls."""

    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out_dir: str = "runs/terraloom"
    seed: int = 0
    steps: int = 1000
    #: Global batch size (split evenly across data-parallel ranks).
    batch_size: int = 64
    #: "auto" (cuda if available), "cpu", "cuda".
    device: str = "auto"
    #: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32".
    precision: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    #: "auto" (DDP under torchrun, FSDP for large), "ddp", "fsdp", "none".
    parallel: str = "auto"
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 8
    ckpt_every: int = 500
    keep_ckpts: int = 3
    csv_log: bool = True
    tensorboard: bool = False
    #: Peak FLOP/s for MFU; 0 measures a dense matmul peak at start-up.
    peak_tflops: float = 0.0
    #: Run torch deterministic algorithms (exact resume on CPU; slower on GPU).
    deterministic: bool = False
    #: Start from these weights (a directory with ``model.safetensors`` + ``config.json``, or
    #: a run directory: its latest checkpoint), e.g. an imported TerraMind v1; ignored when
    #: the run resumes from its own checkpoint.
    init_from: str = ""
    #: Ordinal targets (``model.ordinal``): the codes of fine FSQ scalars (DEM's elevation,
    #: S1's and NDVI's levels) are trained against a Gaussian over neighbouring levels of
    #: this width, as a fraction of the scalar's level count; 0 = plain cross-entropy.
    ordinal_sigma: float = 0.05

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.parallel not in ("auto", "ddp", "fsdp", "none"):
            raise ValueError(f"parallel must be auto, ddp, fsdp or none, got {self.parallel!r}")
        if self.batch_size < 1 or self.steps < 0:
            raise ValueError("batch_size must be >= 1 and steps >= 0")
        if not 0 <= self.ordinal_sigma < 1:
            raise ValueError(f"ordinal_sigma must be in [0, 1), got {self.ordinal_sigma}")


# --------------------------------------------------------------------------- (de)serialisation
# The generic machinery (from_dict, to_dict, overrides, YAML files) is shared by every stage
# and lives in schemas.config; the model adds only its ``model.size`` preset rule.


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """A ``TrainConfig`` from a YAML (or JSON) file plus ``key.sub=value`` overrides.

    ``model.size=tiny|small|base|large`` selects a TerraMind v1 preset; given as an
    override it replaces the file's model section (other ``model.*`` overrides apply on top).
    """
    tree = read_config_file(path) if path is not None else {}
    parsed = [parse_override(item) for item in overrides]
    if any(k == "model.size" for k, _ in parsed):
        # a size on the command line replaces the file's model section with that preset;
        # the other model.* overrides still apply on top of it
        tree["model"] = {}
    return from_dict(TrainConfig, apply_overrides(tree, parsed))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML (``.yaml``/``.yml``) or JSON."""
    dump_config(cfg, path)


# --------------------------------------------------------------------------- modality specs


class Kind(enum.StrEnum):
    PIXELS = "pixels"
    IMAGE_TOKENS = "image_tokens"
    SEQUENCE = "sequence"


def sequence_length(name: str) -> int:
    """Stored token length of a sequence modality (GEO 2, CAPTION 64)."""
    m = get_modality(name)
    if m.layout is Layout.VECTOR:
        return int(m.length or 1)
    if m.layout is Layout.TEXT:
        return CAPTION_MAX_TOKENS
    raise ValueError(f"{name} is not a sequence modality")


def n_sentinels(length: int) -> int:
    """Sentinel ids a span-masked sequence of ``length`` tokens can need (spans + end)."""
    return length // 2 + 2


@dataclass(frozen=True)
class InputSpec:
    """One encoder input modality (the pixel and token scales of a modality are distinct)."""

    key: str  # "S2L2A@px" / "S2L2A@tok"
    modality: str
    kind: Kind
    #: Positions the modality offers: 196 for images, the stored length for sequences.
    n_positions: int
    #: Embedding rows (tokens: codes, plus sentinels for sequences); 0 for pixels.
    vocab: int
    #: Pixel channels (pixels only).
    channels: int = 0
    #: Stored vocabulary (sequences: first sentinel id).
    base_vocab: int = 0

    @property
    def patch_dim(self) -> int:
        return self.channels * PATCH_PX * PATCH_PX


@dataclass(frozen=True)
class TargetSpec:
    """One decoder target modality."""

    modality: str
    kind: Kind
    #: Target slots: 196 for images, stored length + 2 (sentinels/end) for sequences.
    n_positions: int
    #: Output classes of the head (codes, plus sentinels for sequences).
    vocab: int
    #: Stored vocabulary (sequences: first sentinel id).
    base_vocab: int
    #: Decoder-input rows (sequences: vocab + BOS); 0 for images (they use the mask token).
    dec_vocab: int = 0

    @property
    def bos(self) -> int:
        return self.vocab


@dataclass(frozen=True)
class ModalitySpecs:
    inputs: tuple[InputSpec, ...]
    targets: tuple[TargetSpec, ...]
    n_image_positions: int
    #: Longest sequence position used anywhere (sizes the 1-D position table).
    max_seq_positions: int

    def input_index(self, key: str) -> int:
        for i, s in enumerate(self.inputs):
            if s.key == key:
                return i
        raise KeyError(f"no input modality {key!r}; inputs: {[s.key for s in self.inputs]}")

    def target_index(self, name: str) -> int:
        for i, s in enumerate(self.targets):
            if s.modality == name.upper():
                return i
        raise KeyError(
            f"no target modality {name!r}; targets: {[s.modality for s in self.targets]}"
        )

    @property
    def token_modalities(self) -> tuple[str, ...]:
        """Registry names read from the token store (token inputs and targets)."""
        names: list[str] = []
        for s in self.inputs:
            if s.kind is not Kind.PIXELS and s.modality not in names:
                names.append(s.modality)
        for t in self.targets:
            if t.modality not in names:
                names.append(t.modality)
        return tuple(names)


def modality_specs(cfg: ModelConfig) -> ModalitySpecs:
    """The encoder inputs and decoder targets a model config implies, in a fixed order."""
    n_img = cfg.n_positions
    inputs: list[InputSpec] = []
    max_seq = 1
    for name in cfg.pixel_inputs:
        m = get_modality(name)
        inputs.append(InputSpec(m.name + PIXEL_SUFFIX, m.name, Kind.PIXELS, n_img, 0, m.n_bands))
    for name in cfg.token_inputs:
        m = get_modality(name)
        v = int(m.vocab_size or 0)
        if m.is_image:
            inputs.append(
                InputSpec(m.name + TOKEN_SUFFIX, m.name, Kind.IMAGE_TOKENS, n_img, v, base_vocab=v)
            )
        else:
            length = sequence_length(m.name)
            max_seq = max(max_seq, length)
            inputs.append(
                InputSpec(
                    m.name + TOKEN_SUFFIX,
                    m.name,
                    Kind.SEQUENCE,
                    length,
                    v + n_sentinels(length),
                    base_vocab=v,
                )
            )
    targets: list[TargetSpec] = []
    for name in cfg.targets:
        m = get_modality(name)
        v = int(m.vocab_size or 0)
        if m.is_image:
            targets.append(TargetSpec(m.name, Kind.IMAGE_TOKENS, n_img, v, v))
        else:
            length = sequence_length(m.name)
            out = v + n_sentinels(length)
            max_seq = max(max_seq, length + 2)
            targets.append(TargetSpec(m.name, Kind.SEQUENCE, length + 2, out, v, dec_vocab=out + 1))
    keys = [s.key for s in inputs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate input modalities: {keys}")
    tnames = [t.modality for t in targets]
    if len(set(tnames)) != len(tnames):
        raise ValueError(f"duplicate target modalities: {tnames}")
    return ModalitySpecs(tuple(inputs), tuple(targets), n_img, max_seq)
