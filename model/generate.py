"""Any-to-any generation: tokens of any target modality from any subset of inputs.

* **Image targets** (S2L2A, S1GRD, DEM, LULC, ...) by iterative parallel decoding: start
  with every position masked; at each step the decoder predicts all masked positions, a
  token is sampled for each (temperature, top-k, top-p, seeded ``torch.Generator``) and the
  positions to commit are chosen by confidence (MaskGIT, with annealed Gumbel noise) or at
  random (4M's random order); committed tokens join the encoder inputs at the token scale,
  exactly as a partially visible modality looks in training. The per-step counts follow a
  cosine (or linear) schedule and sum to the number of positions exactly.
* **Sequence targets** (GEO, CAPTION) autoregressively: the decoder is causal within a
  sequence, so the encoder runs once and each step feeds the tokens so far
  (``S_0 y_1 .. y_i``) and reads the next one, until the end sentinel.
* **Classifier-free guidance** mixes the logits of the conditional pass with those of an
  unconditional one whose encoder sees only the target tokens generated so far.
* **Chained generation** (S1GRD -> LULC -> S2L2A): each generated modality joins the inputs
  of the next target.

Tokens are turned back into pixels / coordinates / text with the tokenizers
(:func:`decode_tokens`). Inputs are *stored* values (pixels) or token ids; this module does
its own normalisation and patching so callers never need the model's batch format.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from terraloom.model.config import PIXEL_SUFFIX, TOKEN_SUFFIX, Kind, TargetSpec
from terraloom.model.transformer import Encoded, Queries, TerraloomModel
from terraloom.schemas.modalities import GEO_BIN_DEG, LULC_COLORS, Layout, get_modality

SCHEDULES = ("cosine", "linear")
S2_DN_SCALE = 10000.0
ORDERS = ("confidence", "random")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens of one target are drawn.

    ``temperature`` 0 means argmax (deterministic even without a seed); ``top_k`` 0 and
    ``top_p`` 1 disable the filters; ``cfg_scale`` 0 disables guidance (logits
    ``cond + s * (cond - uncond)`` otherwise). ``choice_temperature`` is MaskGIT's Gumbel noise
    on the confidence used to choose which positions to commit, annealed to 0 over the steps.
    """

    steps: int = 8
    schedule: str = "cosine"
    order: str = "confidence"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    choice_temperature: float = 4.5
    cfg_scale: float = 0.0
    #: Longest generated sequence (GEO / CAPTION tokens); None = the model's maximum.
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
        if self.choice_temperature < 0:
            raise ValueError("choice_temperature must be >= 0")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError("max_len must be >= 1")


GREEDY = SamplingConfig(temperature=0.0, choice_temperature=0.0)
"""Argmax tokens, most confident positions first: the evaluation setting."""


def unmask_schedule(n_positions: int, steps: int, schedule: str = "cosine") -> list[int]:
    """Tokens to unmask at each step: positive counts that sum to ``n_positions`` exactly.

    The masked fraction after step ``t`` of ``T`` is ``cos(pi/2 * t/T)`` (cosine) or
    ``1 - t/T`` (linear), rounded down and clipped so that every step unmasks at least one
    token; ``steps`` larger than ``n_positions`` is reduced to ``n_positions``.
    """
    if n_positions < 0 or steps < 1:
        raise ValueError("need n_positions >= 0 and steps >= 1")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if n_positions == 0:
        return []
    steps = min(steps, n_positions)
    masked = [n_positions]
    for t in range(1, steps + 1):
        frac = math.cos(math.pi / 2 * t / steps) if schedule == "cosine" else 1 - t / steps
        m = math.floor(n_positions * frac + 1e-9)
        m = max(min(m, masked[-1] - 1), steps - t)  # >= 1 per step, room for the rest
        masked.append(0 if t == steps else m)
    return [a - b for a, b in zip(masked[:-1], masked[1:])]


# --------------------------------------------------------------------------- inputs


@dataclass
class Conditioning:
    """What the model conditions on, for a batch of B samples.

    ``tokens``: image modalities (B, n_positions) codes, sequence modalities (B, L) ids
    (with ``lengths`` (B,) for sequences; full length when missing). ``pixels``: (B, C, H, W)
    *stored* values (H = W = the model's ``image_px``).
    """

    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    lengths: dict[str, torch.Tensor] = field(default_factory=dict)
    pixels: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Batch size of an empty conditioning (unconditional generation).
    size: int | None = None

    @property
    def batch_size(self) -> int:
        for t in (*self.tokens.values(), *self.pixels.values()):
            return int(t.shape[0])
        if self.size is not None:
            return self.size
        raise ValueError("an empty conditioning needs an explicit size (batch size)")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.pixels, *self.tokens]))

    def with_tokens(
        self, name: str, ids: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> Conditioning:
        tokens = {**self.tokens, name: ids}
        lens = dict(self.lengths)
        if lengths is not None:
            lens[name] = lengths
        return Conditioning(tokens, lens, dict(self.pixels), self.size)

    def without(self, name: str) -> Conditioning:
        return Conditioning(
            {k: v for k, v in self.tokens.items() if k != name},
            {k: v for k, v in self.lengths.items() if k != name},
            {k: v for k, v in self.pixels.items() if k != name},
            self.batch_size,
        )

    def select(self, rows: Sequence[int] | torch.Tensor) -> Conditioning:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return Conditioning(
            {k: v[idx.to(v.device)] for k, v in self.tokens.items()},
            {k: v[idx.to(v.device)] for k, v in self.lengths.items()},
            {k: v[idx.to(v.device)] for k, v in self.pixels.items()},
        )


def normalise_pixels(name: str, pixels: torch.Tensor) -> torch.Tensor:
    """Stored values -> zero-mean unit-std float32; nodata and non-finite -> 0 (as the loader)."""
    m = get_modality(name)
    x = pixels.float()
    shape = (1, -1, 1, 1)
    mean = torch.tensor(m.mean, dtype=torch.float32, device=x.device).view(shape)
    std = torch.tensor(m.std, dtype=torch.float32, device=x.device).view(shape)
    out = (x - mean) / std
    bad = ~torch.isfinite(out)
    if m.nodata is not None and not (isinstance(m.nodata, float) and math.isnan(m.nodata)):
        bad |= x == float(m.nodata)
    return torch.where(bad, torch.zeros_like(out), out)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), C*p*p), positions row-major, channels first in a patch."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"pixels of {h} x {w} are not a multiple of the patch size {patch}")
    g, gw = h // patch, w // patch
    return (
        x.reshape(b, c, g, patch, gw, patch)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(b, g * gw, c * patch * patch)
    )


@dataclass
class _Segment:
    index: int  # input spec index
    ids: torch.Tensor  # (B, n) token ids (zeros for pixels)
    pos: torch.Tensor  # (B, n) positions
    pad: torch.Tensor  # (B, n) bool
    patches: torch.Tensor | None = None  # (B, n, C*p*p) for pixel inputs


def encoder_batch(
    model: Any,
    cond: Conditioning,
    partial: tuple[str, torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The model's encoder batch (``enc_*``, ``pix.*``, ``pix_idx.*``) for a conditioning.

    Every position of every given modality is an input (sequences up to their lengths;
    shorter ones are padded). ``partial = (name, codes (B, N), known (B, N))`` adds the known
    positions of an image target being generated; ``known`` must hold the same count per row.
    Modalities the model cannot take at that scale raise ``ValueError``. ``model`` is a
    :class:`TerraloomModel` or any module with its ``specs`` and ``cfg`` (the TiM backbone).
    """
    specs = model.specs
    cfg = model.cfg
    device = _device(model)
    b = partial[1].shape[0] if partial is not None else cond.batch_size
    segs: list[_Segment] = []
    for name, px in cond.pixels.items():
        key = get_modality(name).name + PIXEL_SUFFIX
        i = _input_index(specs, key, "pixel")
        if tuple(px.shape[-2:]) != (cfg.image_px, cfg.image_px):
            raise ValueError(
                f"{name} pixels are {tuple(px.shape[-2:])}, the model takes {cfg.image_px} x {cfg.image_px}"
            )
        if px.shape[1] != specs.inputs[i].channels:
            raise ValueError(
                f"{name} pixels have {px.shape[1]} bands, expected {specs.inputs[i].channels}"
            )
        patches = patchify(normalise_pixels(name, px.to(device)), cfg.patch_px)
        n = patches.shape[1]
        pos = torch.arange(n, device=device).expand(b, n)
        segs.append(
            _Segment(
                i,
                torch.zeros(b, n, dtype=torch.long, device=device),
                pos,
                torch.zeros(b, n, dtype=torch.bool, device=device),
                patches,
            )
        )
    for name, ids in cond.tokens.items():
        key = get_modality(name).name + TOKEN_SUFFIX
        i = _input_index(specs, key, "token")
        s = specs.inputs[i]
        ids = ids.to(device).long()
        if s.kind is Kind.IMAGE_TOKENS:
            if ids.shape[1] != s.n_positions:
                raise ValueError(
                    f"{name} tokens have {ids.shape[1]} positions, expected {s.n_positions}"
                )
            pad = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        else:
            ids = ids[:, : s.n_positions]
            lens = cond.lengths.get(name)
            lens = (
                torch.full((b,), ids.shape[1], device=device)
                if lens is None
                else lens.to(device).clamp(max=ids.shape[1])
            )
            pad = torch.arange(ids.shape[1], device=device)[None] >= lens[:, None]
        if ids.numel() and (ids.min() < 0 or ids.max() >= s.base_vocab):
            raise ValueError(f"{name} token ids must lie in [0, {s.base_vocab})")
        pos = torch.arange(ids.shape[1], device=device).expand_as(ids)
        segs.append(_Segment(i, ids, pos, pad))
    if partial is not None:
        name, codes, known = partial
        key = get_modality(name).name + TOKEN_SUFFIX
        i = _input_index(specs, key, "token")
        counts = known.sum(1)
        if counts.numel() and bool((counts != counts[0]).any()):
            raise ValueError("partial target tokens must have the same known count per row")
        k = int(counts[0]) if counts.numel() else 0
        if k:
            pos = torch.sort(torch.nonzero(known, as_tuple=False)[:, 1].view(b, k), dim=1).values
            segs.append(
                _Segment(
                    i,
                    codes.to(device).long().gather(1, pos),
                    pos,
                    torch.zeros(b, k, dtype=torch.bool, device=device),
                )
            )
    ids = (
        torch.cat([s.ids for s in segs], 1)
        if segs
        else torch.zeros(b, 0, dtype=torch.long, device=device)
    )
    mod = torch.cat([torch.full_like(s.ids, s.index) for s in segs], 1) if segs else ids.clone()
    pos = torch.cat([s.pos for s in segs], 1) if segs else ids.clone()
    pad = (
        torch.cat([s.pad for s in segs], 1)
        if segs
        else torch.zeros(b, 0, dtype=torch.bool, device=device)
    )
    # Padding goes last in each row (the model ignores it through the key-padding mask).
    order = torch.argsort(pad.to(torch.int8), dim=1, stable=True)
    ids, mod, pos, pad = (t.gather(1, order) for t in (ids, mod, pos, pad))
    keep = int((~pad).sum(1).max()) if pad.numel() else 0
    ids, mod, pos, pad = ids[:, :keep], mod[:, :keep], pos[:, :keep], pad[:, :keep]
    ids = ids.masked_fill(pad, 0)
    mod = mod.masked_fill(pad, 0)
    pos = pos.masked_fill(pad, 0)
    batch: dict[str, torch.Tensor] = {
        "enc_ids": ids,
        "enc_mod": mod,
        "enc_pos": pos,
        "enc_pad": pad,
    }
    width = ids.shape[1]
    for s in segs:
        if s.patches is None:
            continue
        key = specs.inputs[s.index].key
        slot = (mod == s.index) & ~pad
        flat = torch.nonzero(slot.reshape(-1), as_tuple=False)[:, 0]
        # slots of this modality, in (sample, position) order = patches' order
        p = pos.reshape(-1)[flat]
        rows = flat // max(width, 1)
        batch[f"pix_idx.{key}"] = flat
        batch[f"pix.{key}"] = s.patches[rows, p]
    return batch


def _input_index(specs: Any, key: str, scale: str) -> int:
    try:
        return int(specs.input_index(key))
    except KeyError:
        have = [s.key for s in specs.inputs]
        raise ValueError(f"the model takes no {scale} input {key}; its inputs are {have}") from None


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------- sampling


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering: removed entries become ``-inf``."""
    out = logits
    if top_k and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        cum = probs.cumsum(-1)
        drop = cum - probs >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop[..., 0] = False
        out = out.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
    return out


def sample_tokens(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) logits -> sampled ids (...) and their log-probabilities under the filtered distribution."""
    logits = logits.float()
    if cfg.temperature == 0:
        logp = torch.log_softmax(filter_logits(logits, cfg.top_k, cfg.top_p), -1)
        ids = logp.argmax(-1)
        return ids, logp.gather(-1, ids[..., None])[..., 0]
    logp = torch.log_softmax(filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p), -1)
    flat = logp.reshape(-1, logp.shape[-1]).exp()
    ids = torch.multinomial(flat, 1, generator=generator).view(logp.shape[:-1])
    return ids, logp.gather(-1, ids[..., None])[..., 0]


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


# --------------------------------------------------------------------------- image targets


def _target(model: TerraloomModel, name: str) -> tuple[int, TargetSpec]:
    try:
        j = model.specs.target_index(name)
    except KeyError:
        raise ValueError(
            f"the model cannot generate {name}; its targets are {[t.modality for t in model.specs.targets]}"
        ) from None
    return j, model.specs.targets[j]


def _takes_tokens(model: TerraloomModel, name: str) -> bool:
    return any(s.key == name + TOKEN_SUFFIX for s in model.specs.inputs)


def _logits(
    model: TerraloomModel, batch: dict[str, torch.Tensor], q: Queries, name: str
) -> torch.Tensor:
    enc = model.forward_encoder(batch)
    return model.decode_logits(enc, q)[name]


@torch.no_grad()
def generate_image(
    model: TerraloomModel,
    cond: Conditioning,
    target: str,
    cfg: SamplingConfig = SamplingConfig(),
    generator: torch.Generator | None = None,
    *,
    trace: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, n_positions) codes of an image target by iterative parallel decoding.

    ``trace`` (optional list) receives the ``known`` mask after every step. When the model
    does not take the target at the token scale, committed tokens cannot be fed back, so
    all positions are decoded in one step.
    """
    name = get_modality(target).name
    j, spec = _target(model, name)
    if spec.kind is not Kind.IMAGE_TOKENS:
        raise ValueError(f"{name} is a sequence; use generate_sequence")
    device = _device(model)
    cond = cond.without(name)
    b = cond.batch_size
    n = spec.n_positions
    feed_back = _takes_tokens(model, name)
    counts = unmask_schedule(n, cfg.steps if feed_back else 1, cfg.schedule)
    codes = torch.zeros(b, n, dtype=torch.long, device=device)
    known = torch.zeros(b, n, dtype=torch.bool, device=device)
    ar = torch.arange(n, device=device)
    for step, k in enumerate(counts):
        unknown = ar[None].expand(b, n)[~known].view(b, -1)  # sorted positions per row
        u = unknown.shape[1]
        partial = (name, codes, known) if feed_back else None
        q = Queries(
            mod=torch.full((b, u), j, dtype=torch.long, device=device),
            pos=unknown,
            prev=torch.zeros(b, u, dtype=torch.long, device=device),
            pad=torch.zeros(b, u, dtype=torch.bool, device=device),
        )
        logits = _logits(model, encoder_batch(model, cond, partial), q, name)
        if cfg.cfg_scale:
            uncond = _logits(
                model,
                encoder_batch(model, Conditioning(size=b), partial)
                if partial
                else _empty_batch(b, device),
                q,
                name,
            )
            logits = logits + cfg.cfg_scale * (logits - uncond)
        ids, logp = sample_tokens(logits, cfg, generator)
        if k >= u:
            chosen = torch.ones(b, u, dtype=torch.bool, device=device)
        else:
            if cfg.order == "random":
                score = _uniform((b, u), generator, device)
            else:
                anneal = cfg.choice_temperature * (1.0 - (step + 1) / len(counts))
                score = logp.float()
                if anneal > 0:
                    gumbel = -torch.log(
                        -torch.log(_uniform((b, u), generator, device).clamp(1e-20, 1.0)).clamp_min(
                            1e-20
                        )
                    )
                    score = score + anneal * gumbel
            top = torch.topk(score, k, dim=1).indices
            chosen = torch.zeros(b, u, dtype=torch.bool, device=device).scatter(1, top, True)
        pos = unknown[chosen].view(b, -1)
        codes.scatter_(1, pos, ids[chosen].view(b, -1))
        known.scatter_(1, pos, True)
        if trace is not None:
            trace.append(known.clone())
    return codes


def _empty_batch(b: int, device: torch.device) -> dict[str, torch.Tensor]:
    z = torch.zeros(b, 0, dtype=torch.long, device=device)
    return {"enc_ids": z, "enc_mod": z, "enc_pos": z, "enc_pad": z.bool()}


# --------------------------------------------------------------------------- sequence targets


def _allowed(name: str, spec: TargetSpec, position: int, device: torch.device) -> torch.Tensor:
    """(V,) bool: tokens the sequence may hold at target ``position`` (>= 1).

    Ids of the stored vocabulary or the end sentinel ``S_1``; GEO is exactly a latitude bin
    then a longitude bin then the end.
    """
    v = torch.zeros(spec.vocab, dtype=torch.bool, device=device)
    end = spec.base_vocab + 1
    m = get_modality(name)
    if m.layout is Layout.VECTOR and m.name == "GEO":
        n_lat = round(180 / GEO_BIN_DEG)
        if position == 1:
            v[:n_lat] = True
        elif position == 2:
            v[n_lat : spec.base_vocab] = True
        else:
            v[end] = True
        return v
    if m.layout is Layout.VECTOR:
        if position <= int(m.length or 1):
            v[: spec.base_vocab] = True
        else:
            v[end] = True
        return v
    v[1 : spec.base_vocab] = True  # 0 is padding
    v[end] = True
    return v


@torch.no_grad()
def generate_sequence(
    model: TerraloomModel,
    cond: Conditioning,
    target: str,
    cfg: SamplingConfig = GREEDY,
    generator: torch.Generator | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Autoregressive decoding of a sequence target: (ids (B, L) zero padded, lengths (B,)).

    The model's sequence target is ``S_0 y_1 .. y_n S_1`` decoded causally from ``BOS``;
    the encoder runs once, each step reads the next token at the last query position.
    """
    name = get_modality(target).name
    j, spec = _target(model, name)
    if spec.kind is not Kind.SEQUENCE:
        raise ValueError(f"{name} is an image modality; use generate_image")
    device = _device(model)
    cond = cond.without(name)
    b = cond.batch_size
    max_len = max_len if max_len is not None else cfg.max_len
    length = spec.n_positions - 2 if max_len is None else min(max_len, spec.n_positions - 2)
    enc = model.forward_encoder(encoder_batch(model, cond))
    uncond: Encoded | None = None
    if cfg.cfg_scale:
        uncond = model.forward_encoder(_empty_batch(b, device))
    end = spec.base_vocab + 1
    # decoder inputs: BOS, S_0, y_1, ...
    prev = [
        torch.full((b,), spec.bos, dtype=torch.long, device=device),
        torch.full((b,), spec.base_vocab, dtype=torch.long, device=device),
    ]
    out = torch.zeros(b, length, dtype=torch.long, device=device)
    lengths = torch.full((b,), length, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for i in range(length + 1):
        p = i + 1  # target position predicted now (position 0 is S_0)
        n_q = p + 1
        q = Queries(
            mod=torch.full((b, n_q), j, dtype=torch.long, device=device),
            pos=torch.arange(n_q, device=device).expand(b, n_q),
            prev=torch.stack(prev, 1),
            pad=torch.zeros(b, n_q, dtype=torch.bool, device=device),
        )
        head = model.heads[j]
        logits = head(model.decode_hidden(enc, q)[:, -1]).float()  # only the last position's head
        if uncond is not None:
            lu = head(model.decode_hidden(uncond, q)[:, -1]).float()
            logits = logits + cfg.cfg_scale * (logits - lu)
        allowed = _allowed(name, spec, p, device)
        if i == length:
            allowed = torch.zeros_like(allowed)
            allowed[end] = True
        logits = logits.masked_fill(~allowed, float("-inf"))
        tok, _ = sample_tokens(logits, cfg, generator)
        finished_now = (tok == end) & ~done
        lengths = torch.where(finished_now, torch.full_like(lengths, i), lengths)
        done |= finished_now
        if i < length:
            out[:, i] = torch.where(done, torch.zeros_like(tok), tok)
        if bool(done.all()):
            break
        prev.append(torch.where(done, torch.zeros_like(tok), tok))
    return out, lengths


# --------------------------------------------------------------------------- any-to-any


@dataclass
class Generated:
    """Generated tokens per target (sequences with lengths) and the final conditioning."""

    tokens: dict[str, torch.Tensor]
    lengths: dict[str, torch.Tensor]
    conditioning: Conditioning


@torch.no_grad()
def generate(
    model: TerraloomModel,
    cond: Conditioning,
    targets: Sequence[str],
    cfg: SamplingConfig | Mapping[str, SamplingConfig] = SamplingConfig(),
    *,
    seed: int | None = 0,
    chain: bool = True,
    generator: torch.Generator | None = None,
) -> Generated:
    """Generate the tokens of ``targets`` in order from ``cond``.

    With ``chain`` each generated modality joins the inputs of the next target (when the
    model takes it at the token scale), e.g. ``S1GRD -> LULC -> S2L2A``. ``cfg`` is one
    :class:`SamplingConfig` or one per target name; sequences default to greedy decoding
    when a mapping lacks them. ``seed`` makes the result reproducible.
    """
    was_training = model.training
    model.eval()
    if generator is None and seed is not None:
        generator = make_generator(seed, _device(model))
    tokens: dict[str, torch.Tensor] = {}
    lengths: dict[str, torch.Tensor] = {}
    current = cond
    try:
        for raw in targets:
            name = get_modality(raw).name
            c = _config_for(cfg, name)
            m = get_modality(name)
            if m.is_image:
                ids = generate_image(model, current, name, c, generator)
                lens = None
            else:
                ids, lens = generate_sequence(model, current, name, c, generator)
                lengths[name] = lens
            tokens[name] = ids
            if chain and _takes_tokens(model, name):
                current = current.with_tokens(name, ids, lens)
    finally:
        model.train(was_training)
    return Generated(tokens, lengths, current)


def _config_for(cfg: SamplingConfig | Mapping[str, SamplingConfig], name: str) -> SamplingConfig:
    if isinstance(cfg, SamplingConfig):
        return cfg
    if name in cfg:
        return cfg[name]
    return GREEDY if not get_modality(name).is_image else SamplingConfig()


# --------------------------------------------------------------------------- decoding


def decode_tokens(
    tokenizer: Any, name: str, ids: torch.Tensor, lengths: torch.Tensor | None = None
) -> Any:
    """Tokens -> stored values with the modality's tokenizer.

    Images: (B, N) codes -> (B, C, H, W) float32 (LULC legend values); GEO: (B, 2) float64
    lat/lon; CAPTION: list of str.
    """
    m = get_modality(name)
    if m.is_image:
        g = int(round(math.sqrt(ids.shape[1])))
        return tokenizer.decode(ids.reshape(ids.shape[0], g, g).long())
    if lengths is None:
        lengths = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
    return tokenizer.decode_batch(ids.cpu(), lengths.cpu())


def load_tokenizers(
    root: str | os.PathLike[str], names: Sequence[str], device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """``root/<modality lowercase>/`` tokenizers (``tokenize_jobs.load_tokenizer``) by name."""
    from terraloom.tokenize_jobs.tokenizers.io import load_tokenizer, tokenizer_dir

    out = {}
    for n in names:
        name = get_modality(n).name
        path = tokenizer_dir(root, name)
        if not path.is_dir():
            raise FileNotFoundError(f"no {name} tokenizer at {path}")
        out[name] = load_tokenizer(path, device=device)
    return out


# --------------------------------------------------------------------------- reading samples


@dataclass(frozen=True)
class SampleRef:
    """Where a crop sits on the ground: for GeoTIFF outputs."""

    sample_id: str
    split: str
    row: int
    crop: tuple[int, int, int, int, int]  # top, left, h, w, flip
    epsg: int
    transform: tuple[float, float, float, float, float, float]  # sample grid (a, b, c, d, e, f)

    def crop_transform(self) -> tuple[float, float, float, float, float, float]:
        """The sample's affine shifted by (left, top) pixels: the crop's own grid."""
        a, b, c, d, e, f = self.transform
        top, left = self.crop[0], self.crop[1]
        return (a, b, c + a * left + b * top, d, e, f + d * left + e * top)


def lookup_sample(corpus: str | os.PathLike[str], sample_id: str) -> tuple[str, int]:
    """(split, row) of a sample id from ``index.parquet``."""
    import pyarrow.parquet as pq

    path = Path(corpus) / "index.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"no index.parquet in {corpus}; cannot look up sample {sample_id!r}"
        )
    t = pq.read_table(path, columns=["sample_id", "split", "row"])
    ids = t.column("sample_id").to_pylist()
    try:
        i = ids.index(sample_id)
    except ValueError:
        raise ValueError(f"sample {sample_id!r} is not in {path}") from None
    return str(t.column("split")[i].as_py()), int(t.column("row")[i].as_py())


def sample_ids(corpus: str | os.PathLike[str], split: str) -> dict[int, str]:
    """Row -> sample id of a split (empty when the corpus has no index)."""
    import pyarrow.parquet as pq

    path = Path(corpus) / "index.parquet"
    if not path.is_file():
        return {}
    t = pq.read_table(path, columns=["sample_id", "split", "row"])
    return {
        int(r): str(s)
        for s, sp, r in zip(
            t.column("sample_id").to_pylist(),
            t.column("split").to_pylist(),
            t.column("row").to_pylist(),
        )
        if sp == split
    }


class SampleReader:
    """Crops of corpus rows (pixels) and their tokens, aligned by the token store's crops."""

    def __init__(
        self, corpus: str | os.PathLike[str], tokens: str | os.PathLike[str] | None, split: str
    ) -> None:
        import zarr

        self.corpus = Path(corpus)
        self.split = split
        path = self.corpus / f"{split}.zarr"
        if not (path / "zarr.json").exists():
            raise FileNotFoundError(f"no corpus split {split!r} at {path}")
        self.group: Any = cast(Any, zarr.open_group(str(path), mode="r"))
        self.store: Any = None
        if tokens is not None:
            from terraloom.tokenize_jobs.store import TokenStore

            self.store = TokenStore(Path(tokens) / f"{split}.zarr")
        self.valid = np.asarray(self.group["valid"][:], bool)
        if self.store is not None:
            self.valid &= np.asarray(self.store.valid, bool)
        self._ids = sample_ids(self.corpus, split)

    @property
    def valid_rows(self) -> np.ndarray:
        return np.flatnonzero(self.valid)

    def crops(self, rows: np.ndarray, crop_idx: int = 0) -> np.ndarray:
        """(B, 5) crops: the token store's when there is one, else the centred crop."""
        from terraloom.tokenize_jobs.crops import centre_crop

        if self.store is not None:
            return self.store.batch(rows, crop_idx, [])["crops"].numpy()
        return np.repeat(centre_crop()[None], len(rows), 0)

    def pixels(self, name: str, rows: np.ndarray, crops: np.ndarray) -> torch.Tensor:
        """(B, C, h, w) stored values of the crops (flips applied as stored)."""
        from terraloom.tokenize_jobs.crops import apply_crops

        m = get_modality(name)
        arr = self.group[m.name]
        if m.is_image:
            samples = np.stack([np.asarray(arr[int(r)]) for r in rows])
            return torch.from_numpy(
                np.ascontiguousarray(apply_crops(samples, crops)).astype(np.float32)
            )
        return torch.from_numpy(np.stack([np.asarray(arr[int(r)]) for r in rows]))

    def tokens(
        self, names: Sequence[str], rows: np.ndarray, crop_idx: int = 0
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self.store is None:
            raise ValueError("no token store given")
        got = self.store.batch(rows, crop_idx, list(names))
        toks = {n: got[n] for n in names}
        lens = {n: got[f"{n}_len"] for n in names if f"{n}_len" in got}
        for n in names:
            if get_modality(n).layout is Layout.VECTOR and n not in lens:
                lens[n] = torch.full((len(rows),), toks[n].shape[1], dtype=torch.long)
        return toks, lens

    def refs(self, rows: np.ndarray, crops: np.ndarray) -> list[SampleRef]:
        epsg = np.asarray(self.group["epsg"][:])
        tr = np.asarray(self.group["transform"][:])
        return [
            SampleRef(
                self._ids.get(int(r), f"{self.split}/row-{int(r)}"),
                self.split,
                int(r),
                cast(tuple[int, int, int, int, int], tuple(int(v) for v in c)),
                int(epsg[r]),
                cast(
                    tuple[float, float, float, float, float, float], tuple(float(v) for v in tr[r])
                ),
            )
            for r, c in zip(rows, crops)
        ]

    def conditioning(
        self,
        model: TerraloomModel,
        modalities: Sequence[str],
        rows: np.ndarray,
        crop_idx: int = 0,
        *,
        scales: str = "both",
    ) -> Conditioning:
        """Inputs of ``modalities`` for ``rows`` at the scales the model takes them.

        ``scales``: "both", "pixels" or "tokens".
        """
        rows = np.asarray(rows, np.int64)
        crops = self.crops(rows, crop_idx)
        keys = {s.key for s in model.specs.inputs}
        cond = Conditioning()
        tok_names = []
        for n in modalities:
            name = get_modality(n).name
            took = False
            if scales in ("both", "pixels") and name + PIXEL_SUFFIX in keys:
                cond.pixels[name] = self.pixels(name, rows, crops)
                took = True
            if (
                scales in ("both", "tokens")
                and name + TOKEN_SUFFIX in keys
                and self.store is not None
                and name in self.store.modalities
            ):
                tok_names.append(name)
                took = True
            if not took:
                raise ValueError(
                    f"cannot feed {name} ({scales}) to this model or no tokens stored for it"
                )
        if tok_names:
            toks, lens = self.tokens(tok_names, rows, crop_idx)
            cond.tokens.update(toks)
            cond.lengths.update(lens)
        return cond


# --------------------------------------------------------------------------- outputs


def write_geotiff(
    path: str | os.PathLike[str], values: np.ndarray, ref: SampleRef, name: str
) -> Path:
    """A (C, H, W) crop as a GeoTIFF in the sample's CRS, on the crop's grid.

    A flipped crop is mirrored back first, so the raster is north-up like the sample.
    """
    import rasterio
    from affine import Affine

    m = get_modality(name)
    arr = np.asarray(values)
    if arr.ndim == 2:
        arr = arr[None]
    flip = ref.crop[4]
    if flip & 1:
        arr = arr[..., :, ::-1]
    if flip & 2:
        arr = arr[..., ::-1, :]
    dtype = np.dtype(m.dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        arr = np.clip(
            np.rint(np.nan_to_num(arr, nan=float(m.nodata or 0))), info.min, info.max
        ).astype(dtype)
    else:
        arr = arr.astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nodata: float | int | None = None
    if m.nodata is not None:
        nodata = float(m.nodata) if arr.dtype.kind == "f" else int(m.nodata)
    profile = {
        "driver": "GTiff",
        "height": arr.shape[1],
        "width": arr.shape[2],
        "count": arr.shape[0],
        "dtype": arr.dtype.name,
        "crs": f"EPSG:{ref.epsg}",
        "transform": Affine(*ref.crop_transform()),
        "compress": "deflate",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ascontiguousarray(arr))
        for i, band in enumerate(m.band_names[: arr.shape[0]], 1):
            dst.set_band_description(i, band)
        dst.update_tags(
            modality=m.name, sample_id=ref.sample_id, generated_by="terraloom-model generate"
        )
    return path


def read_geotiff(
    path: str | os.PathLike[str], name: str, size: int
) -> tuple[torch.Tensor, SampleRef]:
    """A GeoTIFF input (stored values of ``name``) -> centred (1, C, size, size) crop and its ref."""
    import rasterio

    m = get_modality(name)
    with rasterio.open(path) as src:
        arr = src.read().astype(np.float32)
        epsg = src.crs.to_epsg() if src.crs is not None else 0
        t = src.transform
        nodata = src.nodata
    if arr.shape[0] != m.n_bands:
        raise ValueError(f"{path}: {arr.shape[0]} bands, {name} has {m.n_bands}")
    h, w = arr.shape[1:]
    if h < size or w < size:
        raise ValueError(f"{path}: {h} x {w} px is smaller than the model's {size} px input")
    if (
        nodata is not None
        and m.nodata is not None
        and isinstance(m.nodata, float)
        and math.isnan(m.nodata)
    ):
        arr[arr == nodata] = np.nan
    top, left = (h - size) // 2, (w - size) // 2
    crop = arr[:, top : top + size, left : left + size]
    ref = SampleRef(
        Path(path).stem,
        "file",
        -1,
        (top, left, size, size, 0),
        int(epsg or 0),
        (t.a, t.b, t.c, t.d, t.e, t.f),
    )
    return torch.from_numpy(np.ascontiguousarray(crop))[None], ref


# --------------------------------------------------------------------------- panels


def render(name: str, values: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """(C, H, W) stored values -> (H, W, 3) uint8 quicklook with a fixed, comparable stretch.

    S2: true colour (B04, B03, B02) at reflectance x 3.5; S1: VV, VH, VV-VH false colour;
    DEM: terrain colours over ``limits`` (default: the image's own range); LULC: the Esri
    palette; NDVI: red-yellow-green.
    """
    import matplotlib

    m = get_modality(name)
    x = np.asarray(values, np.float32)
    if x.ndim == 2:
        x = x[None]
    if m.name in ("S2L2A", "S2L1C"):
        idx = [m.band_names.index(b) for b in ("B04", "B03", "B02")]
        rgb = np.nan_to_num(x[idx] / S2_DN_SCALE * 3.5).clip(0, 1) ** (1 / 1.4)
        return (rgb.transpose(1, 2, 0) * 255).astype(np.uint8)
    if m.name == "S2RGB":
        return np.nan_to_num(x[:3]).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)
    if m.name in ("S1GRD", "S1RTC"):
        vv, vh = x[0], x[1]
        rgb = np.stack([(vv + 25) / 25, (vh + 32) / 25, (vv - vh) / 15], -1)
        return (np.nan_to_num(rgb).clip(0, 1) * 255).astype(np.uint8)
    if m.name == "LULC":
        lut = np.zeros((256, 3), np.uint8)
        for v, c in LULC_COLORS.items():
            lut[v] = c
        return lut[np.nan_to_num(x[0]).astype(np.uint8)]
    if m.name == "NDVI":
        z = ((np.nan_to_num(x[0]) + 0.2) / 1.1).clip(0, 1)
        return (matplotlib.colormaps["RdYlGn"](z)[..., :3] * 255).astype(np.uint8)
    lo, hi = limits if limits is not None else (float(np.nanmin(x[0])), float(np.nanmax(x[0])))
    z = ((np.nan_to_num(x[0], nan=lo) - lo) / max(hi - lo, 1e-6)).clip(0, 1)
    return (matplotlib.colormaps["terrain"](0.25 + 0.75 * z)[..., :3] * 255).astype(np.uint8)


def write_panel(
    path: str | os.PathLike[str],
    inputs: Mapping[str, np.ndarray],
    generated: Mapping[str, Any],
    references: Mapping[str, Any],
    title: str = "",
) -> Path:
    """One PNG: a row of inputs | generated | reference (reference when available).

    Image values are (C, H, W) stored values; sequence values (GEO lat/lon, caption text)
    are shown as text.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols: list[tuple[str, str, Any]] = [("input", n, v) for n, v in inputs.items()]
    for n, v in generated.items():
        cols.append(("generated", n, v))
        if n in references:
            cols.append(("reference", n, references[n]))
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 3.0), squeeze=False)
    for ax, (kind, name, v) in zip(axes[0], cols):
        ax.set_axis_off()
        ax.set_title(f"{kind}\n{name}", fontsize=9)
        if isinstance(v, str) or get_modality(name).layout is not Layout.IMAGE:
            text = (
                v
                if isinstance(v, str)
                else "lat {:.3f}\nlon {:.3f}".format(*np.asarray(v, np.float64).ravel()[:2])
            )
            ax.text(
                0.5,
                0.5,
                _wrap(text),
                ha="center",
                va="center",
                fontsize=8,
                wrap=True,
                transform=ax.transAxes,
            )
            continue
        limits = None
        if name == "DEM":  # one colour scale for the generated and the reference DEM
            both = [
                np.asarray(x, np.float32).ravel()
                for x in (generated.get("DEM"), references.get("DEM"), inputs.get("DEM"))
                if x is not None
            ]
            arr = np.concatenate(both)
            limits = (float(np.nanmin(arr)), float(np.nanmax(arr)))
        ax.imshow(render(name, np.asarray(v), limits))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 28) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:12])


# --------------------------------------------------------------------------- examples


def _to_display(name: str, value: Any, i: int) -> Any:
    if isinstance(value, list):
        return value[i]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)[i]


def write_examples(
    model: TerraloomModel,
    tokenizers: Mapping[str, Any],
    cond: Conditioning,
    refs: Sequence[SampleRef],
    targets: Sequence[str],
    out: str | os.PathLike[str],
    cfg: SamplingConfig | Mapping[str, SamplingConfig] = SamplingConfig(),
    *,
    seed: int = 0,
    chain: bool = True,
    references: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``targets`` for every sample of ``cond`` and write, per sample, under
    ``out/<sample_id>/``: ``<TARGET>.tif`` (image targets, in the sample's CRS on the crop's
    grid), ``generated.json`` (GEO, CAPTION, token ids) and ``panel.png``.

    Returns one record per sample with the written paths.
    """
    import json

    targets = [get_modality(t).name for t in targets]
    missing = [t for t in targets if t not in tokenizers]
    if missing:
        raise ValueError(f"no tokenizer for {missing}: tokens cannot be decoded to pixels")
    gen = generate(model, cond, targets, cfg, seed=seed, chain=chain)
    decoded = {
        t: _cpu_any(decode_tokens(tokenizers[t], t, gen.tokens[t].cpu(), gen.lengths.get(t)))
        for t in targets
    }
    shown_inputs: dict[str, Any] = {n: v.cpu().numpy() for n, v in cond.pixels.items()}
    for n, v in cond.tokens.items():
        if n not in shown_inputs and n in tokenizers:
            shown_inputs[n] = _cpu_any(
                decode_tokens(tokenizers[n], n, v.cpu(), cond.lengths.get(n))
            )
    records = []
    for i, ref in enumerate(refs):
        d = Path(out) / _safe(ref.sample_id)
        d.mkdir(parents=True, exist_ok=True)
        rec: dict[str, Any] = {
            "sample_id": ref.sample_id,
            "split": ref.split,
            "row": ref.row,
            "epsg": ref.epsg,
            "dir": str(d),
            "files": {},
        }
        meta: dict[str, Any] = {"sample_id": ref.sample_id, "crop": list(ref.crop), "targets": {}}
        for t in targets:
            v = _to_display(t, decoded[t], i)
            entry: dict[str, Any] = {"tokens": gen.tokens[t][i].cpu().tolist()}
            if t in gen.lengths:
                entry["length"] = int(gen.lengths[t][i])
            if get_modality(t).is_image:
                rec["files"][t] = str(write_geotiff(d / f"{t}.tif", v, ref, t))
            elif t == "GEO":
                entry["lat"], entry["lon"] = (float(a) for a in np.asarray(v).ravel()[:2])
            else:
                entry["text"] = str(v)
            meta["targets"][t] = entry
        (d / "generated.json").write_text(json.dumps(meta, indent=2))
        rec["files"]["json"] = str(d / "generated.json")
        refs_i = {n: _to_display(n, v, i) for n, v in (references or {}).items() if n in targets}
        rec["files"]["panel"] = str(
            write_panel(
                d / "panel.png",
                {n: _to_display(n, v, i) for n, v in shown_inputs.items()},
                {t: _to_display(t, decoded[t], i) for t in targets},
                refs_i,
                title=f"{ref.sample_id}: {' + '.join(cond.modalities)} -> {' -> '.join(targets)}",
            )
        )
        records.append(rec)
    return records


def _cpu_any(x: Any) -> Any:
    return x.cpu() if isinstance(x, torch.Tensor) else x


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def reference_values(
    reader: SampleReader, names: Sequence[str], rows: np.ndarray, crops: np.ndarray
) -> dict[str, Any]:
    """Stored values of ``names`` for the crops (GEO as (B, 2) lat/lon, CAPTION as text)."""
    out: dict[str, Any] = {}
    for n in names:
        m = get_modality(n)
        if m.name not in set(reader.group.array_keys()):
            continue
        v = reader.pixels(m.name, rows, crops)
        if m.layout is Layout.TEXT:
            out[m.name] = [
                bytes(np.asarray(r, np.uint8)).rstrip(b"\0").decode("utf-8", "replace")
                for r in v.numpy()
            ]
        else:
            out[m.name] = v
    return out


# --------------------------------------------------------------------------- CLI


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint directory (``model.safetensors`` + ``config.json``) or a run directory."""
    from terraloom.model.checkpoint import latest_checkpoint

    p = Path(path)
    if (p / "model.safetensors").is_file() and (p / "config.json").is_file():
        return p
    if p.is_dir():
        ck = latest_checkpoint(p)
        if ck is not None:
            return ck
    raise FileNotFoundError(
        f"{p} is neither a checkpoint (model.safetensors + config.json) nor a run directory with one"
    )


def checkpoint_data_paths(ckpt: Path) -> dict[str, str]:
    """``data.tokens`` / ``data.corpus`` recorded in a training checkpoint's config, if any.

    Training records them absolute; a relative one (an older or hand-written checkpoint) is
    taken relative to the run directory (the checkpoint's parent) when it exists there, so
    a run moved together with its data keeps working from any working directory.
    """
    import json

    meta = json.loads((ckpt / "config.json").read_text())
    data = meta.get("data") or {}
    out = {k: str(data[k]) for k in ("tokens", "corpus") if data.get(k)}
    for k, v in out.items():
        if "://" not in v and not Path(v).is_absolute() and (ckpt.parent / v).exists():
            out[k] = str(ckpt.parent / v)
    return out


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TerraloomModel:
    return TerraloomModel.from_pretrained(resolve_checkpoint(path), map_location=device).eval()


def parse_inputs(items: Sequence[str]) -> dict[str, str]:
    """``["S1GRD=sample_id", "DEM=path.tif"]`` -> {"S1GRD": ..., "DEM": ...}."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise ValueError(f"--input {item!r} is not MODALITY=SAMPLE_ID|PATH")
        out[get_modality(name).name] = value.strip()
    if not out:
        raise ValueError("give at least one --input MODALITY=SAMPLE_ID|PATH")
    return out


def run_generate_command(args: Any) -> int:
    """``terraloom-model generate`` (see ``model.cli``)."""
    import json

    device = torch.device(args.device)
    ckpt = resolve_checkpoint(args.checkpoint)
    model = TerraloomModel.from_pretrained(ckpt, map_location=device).eval()
    paths = checkpoint_data_paths(ckpt)
    tokens_arg = args.tokens or paths.get("tokens")
    corpus_arg = args.corpus or paths.get("corpus")
    tokens_root = Path(tokens_arg) if tokens_arg else None
    inputs = parse_inputs(args.input)
    targets = [get_modality(t).name for t in args.target.split(",") if t.strip()]
    if not targets:
        raise ValueError("--target needs at least one modality")
    if args.tokenizers:
        tok_root = Path(args.tokenizers)
    elif tokens_root is not None:
        tok_root = tokens_root.parent / "tokenizers"
    else:
        raise ValueError("--tokenizers is needed (no token store to find them next to)")
    tokenizers: dict[str, Any] = {}
    for n in dict.fromkeys([*targets, *inputs]):
        try:
            tokenizers.update(load_tokenizers(tok_root, [n], device))
        except FileNotFoundError:
            if n in targets:
                raise
    cfg = SamplingConfig(
        steps=args.steps,
        schedule=args.schedule,
        order=args.order,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        cfg_scale=args.cfg,
    )
    files = {n: v for n, v in inputs.items() if Path(v).is_file()}
    ids = {n: v for n, v in inputs.items() if n not in files}
    if files and ids:
        raise ValueError("mixing sample ids and files in --input is not supported")
    cond = Conditioning()
    references: dict[str, Any] = {}
    refs: list[SampleRef] = []
    keys = {s.key for s in model.specs.inputs}
    if ids:
        if len(set(ids.values())) > 1:
            raise ValueError(
                f"inputs name different samples {sorted(set(ids.values()))}; generate from one sample at a time"
            )
        sample_id = next(iter(ids.values()))
        if not corpus_arg:
            raise ValueError(
                "--corpus is needed to look up sample ids (the checkpoint records none)"
            )
        split, row = lookup_sample(corpus_arg, sample_id)
        has_tokens = (
            tokens_root is not None and (tokens_root / f"{split}.zarr" / "zarr.json").is_file()
        )
        reader = SampleReader(corpus_arg, tokens_root if has_tokens else None, split)
        rows = np.array([row])
        cond = reader.conditioning(model, list(ids), rows, args.crop, scales=args.scales)
        crops = reader.crops(rows, args.crop)
        refs = reader.refs(rows, crops)
        references = reference_values(reader, targets, rows, crops)
    for n, path in files.items():
        px, ref = read_geotiff(path, n, model.cfg.image_px)
        refs = [ref]
        if n + PIXEL_SUFFIX in keys and args.scales in ("both", "pixels"):
            cond.pixels[n] = px
        if n + TOKEN_SUFFIX in keys and args.scales in ("both", "tokens") and n in tokenizers:
            cond.tokens[n] = tokenizers[n].encode(px.to(device)).reshape(1, -1).cpu()
        if n not in cond.pixels and n not in cond.tokens:
            raise ValueError(
                f"the model cannot take {n} from a file (no pixel input, no tokenizer for its tokens)"
            )
    records = write_examples(
        model,
        tokenizers,
        cond,
        refs,
        targets,
        args.out,
        cfg,
        seed=args.seed,
        chain=not args.no_chain,
        references=references,
    )
    for r in records:
        print(json.dumps(r, indent=2))
    return 0
