"""The encode job's configuration and its user-facing errors (shared by its stages)."""

from __future__ import annotations

from dataclasses import dataclass

from terraloom.schemas.layouts import TOKEN_MODALITIES
from terraloom.schemas.modalities import CROP_PX, SAMPLE_PX, get_modality

#: Token ids are stored as uint16.
UINT16_MAX = 65535


class EncodeError(ValueError):
    """A user-facing problem with the inputs of the job (the CLI exits with code 2)."""


class TokenizerMismatchError(EncodeError):
    """The store was written with other tokenizers than the ones given."""


class EncodeBusyError(EncodeError):
    """Another encode job holds the output's lease (one line; the CLI exits with code 2)."""


@dataclass(frozen=True)
class EncodeConfig:
    """Knobs of the encode job (the CLI flags)."""

    n_crops: int = 4
    crop_px: int = CROP_PX
    #: Crops per tokenizer forward pass.
    batch: int = 64
    device: str = "cpu"
    #: Global seed of the crop generator (stored in the store attributes).
    seed: int = 0
    #: bf16 autocast of the image tokenizers; ``None`` = on for CUDA, off elsewhere.
    bf16: bool | None = None
    compile: bool = False
    #: Corpus shards read ahead of the device.
    prefetch: int = 2
    read_threads: int = 2
    #: Token modalities to encode; ``None`` = every token modality of the registry.
    modalities: tuple[str, ...] | None = None
    #: Splits to encode; ``None`` = every ``<split>.zarr`` in the corpus directory.
    splits: tuple[str, ...] | None = None
    progress: bool = True
    #: Cut crops on the device after one copy of whole samples (``None``: yes, except on
    #: the CPU, where the reader threads cut them).
    crop_on_device: bool | None = None
    #: Stop after this many shards per rank (tests and benchmarks); ``None`` = all.
    max_shards: int | None = None
    #: On resume, re-read every committed shard and compare its checksums (a flipped byte),
    #: not only the chunk files' presence and sizes.
    verify_committed: bool = False

    def __post_init__(self) -> None:
        if self.n_crops < 1:
            raise EncodeError(f"--crops must be >= 1, got {self.n_crops}")
        if not 16 <= self.crop_px <= SAMPLE_PX or self.crop_px % 16:
            raise EncodeError(
                f"--crop-size must be a multiple of 16 in 16..{SAMPLE_PX}, got {self.crop_px}"
            )
        if self.batch < 1 or self.prefetch < 1 or self.read_threads < 1:
            raise EncodeError("--batch, --prefetch and --read-threads must be >= 1")

    @property
    def modality_names(self) -> tuple[str, ...]:
        if self.modalities is None:
            return TOKEN_MODALITIES
        names = {get_modality(m).name for m in self.modalities}
        unknown = names - set(TOKEN_MODALITIES)
        if unknown:
            raise EncodeError(
                f"{sorted(unknown)} have no tokens; token modalities: {list(TOKEN_MODALITIES)}"
            )
        return tuple(m for m in TOKEN_MODALITIES if m in names)
