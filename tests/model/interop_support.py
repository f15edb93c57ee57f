"""terratorch's TerraMind (from the pinned wheel) next to terraloom, on the same inputs.

Both models get one batch: per sample the same visible input positions of every input
modality (pixels at the pixel scale, codes at the token scale) and the same target
positions of every target modality, with no padding (equal counts per sample), so the
encoder outputs and the decoder logits can be compared element by element.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

from terraloom.model.config import Kind, ModelConfig, modality_specs
from terraloom.model.transformer import Queries, TerraloomModel
from terraloom.schemas.modalities import terramind_modality
from terraloom.tokenize_jobs.tokenizers import terramind_reference as ref

N_POS = 196
#: Seed of Python's ``random`` for TerraMind's decoder modality shuffle (replayed).
DEC_SEED = 1234


def need_wheel() -> None:
    """Skip only when the wheel is genuinely absent (``make install`` provides it)."""
    if ref.find_wheel() is None:
        pytest.skip("terratorch 1.2.11 wheel absent: run `make install` (pip download --no-deps)")
    pytest.importorskip("einops")


def tt_sizes(variant: str) -> dict[str, Any]:
    """terratorch ``terramind_v1_*_encdec`` constructor arguments (terramind_register.py)."""
    tm_utils = ref.module("model.tm_utils")
    ln = partial(tm_utils.LayerNorm, eps=1e-6, bias=False)
    small = dict(qkv_bias=True, proj_bias=True, mlp_bias=True, norm_layer=ln, act_layer=nn.GELU)
    big = dict(
        qkv_bias=False,
        proj_bias=False,
        mlp_bias=False,
        norm_layer=ln,
        act_layer=nn.SiLU,
        gated_mlp=True,
    )
    return {
        "tiny": dict(encoder_depth=12, decoder_depth=4, dim=192, num_heads=3, mlp_ratio=4, **small),
        "small": dict(
            encoder_depth=12, decoder_depth=6, dim=384, num_heads=6, mlp_ratio=4, **small
        ),
        "base": dict(encoder_depth=12, decoder_depth=12, dim=768, num_heads=12, mlp_ratio=4, **big),
    }[variant]


def build_terramind(
    variant: str,
    pixels: tuple[str, ...],
    tokens: tuple[str, ...],
    targets: tuple[str, ...],
    seed: int = 0,
) -> nn.Module:
    """terratorch's ``TerraMind`` encoder-decoder, random init with a fixed seed."""
    info_all = ref.module("model.modality_info").MODALITY_INFO
    TerraMind = ref.module("model.terramind").TerraMind
    dim = tt_sizes(variant)["dim"]
    torch.manual_seed(seed)
    enc, dec, info = {}, {}, {}
    for name in pixels:
        key = terramind_modality(name).pixel_key
        enc[key] = info_all[key]["encoder_embedding"](
            image_size=224, dim_tokens=dim, **info_all[key]
        )
        info[key] = dict(info_all[key], max_tokens=N_POS)
    for name in (*tokens, *targets):
        key = terramind_modality(name).token_key
        if key not in enc:
            enc[key] = info_all[key]["encoder_embedding"](
                image_size=224, dim_tokens=dim, **info_all[key]
            )
        info[key] = dict(info_all[key], max_tokens=N_POS)
    for name in targets:
        key = terramind_modality(name).token_key
        dec[key] = info_all[key]["decoder_embedding"](
            image_size=224, dim_tokens=dim, **info_all[key]
        )
    model = TerraMind(
        encoder_embeddings=enc, decoder_embeddings=dec, modality_info=info, **tt_sizes(variant)
    )
    # random (not zero) mask token and norms, so every mapped tensor matters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@dataclass
class Pair:
    """One batch in both formats."""

    mod_dict: dict[str, dict[str, torch.Tensor]]
    n_enc: int
    n_dec: int
    dec_order: list[str]  # TerraMind's (shuffled) decoder modality order, keys
    batch: dict[str, torch.Tensor]
    queries: Queries


def make_pair(cfg: ModelConfig, b: int = 2, n_in: int = 6, n_tgt: int = 5, seed: int = 1) -> Pair:
    """Random pixels/codes; ``n_in`` visible positions per input, ``n_tgt`` per target."""
    specs = modality_specs(cfg)
    g = torch.Generator().manual_seed(seed)
    full_px: dict[str, torch.Tensor] = {}
    codes: dict[str, torch.Tensor] = {}
    for s in specs.inputs:
        if s.kind is Kind.PIXELS:
            full_px[s.modality] = torch.randn(b, s.channels, 224, 224, generator=g)
    for name in specs.token_modalities:
        t = next(t for t in specs.targets if t.modality == name) if name in cfg.targets else None
        vocab = t.vocab if t else next(s.vocab for s in specs.inputs if s.key == name + "@tok")
        codes[name] = torch.randint(0, vocab, (b, N_POS), generator=g)
    # positions: per input modality n_in visible; targets avoid the same modality's inputs
    vis = {
        s.key: torch.stack(
            [torch.randperm(N_POS, generator=g)[:n_in].sort().values for _ in range(b)]
        )
        for s in specs.inputs
    }
    tgt = {}
    for t in specs.targets:
        rows = []
        for r in range(b):
            blocked = set()
            for s in specs.inputs:
                if s.modality == t.modality:
                    blocked |= set(vis[s.key][r].tolist())
            free = [p for p in torch.randperm(N_POS, generator=g).tolist() if p not in blocked]
            rows.append(torch.tensor(sorted(free[:n_tgt])))
        tgt[t.modality] = torch.stack(rows)

    # TerraMind mod dict (True = masked); decoder_attention_mask large -> all attend (sep mask)
    md: dict[str, dict[str, torch.Tensor]] = {}
    enc_keys: list[tuple[str, Any]] = []
    for s in specs.inputs:
        t = terramind_modality(s.modality)
        key = t.pixel_key if s.kind is Kind.PIXELS else t.token_key
        mask = torch.ones(b, N_POS, dtype=torch.bool)
        mask.scatter_(1, vis[s.key], False)
        tensor = full_px[s.modality] if s.kind is Kind.PIXELS else codes[s.modality]
        md[key] = {"tensor": tensor, "input_mask": mask}
        enc_keys.append((key, s))
    for t in specs.targets:
        key = terramind_modality(t.modality).token_key
        d = md.setdefault(
            key, {"tensor": codes[t.modality], "input_mask": torch.ones(b, N_POS, dtype=torch.bool)}
        )
        tm = torch.ones(b, N_POS, dtype=torch.bool)
        tm.scatter_(1, tgt[t.modality], False)
        d["target_mask"] = tm
        d["decoder_attention_mask"] = torch.full((b, N_POS), N_POS, dtype=torch.int)

    # TerraMind's encoder sees modalities in mod_dict order (inputs first, then target-only
    # token modalities, fully masked); its decoder in a shuffled order we replay here
    dec_keys = [k for k in md if "target_mask" in md[k]]
    random.seed(DEC_SEED)
    order = [k for k, _ in random.sample([(k, None) for k in dec_keys], len(dec_keys))]

    enc_ids, enc_mod, enc_pos = [], [], []
    batch: dict[str, torch.Tensor] = {}
    n_in_total = n_in * len(specs.inputs)
    for i, s in enumerate(specs.inputs):
        pos = vis[s.key]
        enc_pos.append(pos)
        enc_mod.append(torch.full_like(pos, i))
        if s.kind is Kind.PIXELS:
            enc_ids.append(torch.zeros_like(pos))
            patches = patchify(full_px[s.modality])
            flat = torch.cat([patches[r, pos[r]] for r in range(b)])
            base = sum(n_in for _ in range(i))
            idx = torch.cat([torch.arange(n_in) + r * n_in_total + base for r in range(b)])
            batch[f"pix.{s.key}"] = flat
            batch[f"pix_idx.{s.key}"] = idx
        else:
            enc_ids.append(codes[s.modality].gather(1, pos))
    batch["enc_ids"] = torch.cat(enc_ids, 1)
    batch["enc_mod"] = torch.cat(enc_mod, 1)
    batch["enc_pos"] = torch.cat(enc_pos, 1)
    batch["enc_pad"] = torch.zeros(b, n_in_total, dtype=torch.bool)
    names = {terramind_modality(t.modality).token_key: j for j, t in enumerate(specs.targets)}
    mods, poss = [], []
    for key in order:
        j = names[key]
        pos = tgt[specs.targets[j].modality]
        mods.append(torch.full_like(pos, j))
        poss.append(pos)
    q_mod, q_pos = torch.cat(mods, 1), torch.cat(poss, 1)
    queries = Queries(
        q_mod, q_pos, torch.zeros_like(q_mod), torch.zeros_like(q_mod, dtype=torch.bool)
    )
    return Pair(md, n_in_total, n_tgt * len(specs.targets), order, batch, queries)


def patchify(x: torch.Tensor, p: int = 16) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)


def terramind_outputs(model: nn.Module, pair: Pair) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(encoder output after its norm, logits per decoder modality over all decoder tokens)."""
    md = {k: dict(v) for k, v in pair.mod_dict.items()}
    with torch.no_grad():
        enc_md = {
            k: model.encoder_embeddings[k](dict(d))
            for k, d in md.items()
            if k in model.encoder_embeddings
        }
        tokens, emb, mask, _ = model.forward_mask_encoder(enc_md, pair.n_enc)
        enc = model.forward_encoder(tokens + emb, encoder_mask=mask)
        random.seed(DEC_SEED)
        logits = model(
            {k: dict(v) for k, v in pair.mod_dict.items()},
            pair.n_enc,
            pair.n_dec,
            return_logits=True,
        )
    return enc, logits


def terraloom_outputs(
    model: TerraloomModel, pair: Pair
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from terraloom.model.interop.embed import encoder_hidden

    with torch.no_grad():
        hidden = encoder_hidden(model, pair.batch)
        logits = model.decode_logits(model.forward_encoder(pair.batch), pair.queries)
    return hidden, logits


def loaded_model(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> TerraloomModel:
    """A terraloom model holding exactly ``state`` (strict; its random init is skipped)."""
    model = TerraloomModel(cfg, init=False)
    model.load_state_dict(state, strict=True)
    return model.eval()


def import_argv(checkpoint: object, out: object, *extra: str) -> list[str]:
    """``import-terramind --checkpoint C --out O`` plus ``extra`` (``--variant tiny``)."""
    return ["import-terramind", "--checkpoint", str(checkpoint), "--out", str(out), *extra]
