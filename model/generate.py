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
(:func:`decode_tokens`). Inputs are *stored* values (pixels, normalised by the registry's
``Modality.normalize`` as in training) or token ids; this module does its own patching so
callers never need the model's batch format. Reading corpus samples is
``model.samples``, GeoTIFF I/O ``model.geotiff``, the written examples (GeoTIFFs, JSON and
panels) ``model.examples`` and the ``generate`` command ``model.generate_command``.

Why one module of ~700 lines: image and sequence decoding, guidance and chaining are one
decoding loop: they share the conditioning, the encoder batch built from stored inputs, the
logit filtering and the seeded sampling, and a change to one (a new schedule, a new input
kind) must be made against all of them. Everything around the loop lives elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from terraloom.model.config import PIXEL_SUFFIX, TOKEN_SUFFIX, Kind, TargetSpec
from terraloom.model.transformer import Encoded, Queries, TerraloomModel
from terraloom.schemas.modalities import GEO_BIN_DEG, Layout, get_modality

SCHEDULES = ("cosine", "linear")
ORDERS = ("confidence", "random")
DECODES = ("tokens", "expected")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens of one target are drawn.

    ``temperature`` 0 means argmax (deterministic even without a seed); ``top_k`` 0 and
    ``top_p`` 1 disable the filters; ``cfg_scale`` 0 disables guidance (logits
    ``cond + s * (cond - uncond)`` otherwise). ``choice_temperature`` is MaskGIT's Gumbel noise
    on the confidence used to choose which positions to commit, annealed to 0 over the steps.

    ``decode`` says how an image target becomes pixels: ``"tokens"`` decodes the committed
    codes; ``"expected"`` decodes, per position, the expected latent under the distribution
    the position was committed from (``softmax(logits / T)`` with top-k/top-p applied; T = 1
    when ``temperature`` is 0), see ``FSQImageTokenizer.decode_expected``. The tokens (and
    what a chain feeds on) are the same either way. "expected" keeps a (B, N, V) float
    tensor per target.
    """

    steps: int = 8
    schedule: str = "cosine"
    order: str = "confidence"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    choice_temperature: float = 4.5
    cfg_scale: float = 0.0
    decode: str = "tokens"
    #: Longest generated sequence (GEO / CAPTION tokens); None = the model's maximum.
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, got {self.decode!r}")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
        if self.choice_temperature < 0:
            raise ValueError("choice_temperature must be >= 0")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError("max_len must be >= 1")


GREEDY = SamplingConfig(temperature=0.0, choice_temperature=0.0)
"""Argmax tokens, most confident positions first."""

EXPECTED = SamplingConfig(steps=4, temperature=0.0, choice_temperature=0.0, decode="expected")
"""Argmax tokens in 4 steps, images decoded from the expected latents: the evaluation setting
(docs/model.md, "Sampling controls")."""


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
        norm = get_modality(name).normalize(px.detach().cpu().numpy())
        patches = patchify(torch.from_numpy(norm).to(device), cfg.patch_px)
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


def _setup(
    model: TerraloomModel, cond: Conditioning, target: str, kind: Kind
) -> tuple[str, int, TargetSpec, Conditioning]:
    """A target's name, index and spec (of the decoder ``kind`` asked for), and the
    conditioning without it (a target is never its own input)."""
    name = get_modality(target).name
    j, spec = _target(model, name)
    if spec.kind is not kind:
        other = "generate_sequence" if kind is Kind.IMAGE_TOKENS else "generate_image"
        what = "a sequence" if kind is Kind.IMAGE_TOKENS else "an image modality"
        raise ValueError(f"{name} is {what}; use {other}")
    return name, j, spec, cond.without(name)


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
    probs: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, n_positions) codes of an image target by iterative parallel decoding.

    ``trace`` (optional list) receives the ``known`` mask after every step; ``probs``
    (optional list) receives one (B, n_positions, V) tensor: each position's distribution
    at the step it was committed (see ``SamplingConfig.decode``). When the model
    does not take the target at the token scale, committed tokens cannot be fed back, so
    all positions are decoded in one step.
    """
    name, j, spec, cond = _setup(model, cond, target, Kind.IMAGE_TOKENS)
    device = _device(model)
    b = cond.batch_size
    n = spec.n_positions
    feed_back = _takes_tokens(model, name)
    counts = unmask_schedule(n, cfg.steps if feed_back else 1, cfg.schedule)
    codes = torch.zeros(b, n, dtype=torch.long, device=device)
    known = torch.zeros(b, n, dtype=torch.bool, device=device)
    ar = torch.arange(n, device=device)
    dist = torch.zeros(b, n, spec.vocab, device=device) if probs is not None else None
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
        if dist is not None:
            t = cfg.temperature or 1.0
            p_step = torch.softmax(filter_logits(logits.float() / t, cfg.top_k, cfg.top_p), -1)
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
        if dist is not None:
            rows = torch.arange(b, device=device)[:, None].expand_as(pos)
            dist[rows, pos] = p_step[chosen].view(b, pos.shape[1], -1)
        known.scatter_(1, pos, True)
        if trace is not None:
            trace.append(known.clone())
    if probs is not None and dist is not None:
        kept = dist[..., : spec.base_vocab]
        probs.append(kept / kept.sum(-1, keepdim=True).clamp_min(1e-12))
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
    name, j, spec, cond = _setup(model, cond, target, Kind.SEQUENCE)
    device = _device(model)
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
    #: Image targets generated with ``decode="expected"``: (B, N, V) distributions.
    probs: dict[str, torch.Tensor] = field(default_factory=dict)


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
    dists: dict[str, torch.Tensor] = {}
    current = cond
    try:
        for raw in targets:
            name = get_modality(raw).name
            c = _config_for(cfg, name)
            m = get_modality(name)
            if m.is_image:
                kept: list[torch.Tensor] | None = [] if c.decode == "expected" else None
                ids = generate_image(model, current, name, c, generator, probs=kept)
                if kept:
                    dists[name] = kept[0]
                lens = None
            else:
                ids, lens = generate_sequence(model, current, name, c, generator)
                lengths[name] = lens
            tokens[name] = ids
            if chain and _takes_tokens(model, name):
                current = current.with_tokens(name, ids, lens)
    finally:
        model.train(was_training)
    return Generated(tokens, lengths, current, dists)


def _config_for(cfg: SamplingConfig | Mapping[str, SamplingConfig], name: str) -> SamplingConfig:
    if isinstance(cfg, SamplingConfig):
        return cfg
    if name in cfg:
        return cfg[name]
    return GREEDY if not get_modality(name).is_image else SamplingConfig()


# --------------------------------------------------------------------------- decoding


def decode_tokens(
    tokenizer: Any,
    name: str,
    ids: torch.Tensor,
    lengths: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
) -> Any:
    """Tokens -> stored values with the modality's tokenizer.

    Images: (B, N) codes -> (B, C, H, W) float32 (LULC legend values), or, given ``probs``
    (B, N, V) (``Generated.probs``), the expected latents decoded; GEO: (B, 2) float64
    lat/lon; CAPTION: list of str.
    """
    m = get_modality(name)
    if m.is_image:
        g = int(round(math.sqrt(ids.shape[1])))
        if probs is not None:
            return tokenizer.decode_expected(probs.reshape(probs.shape[0], g, g, -1))
        return tokenizer.decode(ids.reshape(ids.shape[0], g, g).long())
    if lengths is None:
        lengths = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
    return tokenizer.decode_batch(ids.cpu(), lengths.cpu())
