"""Thinking-in-Modalities: frozen generator, trainable encoder + head, thoughts as inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gen_support import Stack, one_thread, shared_root, tiny_model, toy_stack  # noqa: F401

from terraloom.model.config import Kind
from terraloom.model.generate import SamplingConfig, generate
from terraloom.model.tim import (
    IGNORE,
    FinetuneConfig,
    SegmentationData,
    TiMConfig,
    TiMSegmenter,
    TiMStudyConfig,
    compare_tim,
    confusion,
    iou_scores,
    load_segmentation_data,
    pool_positions,
    tim_study,
    verdict,
    with_thoughts,
    write_tim_report,
    write_tim_study,
)
from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers

CFG = TiMConfig(inputs=("S1GRD",), thoughts=("LULC",), steps=1, head_hidden=8)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return toy_stack(shared_root(tmp_path_factory))


@pytest.fixture(scope="module")
def data(stack: Stack) -> tuple[SegmentationData, SegmentationData]:
    model = tiny_model()
    train = load_segmentation_data(model, stack.corpus, stack.tokens, "train", CFG, crops=(0, 1))
    val = load_segmentation_data(model, stack.corpus, stack.tokens, "val", CFG)
    return train, val


def _step(seg: TiMSegmenter, data: SegmentationData) -> None:
    opt = torch.optim.AdamW(seg.trainable_parameters(), lr=1e-2)
    seg.train()
    logits = seg(data.cond.select([0, 1, 2]))
    loss = F.cross_entropy(logits, data.labels[:3], ignore_index=IGNORE)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_wrapper_freezes_the_generator_and_trains_the_rest(
    data: tuple[SegmentationData, SegmentationData],
) -> None:
    pretrained = tiny_model()
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    seg = TiMSegmenter(pretrained, CFG, use_tim=True)
    assert seg.generator is not None
    gen_before = {k: v.clone() for k, v in seg.generator.state_dict().items()}
    bb_before = {k: v.clone() for k, v in seg.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in seg.head.state_dict().items()}
    assert all(not p.requires_grad for p in seg.generator.parameters())
    trainable = {id(p) for p in seg.trainable_parameters()}
    assert trainable == {id(p) for p in [*seg.backbone.parameters(), *seg.head.parameters()]}
    _step(seg, data[0])
    assert not seg.generator.training, "the generator must stay in eval mode"
    assert all(p.grad is None for p in seg.generator.parameters())
    for k, v in seg.generator.state_dict().items():
        assert torch.equal(v, gen_before[k]), f"generator weight {k} changed"
    for k, v in pretrained.state_dict().items():
        assert torch.equal(v, before[k]), f"the caller's pretrained model changed ({k})"
    changed = [k for k, v in seg.backbone.state_dict().items() if not torch.equal(v, bb_before[k])]
    assert any(k.startswith("blocks.") for k in changed), "the encoder did not train"
    assert all(not torch.equal(v, head_before[k]) for k, v in seg.head.state_dict().items())


def test_thoughts_are_generated_by_the_frozen_model_and_join_the_inputs(
    data: tuple[SegmentationData, SegmentationData],
) -> None:
    pretrained = tiny_model()
    cond = data[1].cond.select([0, 1])
    seen: list[set[str]] = []

    def hook(module: torch.nn.Module, args: tuple) -> None:
        b = args[0]
        keys = [s.key for s in module.specs.inputs]  # type: ignore[union-attr]
        seen.append({keys[i] for i in b["enc_mod"][~b["enc_pad"]].unique().tolist()})

    with_tim = TiMSegmenter(pretrained, CFG, use_tim=True)
    with_tim.backbone.inputs.register_forward_pre_hook(hook)
    with_tim.eval()
    with torch.no_grad():
        with_tim(cond)
    assert seen[-1] == {"S1GRD@px", "S1GRD@tok", "LULC@tok"}
    thought = with_tim.think(cond).tokens["LULC"]
    expected = generate(
        pretrained,
        cond,
        ["LULC"],
        SamplingConfig(steps=1, temperature=0, choice_temperature=0),
        seed=None,
    ).tokens["LULC"]
    assert torch.equal(thought, expected)

    without = TiMSegmenter(pretrained, CFG, use_tim=False)
    assert without.generator is None
    without.backbone.inputs.register_forward_pre_hook(hook)
    with torch.no_grad():
        without(cond)
    assert seen[-1] == {"S1GRD@px", "S1GRD@tok"}


def test_a_thought_the_model_cannot_generate_is_rejected() -> None:
    with pytest.raises(ValueError, match="thought modality"):
        TiMSegmenter(tiny_model(targets=("S2L2A", "GEO")), CFG, use_tim=True)


def test_pool_positions_averages_image_tokens_per_position() -> None:
    model = tiny_model()
    specs = model.specs
    px = specs.input_index("S1GRD@px")
    tok = specs.input_index("LULC@tok")
    geo = specs.input_index("GEO@tok")
    assert specs.inputs[geo].kind is Kind.SEQUENCE
    batch = {
        "enc_mod": torch.tensor([[px, tok, geo, px]]),
        "enc_pos": torch.tensor([[3, 3, 3, 5]]),
        "enc_pad": torch.tensor([[False, False, False, True]]),
    }
    feats = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0], [7.0, 7.0]]])
    pooled = pool_positions(specs, batch, feats)
    assert pooled.shape == (1, specs.n_image_positions, 2)
    assert pooled[0, 3].tolist() == [2.0, 1.0]  # GEO (a sequence) and the padded slot excluded
    assert pooled[0, 5].tolist() == [0.0, 0.0]


def test_confusion_and_iou() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    conf = confusion(pred, target, 3)
    assert conf.sum() == 7
    s = iou_scores(conf)
    assert s["accuracy"] == pytest.approx(5 / 7)
    # IoU: class0 1/(2+2-1)=1/3, class1 3/(3+4-3)=3/4, class2 1/(2+1-1)=1/2
    assert s["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert set(s["iou"]) == {"water", "trees", "flooded vegetation"}


def test_finetune_with_and_without_tim_reports_miou(
    data: tuple[SegmentationData, SegmentationData], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    train, val = data
    assert (len(train), len(val)) == (16, 3)  # 8 train rows x 2 crops, 3 val rows x 1 crop
    summary = compare_tim(
        tiny_model(),
        train,
        val,
        CFG,
        FinetuneConfig(steps=2, batch_size=4, eval_batch=4),
        progress=False,
    )
    for key in ("tim", "no_tim"):
        assert 0.0 <= summary[key]["miou"] <= 1.0
        assert 0.0 <= summary[key]["accuracy"] <= 1.0
    assert summary["winner"] == (
        "tim" if summary["tim"]["miou"] > summary["no_tim"]["miou"] else "no_tim"
    )
    md = write_tim_report(summary, tmp_path).read_text()
    assert "encoder + head + TiM" in md and "mIoU" in md


def test_precomputed_thoughts_are_the_thoughts_of_the_segmenter(
    data: tuple[SegmentationData, SegmentationData],
) -> None:
    pretrained = tiny_model()
    val = data[1]
    thought = with_thoughts(pretrained, val, ["LULC"], steps=1, batch_size=2)
    seg = TiMSegmenter(pretrained, CFG, use_tim=True)
    assert torch.equal(thought.cond.tokens["LULC"], seg.think(val.cond).tokens["LULC"])
    assert torch.equal(thought.labels, val.labels)
    assert with_thoughts(pretrained, val, []) is val
    with pytest.raises(ValueError, match="thought modality"):
        with_thoughts(tiny_model(targets=("S2L2A", "GEO")), val, ["LULC"])


def test_verdict_needs_a_consistent_gain_over_seeds() -> None:
    assert verdict([0.05, 0.06, 0.04]) == "helps"
    assert verdict([-0.05, -0.06, -0.04]) == "hurts"
    assert verdict([0.10, -0.08, 0.01]) == "no clear difference"  # one lucky seed is not a win
    assert verdict([0.2, 0.3]) == "too few seeds"


def test_tim_study_reports_seeds_spread_and_both_placements(
    stack: Stack, data: tuple[SegmentationData, SegmentationData], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    train, val = data
    study = TiMStudyConfig(
        thoughts=(("LULC",), ("S2L2A",)),
        seeds=(0, 1, 2),
        finetune=FinetuneConfig(steps=2, batch_size=4, eval_batch=4),
        generate_steps=2,
        head_hidden=8,
    )
    lulc = load_tokenizers(stack.tokenizers, ["LULC"])["LULC"]
    summary = tim_study(tiny_model(), train, val, study, lulc, progress=False)
    runs = summary["finetune"]
    assert list(runs) == ["none", "LULC", "S2L2A"]
    for r in runs.values():
        assert len(r["miou"]["values"]) == 3
        assert r["miou"]["mean"] == pytest.approx(sum(r["miou"]["values"]) / 3, abs=1e-4)
    gains = runs["LULC"]["miou_gain"]["values"]
    want = [a - b for a, b in zip(runs["LULC"]["miou"]["values"], runs["none"]["miou"]["values"])]
    assert gains == pytest.approx(want, abs=1e-3)  # paired with the same seed
    assert runs["LULC"]["verdict"] == verdict(want)
    # different seeds give different fine-tuned models
    assert (
        len(set(runs["none"]["miou"]["values"])) > 1
        or len(set(runs["none"]["accuracy"]["values"])) > 1
    )
    # inference-only: direct and through S2L2A, never "through" the task's own modality
    assert set(summary["inference_only"]) == {"none", "S2L2A"}
    assert 0 <= summary["inference_only"]["S2L2A"]["miou"] <= 1
    md = write_tim_study(summary, tmp_path).read_text()
    assert "+-" in md and "S1GRD -> S2L2A -> LULC" in md and "Inference-only" in md
