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

Randomness is counter-based: one 64-bit key per sample (the loader derives it from seed,
epoch and the sample's position in the epoch) and every draw a hash of (key, stream,
counter), so a sample's masks do not depend on the batch size, the worker or the
data-parallel rank that builds it, and the whole batch, span masking included, is drawn and
planned in a few vectorised NumPy passes: a NumPy ``Generator`` per sample cost more than
the rest of the loader (docs/scale.md, bench/loader.py).

Why one module of ~620 lines: the per-sample rules (budgets, spans, the image-position
exclusions) and the vectorised batch planner that applies them are one contract, kept
side by side so the vectorised passes are read against the rules they reproduce; the
counter-based keys are the randomness both consume.
"""

from __future__ import annotations

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


# --------------------------------------------------------------------------- randomness
#
# Counter-based: every random number of a sample is a hash of (its key, a stream, a counter),
# so a whole batch is drawn with a few vectorised NumPy passes (no generator per sample) and a
# sample's draws do not depend on the batch, the worker or the rank that builds it.

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_U64 = np.uint64
_STREAM_MIXTURE, _STREAM_BOOST, _STREAM_POSITIONS = 1, 2, 3
_STREAM_WINDOW = 16  # + target index
_STREAM_SPANS = 64  # + 4 x input index (+0 span count, +1 cut keys, +2 gap keys)
_STREAM_GAMMA = 1024  # + attempt
_GAMMA_ATTEMPTS = 256


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijective avalanche of 64 bits), in place on a uint64 array."""
    x ^= x >> _U64(30)
    x *= _U64(_M1)
    x ^= x >> _U64(27)
    x *= _U64(_M2)
    x ^= x >> _U64(31)
    return x


def _mix_int(x: int) -> int:
    """:func:`mix64` of one Python int."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


@dataclass(frozen=True)
class SampleKeys:
    """One 64-bit key per sample; all of a sample's masking randomness derives from it.

    Draw ``j`` of stream ``s`` is ``mix64(key + (s * 2**32 + j) * golden)``: splitmix64's
    sequence started at the key, with disjoint counter ranges per stream.
    """

    keys: np.ndarray  # (B,) uint64

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def derive(cls, parts: Sequence[int], ids: np.ndarray | Sequence[int]) -> SampleKeys:
        """Keys of samples ``ids`` (e.g. positions in an epoch) under ``parts`` (seed, epoch, tag)."""
        base = 0x243F6A8885A308D3
        for p in parts:
            base = _mix_int(base ^ _mix_int(int(p) + _GOLDEN))
        ids = np.asarray(ids, np.int64).astype(np.uint64)
        return cls(mix64(ids * _U64(_GOLDEN) + _U64(base)))

    @classmethod
    def from_rngs(cls, rngs: Sequence[np.random.Generator]) -> SampleKeys:
        """One key per generator (one 64-bit draw each), for callers holding generators."""
        return cls(np.array([r.bit_generator.random_raw() for r in rngs], np.uint64))

    def bits(self, stream: int, n: int) -> np.ndarray:
        """(B, n) uint64 draws of ``stream``."""
        ctr = (np.arange(n, dtype=np.uint64) + _U64(stream << 32)) * _U64(_GOLDEN)
        return mix64(self.keys[:, None] + ctr[None, :])

    def uniform(self, stream: int, n: int) -> np.ndarray:
        """(B, n) float64 uniforms in [0, 1) (53 bits)."""
        return (self.bits(stream, n) >> _U64(11)).astype(np.float64) * 2.0**-53

    def position_keys(self, stream: int, rows: int, n: int) -> np.ndarray:
        """(B, rows, n) distinct float64 sort keys: 32 random bits per position, ties broken
        by the position (so "the k smallest" is always exactly k positions)."""
        half = -(-n // 2)
        h = self.bits(stream, rows * half).astype("<u8", copy=False).view("<u4")
        k = h.reshape(len(self), rows, 2 * half)[..., :n].astype(np.float64)
        k *= float(n)
        k += np.arange(n, dtype=np.float64)
        return k


def gamma(keys: SampleKeys, alpha: np.ndarray) -> np.ndarray:
    """(B, M) Gamma(alpha, 1) variates (0 where alpha is 0): Marsaglia-Tsang, vectorised.

    Each attempt draws a normal (Box-Muller) and a uniform per variate from its own stream;
    the rejected ones (a few percent) try again with the next attempt's stream. Shapes
    below 1 are boosted: Gamma(a) = Gamma(a + 1) * U^(1/a).
    """
    b, m = alpha.shape
    a = np.asarray(alpha, np.float64)
    boost = (a > 0) & (a < 1)
    d = np.where(boost, a + 1.0, a) - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * np.maximum(d, 1e-12))
    out = np.zeros((b, m))
    todo = a > 0
    for attempt in range(_GAMMA_ATTEMPTS):
        if not todo.any():
            break
        u = keys.uniform(_STREAM_GAMMA + attempt, 3 * m).reshape(b, m, 3)
        x = np.sqrt(-2.0 * np.log1p(-u[..., 0])) * np.cos(2.0 * np.pi * u[..., 1])
        v = (1.0 + c * x) ** 3
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (v > 0) & (np.log1p(-u[..., 2]) < 0.5 * x * x + d - d * v + d * np.log(v))
        take = todo & ok
        out[take] = (d * v)[take]
        todo &= ~ok
    else:  # pragma: no cover - a rejection rate of a few percent over 256 attempts
        raise RuntimeError("gamma sampling did not converge")
    if boost.any():
        u = keys.uniform(_STREAM_BOOST, m)
        with np.errstate(divide="ignore"):
            out = np.where(boost, out * u ** (1.0 / np.where(boost, a, 1.0)), out)
    return out


def _nonzero2(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-D array, several times faster (one flat scan, then divmod)."""
    flat = np.flatnonzero(a)
    rows = flat // a.shape[1]
    return rows, flat - rows * a.shape[1]


def _pack(emit: np.ndarray, values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``values`` where ``emit`` in order, left-aligned in (B, width), and counts."""
    rows, cols = _nonzero2(emit)
    counts = np.count_nonzero(emit, 1)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    out = np.zeros((emit.shape[0], width), np.int64)
    out[rows, rank] = values[rows, cols]
    return out, counts


def _sorted_marks(sel: np.ndarray, width: int, fill: int) -> np.ndarray:
    """(B, width) column indices of each row's marked entries in order, ``fill`` after."""
    out, counts = _pack(sel, np.broadcast_to(np.arange(sel.shape[1]), sel.shape), width)
    out[np.arange(width) >= counts[:, None]] = fill
    return out


def span_mask_batch(
    ids: np.ndarray,
    lens: np.ndarray,
    n_in: np.ndarray,
    base_vocab: int,
    keys: SampleKeys,
    stream: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`span_mask` of a whole batch: (inputs (B, width), their lengths, targets
    (B, width), their lengths), zero padded.

    The same construction per row: ``s`` spans uniform in 1..(n_in+1)//2, the masked tokens
    split into ``s`` non-empty spans at ``s - 1`` distinct cut points, the kept tokens spread
    over the ``s + 1`` gaps (interior gaps non-empty) by ``s`` distinct bars among
    ``free + s`` slots; all three draws from the row's key, as sort keys over fixed widths.
    """
    ids = np.asarray(ids, np.int64)
    b, length = ids.shape
    lens = np.minimum(np.asarray(lens, np.int64), length)
    n = np.asarray(n_in, np.int64)
    full = n >= lens
    none = (n <= 0) & ~full
    part = ~full & ~none
    half = (n + 1) // 2
    u = keys.uniform(stream, 1)[:, 0]
    s = np.where(part, np.minimum(1 + (u * half).astype(np.int64), half), none.astype(np.int64))
    kept = np.where(part, n - s, np.where(full, lens, 0))
    masked = lens - kept
    free = kept - np.maximum(s - 1, 0)
    pos = np.arange(length + 1)
    # cut points q + 1 (q in 0..masked-2): s - 1 of them; bars: s of free + s slots
    ck = keys.position_keys(stream + 1, 1, length + 1)[:, 0]
    cut = _smallest(np.where(pos < (masked - 1)[:, None], ck, np.inf), np.maximum(s - 1, 0))
    gk = keys.position_keys(stream + 2, 1, length + 1)[:, 0]
    bar = _smallest(np.where(pos < (free + s)[:, None], gk, np.inf), s)
    smax = max(int(s.max(initial=0)), 1)
    c = _sorted_marks(bar, smax, 0)  # bar positions c_j: kept tokens before span j = c_j
    m0 = _sorted_marks(cut, smax, 0) + 1  # masked index where span j + 1 starts
    mstart = np.concatenate([np.zeros((b, 1), np.int64), m0[:, : smax - 1]], 1)
    jj = np.arange(smax)
    mend = np.where(jj + 1 < s[:, None], m0, masked[:, None])  # masked index where j ends
    live = jj < s[:, None]
    st = c + mstart
    en = c + mend
    r = np.broadcast_to(np.arange(b)[:, None], live.shape)[live]
    delta = np.zeros((b, length + 1), np.int64)
    delta[r, st[live]] += 1
    delta[r, en[live]] -= 1
    tok = np.arange(length) < lens[:, None]
    is_masked = (np.cumsum(delta, 1)[:, :length] > 0) & tok
    start = np.zeros((b, length + 1), bool)
    start[r, st[live]] = True
    start = start[:, :length]
    sentinel = base_vocab + np.cumsum(start, 1) - 1
    emit_in = ((tok & ~is_masked) | start) & ~none[:, None]
    inp, n_inp = _pack(emit_in, np.where(start, sentinel, ids), width)
    emit_t = np.concatenate(
        [np.stack([start, is_masked], 2).reshape(b, 2 * length), np.ones((b, 1), bool)], 1
    )
    vals_t = np.concatenate(
        [np.stack([sentinel, ids], 2).reshape(b, 2 * length), (base_vocab + s)[:, None]], 1
    )
    tgt, n_tgt = _pack(emit_t, vals_t, width)
    return inp, n_inp, tgt, n_tgt


def plan_masks(
    specs: ModalitySpecs,
    cfg: MaskingConfig,
    keys: SampleKeys | Sequence[np.random.Generator],
    avail_in: np.ndarray,
    avail_tgt: np.ndarray,
    sequences: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> MaskPlan:
    """Decide inputs and targets for a batch.

    ``keys`` holds one key per sample (:class:`SampleKeys`; generators are turned into keys
    with one draw each); ``avail_*`` are (B, M) booleans (modality present for the sample);
    ``sequences`` maps a sequence modality to ``(ids (B, L), lengths (B,))``.
    """
    keys = keys if isinstance(keys, SampleKeys) else SampleKeys.from_rngs(keys)
    b = len(keys)
    m_in, m_t = len(specs.inputs), len(specs.targets)
    width = candidate_width(specs)
    n_img = specs.n_image_positions
    a_in, a_t, mix_p = mixture_alphas(specs, cfg)

    # Every draw of the batch at once: the mixture, Dirichlet weights (gamma variates),
    # position keys, then span masks and target windows, each from its own stream.
    last = len(mix_p) - 1
    mixture = np.minimum(
        np.searchsorted(np.cumsum(mix_p), keys.uniform(_STREAM_MIXTURE, 1)[:, 0], "right"), last
    ).astype(np.int64)
    w_all = gamma(keys, np.concatenate([a_in, a_t], 1)[mixture])
    w_in = _normalise(w_all[:, :m_in] * avail_in, avail_in)
    w_t = _normalise(w_all[:, m_in:] * avail_tgt, avail_tgt)
    img_in = [i for i, s in enumerate(specs.inputs) if s.kind is not Kind.SEQUENCE]
    img_t = [j for j, t in enumerate(specs.targets) if t.kind is not Kind.SEQUENCE]
    pos_keys = keys.position_keys(_STREAM_POSITIONS, len(img_in) + len(img_t), n_img)
    keys_in, keys_t = pos_keys[:, : len(img_in)], pos_keys[:, len(img_in) :]

    seq_len = {name: np.asarray(lens, np.int64) for name, (_, lens) in sequences.items()}
    caps_in = np.zeros((b, m_in), np.int64)
    for i, s in enumerate(specs.inputs):
        cap = seq_len[s.modality] if s.kind is Kind.SEQUENCE else np.full(b, n_img)
        caps_in[:, i] = np.where(avail_in[:, i], np.minimum(cap, s.n_positions), 0)
    n_in = split_budget(w_in, caps_in, cfg.input_budget)

    # Inputs: random image positions; span-masked sequences.
    in_sel = np.zeros((b, m_in, width), bool)
    if img_in:
        in_sel[:, img_in, :n_img] = _smallest(keys_in, n_in[:, img_in])
    in_seq: dict[int, np.ndarray] = {}
    tgt_from_input: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, s in enumerate(specs.inputs):
        if s.kind is not Kind.SEQUENCE:
            continue
        ids, lens = sequences[s.modality]
        inp, n_inp, tgt, n_tgt_seq = span_mask_batch(
            ids, lens, n_in[:, i], s.base_vocab, keys, _STREAM_SPANS + 4 * i, width
        )
        in_seq[i] = inp
        in_sel[:, i] = np.arange(width) < n_inp[:, None]
        tgt_from_input[s.modality] = (tgt, n_tgt_seq)

    # Targets: image positions not visible at either scale; sequence targets from the spans.
    caps_t = np.zeros((b, m_t), np.int64)
    blocked = np.zeros((b, m_t, n_img), bool)
    tgt_seq: dict[int, np.ndarray] = {}
    for j, t in enumerate(specs.targets):
        if t.kind is Kind.SEQUENCE:
            from_input = tgt_from_input.get(t.modality)
            if from_input is None:  # not an input: the whole sequence is the target
                ids, lens = sequences[t.modality]
                _, _, tgt, n_tgt_seq = span_mask_batch(
                    ids, lens, np.zeros(b, np.int64), t.base_vocab, keys, 0, width
                )
            else:
                tgt, n_tgt_seq = from_input
            tgt_seq[j] = tgt
            caps_t[:, j] = np.where(avail_tgt[:, j], n_tgt_seq, 0)
        else:
            for i, s in enumerate(specs.inputs):
                if s.modality == t.modality and s.kind is not Kind.SEQUENCE:
                    blocked[:, j] |= in_sel[:, i, :n_img]
            caps_t[:, j] = np.where(avail_tgt[:, j], n_img - blocked[:, j].sum(1), 0)
    n_tgt = split_budget(w_t, caps_t, cfg.target_budget)

    tgt_sel = np.zeros((b, m_t, width), bool)
    if img_t:
        k = np.where(blocked[:, img_t], np.inf, keys_t)
        tgt_sel[:, img_t, :n_img] = _smallest(k, n_tgt[:, img_t])
    cols = np.arange(width)
    for j, t in enumerate(specs.targets):
        if t.kind is not Kind.SEQUENCE:
            continue
        n = n_tgt[:, j]
        u = keys.uniform(_STREAM_WINDOW + j, 1)[:, 0]
        start = np.minimum((u * (caps_t[:, j] - n + 1)).astype(np.int64), caps_t[:, j] - n)
        start = np.where(n > 0, start, 0)
        tgt_sel[:, j] = (cols >= start[:, None]) & (cols < (start + n)[:, None])
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

    Selected candidates are scattered to their rank in the row (one ``nonzero``, linear);
    pad slots hold index 0 (the caller zeroes what it gathers there).
    """
    b, c = sel.shape
    rows, cols = _nonzero2(sel)
    counts = np.count_nonzero(sel, 1)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < budget
    order = np.zeros((b, budget), np.int64)
    order[rows[keep], rank[keep]] = cols[keep]
    pad = np.arange(budget)[None, :] >= counts[:, None]
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
