"""Config presets, YAML round trip, CLI-style overrides and modality specs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from terraloom.model.config import (
    MODEL_PRESETS,
    AlphaMixture,
    Kind,
    ModelConfig,
    TrainConfig,
    load_config,
    modality_specs,
    model_preset,
    save_config,
)


def test_presets_have_terramind_v1_shapes() -> None:
    shapes = {
        k: (c.dim, c.enc_depth, c.dec_depth, c.heads, c.mlp, c.hidden, c.bias)
        for k, c in MODEL_PRESETS.items()
    }
    assert shapes == {
        "tiny": (192, 12, 4, 3, "gelu", 768, True),
        "small": (384, 12, 6, 6, "gelu", 1536, True),
        "base": (768, 12, 12, 12, "swiglu", 2048, False),
        "large": (1024, 24, 24, 16, "swiglu", 2730, False),
    }
    assert all(
        c.patch_px == 16 and c.image_px == 224 and c.n_positions == 196
        for c in MODEL_PRESETS.values()
    )


def test_yaml_round_trip_and_overrides(tmp_path) -> None:
    cfg = TrainConfig(model=model_preset("small", dec_attn="dense"), batch_size=32)
    cfg = replace(
        cfg,
        masking=replace(
            cfg.masking, mixtures=(AlphaMixture("a", 2.0, 0.3, 0.7, input_only=("S2L2A@px",)),)
        ),
    )
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    got = load_config(
        path,
        [
            "model.size=base",
            "optim.lr=3e-4",
            "optim.betas=[0.9, 0.99]",
            "model.targets=[LULC, GEO]",
            "compile=true",
            "data.num_workers=0",
        ],
    )
    assert (
        got.model.dim == 768 and got.model.mlp == "swiglu" and got.model.dec_attn == "auto"
    )  # size resets the preset
    assert got.optim.lr == 3e-4 and got.optim.betas == (0.9, 0.99)
    assert (
        got.model.targets == ("LULC", "GEO") and got.compile is True and got.data.num_workers == 0
    )
    assert got.batch_size == 32 and got.masking.mixtures[0].input_only == ("S2L2A@px",)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.sizes=tiny"], "unknown keys"),
        (["model.size=huge"], "unknown model size"),
        (["model.dim=100", "model.heads=3"], "not divisible"),
        (["model.pixel_inputs=[LULC]"], "no pixel scale"),
        (["model.targets=[S2RGB]"], "no token scale"),
        (["precision=fp8"], "precision"),
        (["batch_size=abc"], "expected int"),
        (["masking.input_budget=0"], "budget"),
        (["optim.lr"], "key.sub=value"),
    ],
)
def test_bad_configs_are_rejected_with_a_reason(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_modality_specs_pixels_tokens_and_sequences() -> None:
    specs = modality_specs(ModelConfig())
    keys = [s.key for s in specs.inputs]
    assert keys[:6] == ["S2L1C@px", "S2L2A@px", "S2RGB@px", "S1GRD@px", "S1RTC@px", "DEM@px"]
    assert "S2L2A@tok" in keys and "CAPTION@tok" in keys and len(keys) == 14
    px = specs.inputs[specs.input_index("S2L1C@px")]
    assert px.kind is Kind.PIXELS and px.patch_dim == 13 * 256
    cap_in = specs.inputs[specs.input_index("CAPTION@tok")]
    assert cap_in.kind is Kind.SEQUENCE and cap_in.n_positions == 64 and cap_in.vocab == 8192 + 34
    cap = specs.targets[specs.target_index("CAPTION")]
    assert (
        cap.n_positions == 66
        and cap.vocab == 8192 + 34
        and cap.bos == cap.vocab
        and cap.dec_vocab == cap.vocab + 1
    )
    geo = specs.targets[specs.target_index("GEO")]
    assert geo.vocab == 2160 + 3 and geo.n_positions == 4
    lulc = specs.targets[specs.target_index("LULC")]
    assert lulc.kind is Kind.IMAGE_TOKENS and lulc.vocab == 4375
    assert specs.token_modalities == (
        "S2L2A",
        "S1GRD",
        "S1RTC",
        "DEM",
        "LULC",
        "NDVI",
        "GEO",
        "CAPTION",
    )
