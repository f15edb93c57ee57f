"""Generation: decoding schedule, sampling, determinism, chaining, sequences, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gen_support import CROP, Stack, one_thread, shared_root, tiny_model, toy_stack  # noqa: F401

from terraloom.model.data import _gather_patches
from terraloom.model.generate import (
    GREEDY,
    Conditioning,
    SamplingConfig,
    encoder_batch,
    filter_logits,
    generate,
    generate_image,
    generate_sequence,
    patchify,
    sample_tokens,
    unmask_schedule,
)
from terraloom.model.samples import SampleReader
from terraloom.tokenize_jobs.crops import apply_crop
from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return toy_stack(shared_root(tmp_path_factory))


@pytest.fixture(scope="module")
def cond(stack: Stack) -> Conditioning:
    reader = SampleReader(stack.corpus, stack.tokens, "val")
    return reader.conditioning(tiny_model(), ["S1GRD"], reader.valid_rows[:3])


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("n", [1, 5, 16, 196])
@pytest.mark.parametrize("steps", [1, 2, 3, 8, 12, 300])
def test_schedule_unmasks_exactly_all_positions(schedule: str, n: int, steps: int) -> None:
    counts = unmask_schedule(n, steps, schedule)
    assert sum(counts) == n
    assert len(counts) == min(steps, n)
    assert min(counts) >= 1


def test_cosine_schedule_starts_small_and_grows() -> None:
    counts = unmask_schedule(196, 8, "cosine")
    assert counts[0] < counts[-1]
    assert counts == sorted(counts)  # monotone for a cosine mask ratio
    assert unmask_schedule(196, 4, "linear") == [49, 49, 49, 49]


def test_schedule_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        unmask_schedule(10, 0)
    with pytest.raises(ValueError):
        unmask_schedule(10, 3, "exponential")
    with pytest.raises(ValueError):
        SamplingConfig(order="raster")


def test_decoding_commits_each_position_once_in_the_given_steps(cond: Conditioning) -> None:
    model = tiny_model()
    for order in ("confidence", "random"):
        trace: list[torch.Tensor] = []
        cfg = SamplingConfig(steps=5, order=order)
        codes = generate_image(
            model, cond, "S2L2A", cfg, torch.Generator().manual_seed(0), trace=trace
        )
        n = model.specs.n_image_positions
        assert codes.shape == (3, n)
        assert len(trace) == 5
        prev = torch.zeros_like(trace[0])
        for known, k in zip(trace, unmask_schedule(n, 5)):
            assert bool((known & prev).eq(prev).all()), "a committed position was unmasked again"
            assert (known.sum(1) - prev.sum(1)).tolist() == [k] * 3
            prev = known
        assert bool(trace[-1].all())
        assert int(codes.max()) < model.specs.targets[model.specs.target_index("S2L2A")].vocab


# --------------------------------------------------------------------------- sampling


def test_top_k_and_top_p_filters() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.5, 2.0, -1.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, False, False, True, False]]
    p = torch.softmax(logits, -1)[0]  # 0.61, 0.08, 0.05, 0.22, 0.01
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, False, False, True, False]]  # 0.61 < 0.7 needs the 2nd
    assert float(p[0]) < 0.7
    kept = torch.isfinite(filter_logits(logits, top_p=0.5))
    assert kept.tolist() == [[True, False, False, False, False]]
    g = torch.Generator().manual_seed(0)
    ids, logp = sample_tokens(logits.expand(500, 5), SamplingConfig(top_k=2), g)
    assert set(ids.tolist()) == {0, 3}
    assert torch.allclose(logp.exp()[ids == 0], torch.tensor(float(p[0] / (p[0] + p[3]))))
    ids, _ = sample_tokens(logits, GREEDY, None)
    assert ids.tolist() == [0]


def test_generation_is_deterministic_with_a_seed(cond: Conditioning) -> None:
    model = tiny_model()
    targets = ["LULC", "S2L2A", "GEO", "CAPTION"]
    cfg = SamplingConfig(steps=3, temperature=1.0)
    seq = {
        "GEO": SamplingConfig(temperature=1.0),
        "CAPTION": SamplingConfig(temperature=1.0, max_len=6),
        "LULC": cfg,
        "S2L2A": cfg,
    }
    a = generate(model, cond, targets, seq, seed=7)
    b = generate(model, cond, targets, seq, seed=7)
    c = generate(model, cond, targets, seq, seed=8)
    for t in targets:
        assert torch.equal(a.tokens[t], b.tokens[t]), t
    assert torch.equal(a.lengths["CAPTION"], b.lengths["CAPTION"])
    assert any(not torch.equal(a.tokens[t], c.tokens[t]) for t in targets)


def test_guidance_is_a_no_op_without_conditioning() -> None:
    """With nothing to condition on, cond and uncond passes agree: guided == unguided."""
    model = tiny_model()
    empty = Conditioning(size=2)
    a = generate(model, empty, ["LULC"], SamplingConfig(steps=3), seed=3)
    b = generate(model, empty, ["LULC"], SamplingConfig(steps=3, cfg_scale=3.0), seed=3)
    assert torch.equal(a.tokens["LULC"], b.tokens["LULC"])


def test_guidance_mixes_conditional_and_unconditional_logits(cond: Conditioning) -> None:
    """One greedy step with guidance s picks argmax(cond + s * (cond - uncond))."""
    from terraloom.model.generate import _empty_batch
    from terraloom.model.transformer import Queries

    model = tiny_model(init_std=0.5)  # a random model whose outputs depend on its inputs
    n, j = model.specs.n_image_positions, model.specs.target_index("LULC")
    q = Queries(
        torch.full((3, n), j),
        torch.arange(n).expand(3, n),
        torch.zeros(3, n, dtype=torch.long),
        torch.zeros(3, n, dtype=torch.bool),
    )
    with torch.no_grad():
        lc = model.decode_logits(model.forward_encoder(encoder_batch(model, cond)), q)["LULC"]
        lu = model.decode_logits(model.forward_encoder(_empty_batch(3, torch.device("cpu"))), q)[
            "LULC"
        ]
    one_step = SamplingConfig(steps=1, temperature=0, choice_temperature=0)
    plain = generate(model, cond, ["LULC"], one_step, seed=0).tokens["LULC"]
    guided = generate(
        model,
        cond,
        ["LULC"],
        SamplingConfig(steps=1, temperature=0, choice_temperature=0, cfg_scale=3.0),
        seed=0,
    ).tokens["LULC"]
    assert torch.equal(plain, lc.argmax(-1))
    assert torch.equal(guided, (lc + 3.0 * (lc - lu)).argmax(-1))
    assert not torch.equal(plain, guided)


# --------------------------------------------------------------------------- chaining


class _EncoderInputs:
    """Records which input modalities each encoder pass saw (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[set[str]] = []
        self.model = model
        self.handle = model.inputs.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        batch = args[0]
        keys = [s.key for s in self.model.specs.inputs]
        mods = batch["enc_mod"][~batch["enc_pad"]].unique().tolist()
        self.calls.append({keys[i] for i in mods})


def test_chained_generation_adds_each_generated_modality_to_the_inputs(cond: Conditioning) -> None:
    model = tiny_model()
    rec = _EncoderInputs(model)
    chained = generate(model, cond, ["LULC", "S2L2A"], GREEDY, seed=0, chain=True)
    rec.handle.remove()
    lulc_calls = rec.calls[: GREEDY.steps]
    s2_calls = rec.calls[GREEDY.steps :]
    assert all("LULC@tok" not in c for c in lulc_calls[:1])
    assert all({"LULC@tok", "S1GRD@px", "S1GRD@tok"} <= c for c in s2_calls)
    assert torch.equal(chained.conditioning.tokens["LULC"], chained.tokens["LULC"])
    assert set(chained.conditioning.tokens) == {"S1GRD", "LULC", "S2L2A"}
    # the S2L2A of the chain is exactly S2L2A generated from S1GRD + the generated LULC
    direct = generate(
        model, cond.with_tokens("LULC", chained.tokens["LULC"]), ["S2L2A"], GREEDY, seed=0
    )
    assert torch.equal(direct.tokens["S2L2A"], chained.tokens["S2L2A"])
    unchained = generate(model, cond, ["LULC", "S2L2A"], GREEDY, seed=0, chain=False)
    assert "LULC" not in unchained.conditioning.tokens
    assert torch.equal(unchained.tokens["LULC"], chained.tokens["LULC"])


def test_a_target_given_as_input_is_not_visible_to_its_own_generation(cond: Conditioning) -> None:
    model = tiny_model()
    rec = _EncoderInputs(model)
    generate(
        model,
        cond.with_tokens("S2L2A", torch.zeros(3, 16, dtype=torch.long)),
        ["S2L2A"],
        SamplingConfig(steps=1),
        seed=0,
    )
    rec.handle.remove()
    assert rec.calls == [{"S1GRD@px", "S1GRD@tok"}]


# --------------------------------------------------------------------------- sequences


def test_sequences_are_generated_autoregressively_within_their_vocabulary(
    cond: Conditioning,
) -> None:
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    ids, lens = generate_sequence(model, cond, "GEO", SamplingConfig(temperature=1.0), g)
    assert ids.shape == (3, 2) and lens.tolist() == [2, 2, 2]
    assert (
        bool((ids[:, 0] < 720).all())
        and bool((ids[:, 1] >= 720).all())
        and bool((ids[:, 1] < 2160).all())
    )
    ids, lens = generate_sequence(
        model, cond, "CAPTION", SamplingConfig(temperature=1.0), g, max_len=10
    )
    assert ids.shape == (3, 10)
    assert bool((lens <= 10).all())
    for row, n in zip(ids.tolist(), lens.tolist()):
        assert all(0 < t < 8192 for t in row[:n]) and all(t == 0 for t in row[n:])


def test_generated_sequence_feeds_back_causally(cond: Conditioning) -> None:
    """Each step's query sees the tokens so far: greedy GEO equals a one-token-at-a-time replay."""
    model = tiny_model()
    ids, _ = generate_sequence(model, cond, "GEO", GREEDY)
    from terraloom.model.transformer import Queries

    enc = model.forward_encoder(encoder_batch(model, cond))
    spec = model.specs.targets[model.specs.target_index("GEO")]
    j = model.specs.target_index("GEO")
    prev = torch.tensor([[spec.bos, spec.base_vocab, int(ids[0, 0])]])
    q = Queries(
        torch.full((1, 3), j), torch.arange(3)[None], prev, torch.zeros(1, 3, dtype=torch.bool)
    )
    with torch.no_grad():
        logits = model.decode_logits((enc.ctx[:1], enc.pad[:1]), q)["GEO"][0, 2]
    assert int(logits[720:2160].argmax()) + 720 == int(ids[0, 1])


# --------------------------------------------------------------------------- inputs and outputs


def test_pixel_patches_match_the_training_loader(stack: Stack) -> None:
    import zarr

    g = zarr.open_group(str(stack.corpus / "val.zarr"), mode="r")
    x = np.asarray(g["S1GRD"][1]).astype(np.float32)
    crop = np.array([10, 30, CROP, CROP, 0])
    n = (CROP // 16) ** 2
    loader = _gather_patches(x, crop, np.arange(n), CROP, 16).reshape(n, -1)
    mine = patchify(torch.from_numpy(np.ascontiguousarray(apply_crop(x, crop)))[None], 16)[
        0
    ].numpy()
    np.testing.assert_array_equal(mine, loader)


def test_encoder_batch_holds_every_input_position(cond: Conditioning) -> None:
    model = tiny_model()
    b = encoder_batch(model, cond)
    n = model.specs.n_image_positions
    assert b["enc_ids"].shape == (3, 2 * n)
    assert not bool(b["enc_pad"].any())
    assert b["pix.S1GRD@px"].shape == (3 * n, 2 * 256)
    with pytest.raises(ValueError, match="no pixel input"):
        encoder_batch(model, Conditioning(pixels={"DEM": torch.zeros(1, 1, CROP, CROP)}))


def test_generation_decodes_with_the_tokenizers(stack: Stack, cond: Conditioning) -> None:
    from terraloom.model.generate import decode_tokens

    model = tiny_model()
    toks = load_tokenizers(stack.tokenizers, ["S2L2A", "GEO"])
    g = generate(model, cond, ["S2L2A", "GEO"], GREEDY, seed=0)
    px = decode_tokens(toks["S2L2A"], "S2L2A", g.tokens["S2L2A"])
    assert px.shape == (3, 12, CROP, CROP)
    latlon = decode_tokens(toks["GEO"], "GEO", g.tokens["GEO"], g.lengths["GEO"])
    assert latlon.shape == (3, 2) and bool((latlon[:, 0].abs() <= 90).all())


def test_expected_decoding_keeps_the_tokens_and_decodes_the_committed_distributions(
    stack: Stack, cond: Conditioning
) -> None:
    from terraloom.model.generate import _logits, decode_tokens
    from terraloom.model.transformer import Queries

    model = tiny_model()
    tok = load_tokenizers(stack.tokenizers, ["DEM"])["DEM"]
    hard = SamplingConfig(steps=3, temperature=0.7, top_k=20)
    soft = SamplingConfig(steps=3, temperature=0.7, top_k=20, decode="expected")
    a = generate(model, cond, ["DEM"], hard, seed=5)
    b = generate(model, cond, ["DEM"], soft, seed=5)
    assert torch.equal(a.tokens["DEM"], b.tokens["DEM"]) and not a.probs
    p = b.probs["DEM"]
    n = a.tokens["DEM"].shape[1]
    assert p.shape == (3, n, tok.vocab_size)
    assert torch.allclose(p.sum(-1), torch.ones(3, n), atol=1e-5)
    assert bool((p.gather(-1, b.tokens["DEM"][..., None]) > 0).all())  # drawn from it
    assert int((p > 0).sum(-1).max()) <= 20  # the top-k filter applies
    # one greedy step: every position's distribution is the softmax of its logits
    one = generate(
        model, cond, ["DEM"], SamplingConfig(steps=1, temperature=0.0, decode="expected")
    )
    j = model.specs.target_index("DEM")
    q = Queries(
        mod=torch.full((3, n), j), pos=torch.arange(n).expand(3, n),
        prev=torch.zeros(3, n, dtype=torch.long), pad=torch.zeros(3, n, dtype=torch.bool),
    )  # fmt: skip
    logits = _logits(model, encoder_batch(model, cond), q, "DEM").float()
    assert torch.allclose(one.probs["DEM"], logits.softmax(-1), atol=1e-5)
    px_soft = decode_tokens(tok, "DEM", one.tokens["DEM"], probs=one.probs["DEM"])
    px_hard = decode_tokens(tok, "DEM", one.tokens["DEM"])
    assert px_soft.shape == px_hard.shape == (3, 1, CROP, CROP)
    assert not torch.allclose(px_soft, px_hard)  # an unsure model: the mean, not the argmax
    with pytest.raises(ValueError, match="decode"):
        SamplingConfig(decode="mean")
