"""Ordinal targets: cross-entropy against a Gaussian over neighbouring FSQ levels.

Why: an FSQ code is a mixed-radix number of per-scalar *levels*, and the fine scalars
(DEM's single 15,360-level elevation scalar, the 3,072-level scalars of S1 and NDVI) are
ordinal: level 7,000 is next to 7,001 in elevation. The model's head, though, scores every
code independently, and plain cross-entropy rewards only the exact code. On the demo world
the 16,256 training DEM tokens of a crop fall on 9,255 distinct codes (the compander spreads
them evenly over the levels), so each code is seen about twice: the head never learns that
neighbouring codes mean neighbouring elevations, its distribution stays flat (median top
probability 0.5 %, the true code at rank ~5,700 of 15,360 on val) and the expected elevation
is nearly the mean of the whole range. Spreading each target over its neighbouring levels
(label smoothing along the ordinal axis) lets every training token teach all codes of similar
elevation, the way a regression loss would, while the head stays an ordinary categorical one
(generation, top-k, the TerraMind export: unchanged).

``OrdinalTarget`` describes one target modality's codes: the level count of each quantised
scalar, least significant first (``FSQVAEConfig.quant_levels``), and the Gaussian's standard
deviation in levels for each (0: the exact level). ``default_ordinal_targets`` derives it
from the registry's FSQ levels and the tokenizers' default grouping, smoothing only the
scalars with more than :data:`FINE_LEVELS` levels (the regression channels the tokenizers'
own entropy regulariser also leaves alone).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Scalars with more levels than this are ordinal regression channels (same threshold as
#: ``FSQ.entropy_loss``'s ``max_levels``); coarser ones are matched exactly.
FINE_LEVELS = 64

#: Default Gaussian width as a fraction of a fine scalar's level count (DEM: 15,360 levels
#: -> sigma 768 levels, about 5 % of the elevation distribution, which the compander spreads
#: evenly over the levels). On the demo world at 300 steps, S2L2A -> DEM MAE: plain 622 m,
#: 2 % 408 m, 5 % 376 m, 10 % 395 m (docs/model.md, "Ordinal targets").
DEFAULT_SIGMA_FRACTION = 0.05


@dataclass(frozen=True)
class OrdinalTarget:
    """The ordinal structure of one target's codes.

    ``levels``: level count of each quantised scalar, least significant first (the code is
    ``sum(level_c * prod(levels[:c]))``); ``sigma``: the Gaussian's standard deviation in
    levels per scalar, 0 for an exact match.
    """

    levels: tuple[int, ...]
    sigma: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.levels or len(self.levels) != len(self.sigma):
            raise ValueError("an ordinal target needs one sigma per level count")
        if min(self.levels) < 1 or min(self.sigma) < 0:
            raise ValueError(f"levels must be >= 1 and sigmas >= 0, got {self}")

    @property
    def vocab(self) -> int:
        return math.prod(self.levels)

    @property
    def smooths(self) -> bool:
        return any(s > 0 for s in self.sigma)


def ordinal_target(
    levels: Sequence[int],
    fraction: float = DEFAULT_SIGMA_FRACTION,
    fine_levels: int = FINE_LEVELS,
) -> OrdinalTarget:
    """Smooth the scalars with more than ``fine_levels`` levels by ``fraction`` of their
    level count; match the others exactly."""
    lv = tuple(int(v) for v in levels)
    return OrdinalTarget(lv, tuple(fraction * v if v > fine_levels else 0.0 for v in lv))


def default_ordinal_targets(
    names: Sequence[str],
    fraction: float = DEFAULT_SIGMA_FRACTION,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, OrdinalTarget]:
    """Ordinal targets of the FSQ image modalities among ``names`` that have a fine scalar.

    Levels come from the registry, the grouping from ``groups`` (default: the tokenizers'
    ``DEFAULT_FSQ_GROUPS``); modalities without a fine scalar (LULC, S2L2A's 64-level
    brightness is not above the threshold) and sequences are left out. ``fraction`` 0 gives
    no targets at all (plain cross-entropy everywhere).
    """
    from terraloom.schemas.modalities import TokenizerKind, get_modality
    from terraloom.tokenize_jobs.tokenizers.image import DEFAULT_FSQ_GROUPS, group_levels

    groups = DEFAULT_FSQ_GROUPS if groups is None else groups
    out: dict[str, OrdinalTarget] = {}
    if fraction <= 0:
        return out
    for raw in names:
        m = get_modality(raw)
        if m.tokenizer is not TokenizerKind.FSQ_VAE or not m.fsq_levels:
            continue
        levels = group_levels(tuple(m.fsq_levels), tuple(groups.get(m.name, ())))
        t = ordinal_target(levels, fraction)
        if t.smooths:
            out[m.name] = t
    return out


def soft_targets(labels: torch.Tensor, target: OrdinalTarget) -> torch.Tensor:
    """(N,) code ids -> (N, V) target distributions: the product over scalars of a
    Gaussian (truncated to the valid levels, renormalised) around each scalar's level."""
    labels = labels.long()
    q: torch.Tensor | None = None
    basis = 1
    for n_levels, sigma in zip(target.levels, target.sigma):
        level = (labels // basis) % n_levels
        basis *= n_levels
        if sigma > 0:
            grid = torch.arange(n_levels, device=labels.device, dtype=torch.float32)
            k = torch.softmax(-0.5 * ((grid - level[:, None].float()) / sigma).square(), -1)
        else:
            k = F.one_hot(level, n_levels).float()
        # code = sum level_c * basis_c: the new scalar is the more significant axis
        q = k if q is None else (k[:, :, None] * q[:, None, :]).reshape(len(labels), -1)
    assert q is not None
    return q


def ordinal_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, target: OrdinalTarget
) -> torch.Tensor:
    """Summed cross-entropy of (N, V) logits against :func:`soft_targets` of ``labels``."""
    if logits.shape[-1] != target.vocab:
        raise ValueError(
            f"ordinal target of {target.vocab} codes for a head of {logits.shape[-1]} classes"
        )
    q = soft_targets(labels, target)
    return -(q * torch.log_softmax(logits.float(), -1)).sum()


def tokenizer_groups(tokens: str, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """FSQ grouping of each named modality's tokenizer in ``<tokens>/../tokenizers`` (the
    layout ``encode`` and the demo write), for the tokenizers found there.

    The grouping decides which code digits are the fine scalars; a tokenizer trained with
    another grouping (``DemoConfig.tokenizer_overrides``) is read from its own config, so
    the targets follow the tokens actually stored. URLs and missing folders give nothing
    (the defaults apply).
    """
    from pathlib import Path

    from terraloom.tokenize_jobs.tokenizers.io import read_config, tokenizer_dir

    if not tokens or "://" in tokens:
        return {}
    root = Path(tokens).parent / "tokenizers"
    out: dict[str, tuple[int, ...]] = {}
    for name in names:
        path = tokenizer_dir(root, name)
        if not (path / "config.json").is_file():
            continue
        model = read_config(path).get("model") or {}
        if "fsq_groups" in model:
            out[name] = tuple(int(g) for g in model["fsq_groups"] or ())
    return out


def run_ordinal_targets(
    targets: Sequence[str],
    fraction: float,
    tokens: str = "",
    stored: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, OrdinalTarget]:
    """The ordinal targets of a training run: :func:`default_ordinal_targets` with the
    grouping the token store recorded (``stored``: ``TokenStore.fsq_groups``, written by
    encode, so it holds for a store read from a URL too), else that of the tokenizers beside
    a local token store (stores encoded before the grouping was recorded), else the
    defaults."""
    from terraloom.tokenize_jobs.tokenizers.image import DEFAULT_FSQ_GROUPS

    groups: dict[str, Sequence[int]] = {
        **DEFAULT_FSQ_GROUPS,
        **tokenizer_groups(tokens, targets),
        **(stored or {}),
    }
    return default_ordinal_targets(targets, fraction, groups)
