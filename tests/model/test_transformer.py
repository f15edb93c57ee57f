"""Model shapes, attention restrictions, save/load, and the TerraMind v1 block sizes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from terraloom.model.config import MODEL_PRESETS, Kind
from terraloom.model.transformer import DecoderBlock, EncoderBlock, Queries, TerraloomModel


@pytest.fixture(scope="module")
def batch(small_batch) -> dict[str, torch.Tensor]:
    return small_batch


@pytest.fixture(scope="module")
def model(small_model) -> TerraloomModel:
    torch.manual_seed(0)
    return TerraloomModel(small_model).eval()


@pytest.mark.parametrize(
    ("size", "enc_block", "dec_block"),
    [
        # GELU MLP 4x with biases; LayerNorm with bias (terratorch's tiny blocks: 444,864 / 593,856)
        ("tiny", 12 * 192**2 + 13 * 192, 16 * 192**2 + 21 * 192),
        # SwiGLU hidden 2048, no biases anywhere (terratorch's base blocks: 7,079,424 / 9,440,256)
        ("base", 4 * 768**2 + 3 * 768 * 2048 + 2 * 768, 8 * 768**2 + 3 * 768 * 2048 + 4 * 768),
        (
            "large",
            4 * 1024**2 + 3 * 1024 * 2730 + 2 * 1024,
            8 * 1024**2 + 3 * 1024 * 2730 + 4 * 1024,
        ),
    ],
)
def test_block_sizes_follow_terramind_v1(size: str, enc_block: int, dec_block: int) -> None:
    cfg = MODEL_PRESETS[size]
    n_enc = sum(p.numel() for p in EncoderBlock(cfg).parameters())
    n_dec = sum(p.numel() for p in DecoderBlock(cfg).parameters())
    assert n_enc == enc_block
    assert n_dec == dec_block
    assert (cfg.enc_depth, cfg.dec_depth) == {"tiny": (12, 4), "base": (12, 12), "large": (24, 24)}[
        size
    ]


def test_loss_and_logit_shapes(model, batch) -> None:
    out = model.loss(batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.mod_sum.shape == out.mod_count.shape == (len(model.specs.targets),)
    assert int(out.mod_count.sum()) == int((~batch["tgt_pad"]).sum())
    enc = model.forward_encoder(batch)
    ctx, pad = enc
    assert ctx.shape == (*batch["enc_ids"].shape, model.cfg.dim) and pad.dtype == torch.bool
    logits = model.decode_logits(enc, Queries.from_batch(batch))
    for name, lg in logits.items():
        t = model.specs.targets[model.specs.target_index(name)]
        assert lg.shape == (*batch["tgt_ids"].shape, t.vocab)
    # the loss is the mean over modalities of the per-modality mean CE of those logits
    q = Queries.from_batch(batch)
    per_mod = []
    for name, lg in logits.items():
        j = model.specs.target_index(name)
        sel = (q.mod == j) & ~q.pad
        per_mod.append(torch.nn.functional.cross_entropy(lg[sel], batch["tgt_ids"][sel]))
    assert torch.allclose(out.loss, torch.stack(per_mod).mean(), atol=1e-5)


def test_decoder_attends_within_modality_and_causally_in_sequences(model, batch) -> None:
    enc = model.forward_encoder(batch)
    q = Queries.from_batch(batch)
    base = model.decode_hidden(enc, q)
    specs = model.specs
    img = next(
        j
        for j, t in enumerate(specs.targets)
        if t.kind is Kind.IMAGE_TOKENS and bool(((q.mod == j) & ~q.pad).any())
    )
    # perturb one image target query (its position): other modalities must not change
    b, n = torch.nonzero((q.mod == img) & ~q.pad)[0].tolist()
    pos = q.pos.clone()
    pos[b, n] = (pos[b, n] + 1) % 196
    moved = model.decode_hidden(enc, replace(q, pos=pos))
    other = (q.mod != img) | q.pad
    assert torch.allclose(moved[other], base[other], atol=1e-6)
    same = (q.mod == img) & ~q.pad
    same[b, n] = False
    assert not torch.allclose(moved[b][same[b]], base[b][same[b]], atol=1e-6)
    # sequences are causal: changing the last caption token's input leaves earlier ones alone
    cap = specs.target_index("CAPTION")
    rows = torch.nonzero(((q.mod == cap) & ~q.pad).sum(1) >= 2).flatten()
    assert len(rows), "toy batch should have a caption window of >= 2 tokens"
    r = int(rows[0])
    slots = torch.nonzero((q.mod[r] == cap) & ~q.pad[r]).flatten()
    prev = q.prev.clone()
    prev[r, slots[-1]] = (prev[r, slots[-1]] + 5) % 100
    changed = model.decode_hidden(enc, replace(q, prev=prev))
    assert torch.allclose(changed[r, slots[:-1]], base[r, slots[:-1]], atol=1e-6)
    assert not torch.allclose(changed[r, slots[-1]], base[r, slots[-1]], atol=1e-6)


def test_flex_block_mask_matches_dense_mask(model, batch) -> None:
    enc = model.forward_encoder(batch)
    q = Queries.from_batch(batch)
    dense = model.decode_hidden(enc, q)
    flex_model = TerraloomModel(replace(model.cfg, dec_attn="flex"))
    flex_model.load_state_dict(model.state_dict())
    flex_model.eval()
    with torch.no_grad(), _nowarn():  # uncompiled FlexAttention warns that it is slow
        flex = flex_model.decode_hidden(flex_model.forward_encoder(batch), q)
    assert torch.allclose(dense, flex, atol=1e-5)


class _nowarn:
    def __enter__(self) -> None:
        import warnings

        self._c = warnings.catch_warnings()
        self._c.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._c.__exit__(*exc)


def test_padding_and_pixels(model, batch) -> None:
    specs = model.specs
    padded = dict(batch)
    pad = batch["enc_pad"].clone()
    pad[:, -5:] = True  # declare the last five inputs padding
    padded["enc_pad"] = pad
    ref = model.forward_encoder(padded).ctx
    scrambled = dict(padded)
    ids = batch["enc_ids"].clone()
    ids[:, -5:] = 3  # whatever sits in padding slots must not matter
    scrambled["enc_ids"] = ids
    for k in [
        k for k in batch if k.startswith("pix_idx.")
    ]:  # drop pixels that fell into the padding
        keep = pad.reshape(-1)[batch[k]] == 0
        scrambled[k] = batch[k][keep]
        scrambled["pix." + k[len("pix_idx.") :]] = batch["pix." + k[len("pix_idx.") :]][keep]
    out = model.forward_encoder(scrambled).ctx
    assert torch.allclose(out[~pad], ref[~pad], atol=1e-5)
    # pixel patches enter the encoder
    key = next(
        s.key for s in specs.inputs if s.kind is Kind.PIXELS and batch[f"pix_idx.{s.key}"].numel()
    )
    bumped = dict(batch)
    bumped[f"pix.{key}"] = batch[f"pix.{key}"] + 1
    slot = batch[f"pix_idx.{key}"][0]
    a = model.forward_encoder(batch).ctx.reshape(-1, model.cfg.dim)[slot]
    b = model.forward_encoder(bumped).ctx.reshape(-1, model.cfg.dim)[slot]
    assert not torch.allclose(a, b)


def test_save_and_load_give_identical_logits(model, batch, tmp_path) -> None:
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and (
        tmp_path / "m" / "config.json"
    ).exists()
    loaded = TerraloomModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.cfg == model.cfg
    q = Queries.from_batch(batch)
    with torch.no_grad():
        a = model.decode_logits(model.forward_encoder(batch), q)
        b = loaded.decode_logits(loaded.forward_encoder(batch), q)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_autocast_step_runs_on_cpu(small_model, batch) -> None:
    m = TerraloomModel(small_model)
    m.activation_checkpointing = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.loss(batch)
    out.loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)  # every parameter in the graph (DDP needs this)
    assert all(torch.isfinite(g).all() for g in grads)
