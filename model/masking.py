"""4M-style input/target masking with fixed per-sample budgets (static shapes).

Per sample: draw a Dirichlet mixture component, then Dirichlet weights over the input
modalities and over the target modalities; split the fixed input budget and the fixed
target budget across modalities in proportion to the weights (exact integer split with
per-modality capacities, water-filling the overflow), pick image positions at random,
and span-mask sequences (GEO, CAPTION) with sentinels.

Rules that make the task well posed:

* an image target position is never an input of the same modality at either scale
  (``S2L2A@px`` or ``S2L2A@tok`` at position p blocks the ``S2L2A`` target at p);
* a sequence's input is its span-masked version (kept tokens + one sentinel per masked
  span, exactly ``n_in`` tokens); its target is ``S_1 span_1 S_2 span_2 ... S_end``,
  decoded causally (teacher forcing), truncated to a contiguous window when its budget is
  smaller than the target sequence.

Randomness comes from one generator per sample (seeded by the loader from seed, epoch and
the sample's position in the epoch), so a sample's masks do not depend on the batch size,
the worker or the data-parallel rank that builds it. Work is vectorised over the batch
except the span masking of sequences (a few small NumPy ops per sample).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from terraloom.model.config import Kind, MaskingConfig, ModalitySpecs


@dataclass(frozen=True)
class MaskPlan:
    """Which candidates are inputs and targets, before any pixel is read."""

    #: (B, M_in) input tokens per modality; rows sum to the input budget when possible.
    n_in: np.ndarray
    #: (B, M_t) target tokens per modality.
    n_tgt: np.ndarray
    #: (B, M_in, W) candidate is an input (images: position; sequences: input-sequence index).
    in_sel: np.ndarray
    #: (B, M_t, W) candidate is a target (images: position; sequences: target-sequence index).
    tgt_sel: np.ndarray
    #: Input index -> (B, W) span-masked input sequences (sequence inputs only).
    in_seq: dict[int, np.ndarray]
    #: Target index -> (B, W) full target sequences (sequence targets only).
    tgt_seq: dict[int, np.ndarray]
    #: Mixture component drawn per sample.
    mixture: np.ndarray

    @property
    def width(self) -> int:
        return int(self.in_sel.shape[-1])


def candidate_width(specs: ModalitySpecs) -> int:
    return max([s.n_positions for s in specs.inputs] + [t.n_positions for t in specs.targets])


def mixture_alphas(
    specs: ModalitySpecs, cfg: MaskingConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, M_in) input alphas, (K, M_t) target alphas and (K,) mixture probabilities."""
    k = len(cfg.mixtures)
    a_in = np.zeros((k, len(specs.inputs)))
    a_t = np.zeros((k, len(specs.targets)))
    for c, mix in enumerate(cfg.mixtures):
        only = {s.upper().replace("@PX", "@px").replace("@TOK", "@tok") for s in mix.input_only}
        for i, s in enumerate(specs.inputs):
            if not only or s.key in only or s.modality in only:
                a_in[c, i] = mix.input_alpha
        only_t = {s.upper() for s in mix.target_only}
        for j, t in enumerate(specs.targets):
            if not only_t or t.modality in only_t:
                a_t[c, j] = mix.target_alpha
    w = np.array([m.weight for m in cfg.mixtures], np.float64)
    return a_in, a_t, w / w.sum()


def split_budget(weights: np.ndarray, caps: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` tokens per row across modalities in proportion to ``weights``.

    Exact integer split (largest remainder) under per-modality capacities ``caps``; the
    overflow of a full modality goes to the others in proportion to their weights. Only
    modalities with a positive weight receive tokens, so a row sums to
    ``min(total, capacity of its positive-weight modalities)``.
    """
    w = np.where(caps > 0, np.asarray(weights, np.float64), 0.0)
    caps = np.asarray(caps, np.int64)
    n = np.zeros_like(caps)
    remaining = np.minimum(total, np.where(w > 0, caps, 0).sum(1))
    for _ in range(caps.shape[1] + 1):
        if not remaining.any():
            break
        spare = caps - n
        ww = np.where(spare > 0, w, 0.0)
        s = ww.sum(1, keepdims=True)
        share = np.divide(ww, s, out=np.zeros_like(ww), where=s > 0) * remaining[:, None]
        base = np.floor(share).astype(np.int64)
        extra = remaining - base.sum(1)
        frac = np.where(ww > 0, share - base, -1.0)
        rank = np.argsort(np.argsort(-frac, axis=1, kind="stable"), axis=1, kind="stable")
        alloc = np.minimum(base + (rank < extra[:, None]), spare)
        n += alloc
        remaining = remaining - alloc.sum(1)
    return n


def _composition(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """Random split of ``total`` into ``parts`` positive integers."""
    if parts == 1:
        return np.array([total])
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [total]]))


def span_mask(
    seq: np.ndarray, n_in: int, base_vocab: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Span-mask ``seq`` so that the input has exactly ``n_in`` tokens.

    Input: kept tokens with each masked span replaced by a sentinel ``base_vocab + j``;
    target: ``S_0 span_0 S_1 span_1 ... S_end`` (T5/4M style). ``n_in == 0`` makes the whole
    sequence one span (input empty); ``n_in >= len(seq)`` keeps everything (target ``S_0``).
    """
    seq = np.asarray(seq, np.int64)
    length = len(seq)
    if n_in >= length:
        return seq.copy(), np.array([base_vocab], np.int64)
    if n_in <= 0:
        return np.zeros(0, np.int64), np.concatenate([[base_vocab], seq, [base_vocab + 1]]).astype(
            np.int64
        )
    s = int(rng.integers(1, (n_in + 1) // 2 + 1))  # spans; kept k = n_in - s >= s - 1
    kept = n_in - s
    spans = _composition(rng, length - kept, s)
    free = kept - (s - 1)  # kept tokens beyond the one each interior gap needs
    cuts = np.sort(rng.choice(free + s, s, replace=False))
    gaps = np.diff(np.concatenate([[-1], cuts, [free + s]])) - 1
    gaps[1:-1] += 1
    inp: list[np.ndarray] = []
    tgt: list[np.ndarray] = []
    at = 0
    for j in range(s):
        inp.append(seq[at : at + gaps[j]])
        at += gaps[j]
        inp.append(np.array([base_vocab + j]))
        tgt.append(np.array([base_vocab + j]))
        tgt.append(seq[at : at + spans[j]])
        at += spans[j]
    inp.append(seq[at : at + gaps[s]])
    tgt.append(np.array([base_vocab + s]))
    return np.concatenate(inp).astype(np.int64), np.concatenate(tgt).astype(np.int64)


def unmask_sequence(inp: np.ndarray, tgt: np.ndarray, base_vocab: int) -> np.ndarray:
    """Invert :func:`span_mask`: fill each input sentinel with its span from the target.

    An empty input stands for a fully masked sequence (one span, ``S_0``).
    """
    if len(inp) == 0:
        inp = np.array([base_vocab])
    spans: dict[int, list[int]] = {}
    current: int | None = None
    for t in tgt.tolist():
        if t >= base_vocab:
            current = t
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out: list[int] = []
    for t in inp.tolist():
        out.extend(spans.get(t, []) if t >= base_vocab else [t])
    return np.asarray(out, np.int64)


def plan_masks(
    specs: ModalitySpecs,
    cfg: MaskingConfig,
    rngs: Sequence[np.random.Generator],
    avail_in: np.ndarray,
    avail_tgt: np.ndarray,
    sequences: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> MaskPlan:
    """Decide inputs and targets for a batch.

    ``avail_*`` are (B, M) booleans (modality present for the sample); ``sequences`` maps a
    sequence modality to ``(ids (B, L), lengths (B,))``.
    """
    b = len(rngs)
    m_in, m_t = len(specs.inputs), len(specs.targets)
    width = candidate_width(specs)
    n_img = specs.n_image_positions
    a_in, a_t, mix_p = mixture_alphas(specs, cfg)

    # One generator per sample, drawn in a fixed order: mixture, input then target gammas,
    # input then target position keys. Consecutive draws of the same kind are made in one
    # call (the same numbers as separate calls; fewer calls is what the loader's hot path
    # needs, see docs/bench.md, bench/loader.py).
    mixture = np.zeros(b, np.int64)
    w_all = np.zeros((b, m_in + m_t))
    keys_all = np.empty((b, m_in + m_t, n_img))
    cum_p = np.cumsum(mix_p).tolist()
    a_all = np.concatenate([a_in, a_t], 1)
    last = len(mix_p) - 1
    for i, rng in enumerate(rngs):
        c = min(bisect.bisect_right(cum_p, rng.random()), last)
        mixture[i] = c
        w_all[i] = rng.gamma(a_all[c])
        rng.random(out=keys_all[i])
    w_in = _normalise(w_all[:, :m_in] * avail_in, avail_in)
    w_t = _normalise(w_all[:, m_in:] * avail_tgt, avail_tgt)
    keys_in, keys_t = keys_all[:, :m_in], keys_all[:, m_in:]

    seq_len = {name: np.asarray(lens, np.int64) for name, (_, lens) in sequences.items()}
    caps_in = np.zeros((b, m_in), np.int64)
    for i, s in enumerate(specs.inputs):
        cap = seq_len[s.modality] if s.kind is Kind.SEQUENCE else np.full(b, n_img)
        caps_in[:, i] = np.where(avail_in[:, i], np.minimum(cap, s.n_positions), 0)
    n_in = split_budget(w_in, caps_in, cfg.input_budget)

    # Inputs: random image positions; span-masked sequences.
    in_sel = np.zeros((b, m_in, width), bool)
    img_in = [i for i, s in enumerate(specs.inputs) if s.kind is not Kind.SEQUENCE]
    if img_in:
        in_sel[:, img_in, :n_img] = _smallest(keys_in[:, img_in], n_in[:, img_in])
    in_seq: dict[int, np.ndarray] = {}
    tgt_from_input: dict[str, list[np.ndarray]] = {}
    for i, s in enumerate(specs.inputs):
        if s.kind is not Kind.SEQUENCE:
            continue
        ids, lens = sequences[s.modality]
        arr = np.zeros((b, width), np.int64)
        tgts = []
        for r in range(b):
            inp, tgt = span_mask(ids[r, : lens[r]], int(n_in[r, i]), s.base_vocab, rngs[r])
            arr[r, : len(inp)] = inp
            in_sel[r, i, : len(inp)] = True
            tgts.append(tgt)
        in_seq[i] = arr
        tgt_from_input[s.modality] = tgts

    # Targets: image positions not visible at either scale; sequence targets from the spans.
    caps_t = np.zeros((b, m_t), np.int64)
    blocked = np.zeros((b, m_t, n_img), bool)
    tgt_seq: dict[int, np.ndarray] = {}
    for j, t in enumerate(specs.targets):
        if t.kind is Kind.SEQUENCE:
            from_input = tgt_from_input.get(t.modality)
            if from_input is None:  # not an input: the whole sequence is the target
                ids, lens = sequences[t.modality]
                tgts = [span_mask(ids[r, : lens[r]], 0, t.base_vocab, rngs[r])[1] for r in range(b)]
            else:
                tgts = from_input
            arr = np.zeros((b, width), np.int64)
            for r, tg in enumerate(tgts):
                arr[r, : len(tg)] = tg
            tgt_seq[j] = arr
            caps_t[:, j] = np.where(avail_tgt[:, j], [len(tg) for tg in tgts], 0)
        else:
            for i, s in enumerate(specs.inputs):
                if s.modality == t.modality and s.kind is not Kind.SEQUENCE:
                    blocked[:, j] |= in_sel[:, i, :n_img]
            caps_t[:, j] = np.where(avail_tgt[:, j], n_img - blocked[:, j].sum(1), 0)
    n_tgt = split_budget(w_t, caps_t, cfg.target_budget)

    tgt_sel = np.zeros((b, m_t, width), bool)
    img_t = [j for j, t in enumerate(specs.targets) if t.kind is not Kind.SEQUENCE]
    if img_t:
        k = np.where(blocked[:, img_t], np.inf, keys_t[:, img_t])
        tgt_sel[:, img_t, :n_img] = _smallest(k, n_tgt[:, img_t])
    for j, t in enumerate(specs.targets):
        if t.kind is not Kind.SEQUENCE:
            continue
        for r in range(b):
            n = int(n_tgt[r, j])
            if n:
                start = int(rngs[r].integers(0, caps_t[r, j] - n + 1))
                tgt_sel[r, j, start : start + n] = True
    return MaskPlan(n_in, n_tgt, in_sel, tgt_sel, in_seq, tgt_seq, mixture)


def _normalise(w: np.ndarray, avail: np.ndarray) -> np.ndarray:
    s = w.sum(1, keepdims=True)
    uniform = avail / np.maximum(avail.sum(1, keepdims=True), 1)
    return np.where(s > 0, w / np.where(s > 0, s, 1.0), uniform)


def _smallest(keys: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Mask of the ``n[...]`` smallest of each row of ``keys`` (..., P).

    What ``argsort(argsort(keys)) < n`` selects (keys are continuous random draws, so
    there are no ties among the selected; blocked positions are ``inf`` and ``n`` never
    exceeds the finite ones), with one sort of only the rows that are neither empty nor
    full: the double argsort of every row was the loader's largest cost.
    """
    p = keys.shape[-1]
    sel = np.zeros(keys.shape, bool)
    sel[n >= p] = True
    part = (n > 0) & (n < p)
    if part.any():
        k = keys[part]
        thr = np.take_along_axis(np.sort(k, axis=-1), (n[part] - 1)[:, None], -1)
        sel[part] = k <= thr
    return sel


def _compact(sel: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, C) candidate mask -> (B, budget) candidate indices (selected first, in order) and pad.

    The order of a stable argsort of ``~sel`` (selected, then the rest, each in index
    order), computed by scattering running counts: linear instead of a sort per row.
    """
    b, c = sel.shape
    cs = np.cumsum(sel, 1, dtype=np.int32)
    n_sel = cs[:, -1:] if c else np.zeros((b, 1), np.int32)
    # selected: their rank among the selected; the rest: after all selected, in order
    dest = np.where(sel, cs - 1, n_sel + np.arange(c, dtype=np.int32) - cs)
    keep = dest < budget
    order = np.zeros((b, budget), np.int64)
    rows, cols = np.nonzero(keep)
    order[rows, dest[rows, cols]] = cols
    pad = np.arange(budget)[None, :] >= n_sel
    return order, pad


def assemble(
    specs: ModalitySpecs,
    cfg: MaskingConfig,
    plan: MaskPlan,
    codes: Mapping[str, np.ndarray],
    pixels: Mapping[str, np.ndarray],
    pixel_dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """Gather a static-shape batch from a plan.

    ``codes`` maps image token modalities to (B, n_img) codes; ``pixels`` maps pixel input
    keys to (T, C*256) normalised patches of the selected positions in (sample, position)
    order. Returns the tensors the model consumes:

    * ``enc_ids/enc_mod/enc_pos`` (B, N_in) int64, ``enc_pad`` (B, N_in) bool;
    * ``pix.<key>`` (T, C*256) patches and ``pix_idx.<key>`` (T,) flat slot indices;
    * ``tgt_ids`` (labels) / ``tgt_prev`` (teacher-forced previous token of sequences) /
      ``tgt_mod`` / ``tgt_pos`` (B, N_tgt) int64, ``tgt_pad`` bool, ``tgt_idx.<mod>`` (T_m,)
      flat slot indices per target modality, ``tgt_count`` (M_t,) int64;
    * ``n_in`` (B, M_in), ``n_tgt`` (B, M_t) per-sample counts.
    """
    b, m_in, width = plan.in_sel.shape
    m_t = plan.tgt_sel.shape[1]
    n_img = specs.n_image_positions

    ids_in = np.zeros((b, m_in, width), np.int64)
    for i, s in enumerate(specs.inputs):
        if s.kind is Kind.IMAGE_TOKENS:
            ids_in[:, i, :n_img] = codes[s.modality]
        elif s.kind is Kind.SEQUENCE:
            ids_in[:, i] = plan.in_seq[i]
    order, enc_pad = _compact(plan.in_sel.reshape(b, -1), cfg.input_budget)
    enc_mod = order // width
    enc_pos = order % width
    enc_ids = np.take_along_axis(ids_in.reshape(b, -1), order, 1)
    enc_mod[enc_pad] = 0
    enc_pos[enc_pad] = 0
    enc_ids[enc_pad] = 0

    out: dict[str, torch.Tensor] = {}
    for i, s in enumerate(specs.inputs):
        if s.kind is not Kind.PIXELS:
            continue
        idx = np.flatnonzero((enc_mod == i) & ~enc_pad)
        vals = pixels.get(s.key)
        if vals is None:
            if len(idx):
                raise ValueError(f"no pixels given for {s.key} but {len(idx)} slots need them")
            vals = np.zeros((0, s.patch_dim), np.float32)
        if len(vals) != len(idx):
            raise ValueError(f"{s.key}: {len(vals)} patches for {len(idx)} slots")
        out[f"pix_idx.{s.key}"] = torch.from_numpy(idx.astype(np.int64))
        out[f"pix.{s.key}"] = torch.from_numpy(np.ascontiguousarray(vals)).to(pixel_dtype)

    lab = np.zeros((b, m_t, width), np.int64)
    prev = np.zeros((b, m_t, width), np.int64)
    for j, t in enumerate(specs.targets):
        if t.kind is Kind.SEQUENCE:
            seq = plan.tgt_seq[j]
            lab[:, j] = seq
            prev[:, j, 0] = t.bos
            prev[:, j, 1:] = seq[:, :-1]
        else:
            lab[:, j, :n_img] = codes[t.modality]
    order_t, tgt_pad = _compact(plan.tgt_sel.reshape(b, -1), cfg.target_budget)
    tgt_mod = order_t // width
    tgt_pos = order_t % width
    tgt_ids = np.take_along_axis(lab.reshape(b, -1), order_t, 1)
    tgt_prev = np.take_along_axis(prev.reshape(b, -1), order_t, 1)
    for a in (tgt_mod, tgt_pos, tgt_ids, tgt_prev):
        a[tgt_pad] = 0
    counts = np.zeros(m_t, np.int64)
    for j, t in enumerate(specs.targets):
        idx = np.flatnonzero((tgt_mod == j) & ~tgt_pad)
        counts[j] = len(idx)
        out[f"tgt_idx.{t.modality}"] = torch.from_numpy(idx.astype(np.int64))

    out.update(
        enc_ids=torch.from_numpy(enc_ids),
        enc_mod=torch.from_numpy(enc_mod),
        enc_pos=torch.from_numpy(enc_pos),
        enc_pad=torch.from_numpy(enc_pad),
        tgt_ids=torch.from_numpy(tgt_ids),
        tgt_prev=torch.from_numpy(tgt_prev),
        tgt_mod=torch.from_numpy(tgt_mod),
        tgt_pos=torch.from_numpy(tgt_pos),
        tgt_pad=torch.from_numpy(tgt_pad),
        tgt_count=torch.from_numpy(counts),
        n_in=torch.from_numpy(plan.n_in),
        n_tgt=torch.from_numpy(plan.n_tgt),
    )
    return out
