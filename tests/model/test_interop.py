"""TerraMind v1 checkpoints in and out: exact mapping and output parity with terratorch.

terratorch's own TerraMind (from the pinned wheel's files, random init, fixed seed) and the
imported terraloom model run on the same pixels, codes and masks: encoder outputs and
decoder logits agree within 1e-4 (fp32); terraloom -> terratorch -> terraloom is exact.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from interop_support import (
    build_terramind,
    import_argv,
    loaded_model,
    make_pair,
    need_wheel,
    terraloom_outputs,
    terramind_outputs,
)

from terraloom.model.cli import main as cli_main
from terraloom.model.config import model_preset
from terraloom.model.interop import InteropError, export_terramind, import_terramind
from terraloom.model.transformer import TerraloomModel
from terraloom.schemas.modalities import terramind_modality
from terraloom.tokenize_jobs.tokenizers import terramind_reference as ref

TOL = 1e-4


@pytest.fixture(autouse=True)
def _wheel() -> None:
    need_wheel()


def _check_parity(tm: torch.nn.Module, model: TerraloomModel, b: int = 2) -> None:
    pair = make_pair(model.cfg, b=b)
    enc_tt, logits_tt = terramind_outputs(tm, pair)
    enc_tl, logits_tl = terraloom_outputs(model, pair)
    assert enc_tt.shape == enc_tl.shape
    assert float((enc_tt - enc_tl).abs().max()) <= TOL
    assert len(logits_tt) == len(model.cfg.targets)
    for name in model.cfg.targets:
        a = logits_tt[terramind_modality(name).token_key]
        assert a.shape == logits_tl[name].shape
        assert float((a - logits_tl[name]).abs().max()) <= TOL, name


def _roundtrip_exact(model: TerraloomModel, tm: torch.nn.Module) -> None:
    sd = export_terramind(model.state_dict(), model.cfg)
    tm.load_state_dict(sd, strict=True)  # terratorch takes it as it is
    cfg2, back, _ = import_terramind(tm.state_dict())
    assert cfg2 == model.cfg
    ours = model.state_dict()
    assert set(back) == set(ours)
    for k, v in ours.items():
        assert torch.equal(back[k], v), k


def test_tiny_import_parity_and_exact_roundtrip() -> None:
    tm = build_terramind("tiny", ("S2L2A", "S1GRD"), ("S1GRD", "LULC"), ("S2L2A", "S1GRD", "LULC"))
    cfg, state, report = import_terramind(tm.state_dict(), "tiny")
    assert report.pixel_inputs == ("S2L2A", "S1GRD") and report.targets == (
        "S2L2A",
        "S1GRD",
        "LULC",
    )
    model = loaded_model(cfg, state)
    _check_parity(tm, model)
    # a terraloom model that has trained (tied embeddings moved, biases non-zero) goes
    # to terratorch and back without a bit changed, and terratorch then computes the same
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.inputs.tokens.weight[0].zero_()  # the padding row, which training keeps zero
    _roundtrip_exact(model, tm)
    _check_parity(tm, model)


def test_base_import_parity_and_exact_roundtrip() -> None:
    """base: SwiGLU (fc1|fc3), no linear or norm biases, context-projection bias; batch of 1."""
    tm = build_terramind("base", ("S1GRD",), ("LULC",), ("LULC",))
    cfg, state, _ = import_terramind(tm.state_dict(), "base")
    assert cfg.mlp == "swiglu" and not cfg.bias and cfg.context_bias and cfg.norm_bias is False
    model = loaded_model(cfg, state)
    _check_parity(tm, model, b=1)
    _roundtrip_exact(model, tm)


def test_backbone_export_loads_strictly_in_terramind_vit_with_equal_features() -> None:
    TerraMindViT = ref.module("model.terramind_vit").TerraMindViT
    from interop_support import tt_sizes

    from terraloom.model.interop.embed import center_patches, encoder_hidden, pixel_batch

    cfg = model_preset(
        "tiny",
        pixel_inputs=("S2L2A", "S1GRD"),
        token_inputs=(),
        targets=("LULC",),
        context_bias=True,
        norm_bias=False,
        tie_modality_emb=True,
    )
    torch.manual_seed(0)
    model = TerraloomModel(cfg).eval()
    sd = export_terramind(model.state_dict(), cfg, backbone=True)
    kw = {k: v for k, v in tt_sizes("tiny").items() if k not in ("decoder_depth",)}
    vit = TerraMindViT(modalities=["S2L2A", "S1GRD"], merge_method=None, **kw).eval()
    vit.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(2)
    raw = {
        "S2L2A": (torch.rand(1, 12, 224, 224, generator=g) * 4000).numpy(),
        "S1GRD": (torch.randn(1, 2, 224, 224, generator=g) * 5 - 15).numpy(),
    }
    pixels = {k: center_patches(v, k, 224, 16) for k, v in raw.items()}
    with torch.no_grad():
        ours = encoder_hidden(model, pixel_batch(model, pixels))
        # terratorch takes the same standardised images (its layout: whole images)
        imgs = {
            k: torch.from_numpy(p)
            .reshape(1, 14, 14, -1, 16, 16)
            .permute(0, 3, 1, 4, 2, 5)
            .reshape(1, -1, 224, 224)
            for k, p in pixels.items()
        }
        theirs = vit(imgs)[-1]
    assert float((ours - theirs).abs().max()) <= TOL


def test_sequence_modalities_are_listed_not_dropped_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tm = build_terramind("tiny", ("S1GRD",), ("LULC",), ("LULC",))
    sd = dict(tm.state_dict())
    d = tm.dim
    for key in ("coords", "caption"):  # what the released checkpoints also hold
        sd[f"encoder_embeddings.{key}.token_emb.weight"] = torch.zeros(30000, d)
        sd[f"encoder_embeddings.{key}.mod_emb"] = torch.zeros(1, 1, d)
        sd[f"decoder_embeddings.{key}.to_logits.weight"] = torch.zeros(30000, d)
    torch.save(sd, tmp_path / "TerraMind_v1_tiny.pt")
    argv = import_argv(tmp_path / "TerraMind_v1_tiny.pt", tmp_path / "run", "--variant", "tiny")
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "left out coords" in out and "left out caption" in out
    model = TerraloomModel.from_pretrained(tmp_path / "run")
    assert model.cfg.targets == ("LULC",) and "GEO" not in model.cfg.token_inputs
    assert (
        cli_main(["export-terramind", str(tmp_path / "run"), "--out", str(tmp_path / "back.pt")])
        == 0
    )
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    tm.load_state_dict(back, strict=True)
    for k, v in tm.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_bad_checkpoints_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tm = build_terramind("tiny", ("S1GRD",), ("LULC",), ("LULC",))
    sd = dict(tm.state_dict())
    torch.save(sd, tmp_path / "tiny.pt")
    argv = import_argv(tmp_path / "tiny.pt", tmp_path / "o")
    assert cli_main([*argv, "--variant", "base"]) == 2
    assert "not base" in capsys.readouterr().err
    sd["encoder.0.norm1.bias"] = torch.ones_like(sd["encoder.0.norm1.bias"])
    torch.save(sd, tmp_path / "tiny.pt")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "norm1.bias is not zero" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": object()}))
    assert cli_main(import_argv(tmp_path / "evil.pt", tmp_path / "o")) == 2
    assert "weights-only" in capsys.readouterr().err


def test_export_refuses_what_terramind_cannot_hold(tmp_path: Path) -> None:
    cfg = model_preset(
        "tiny", pixel_inputs=("S1GRD",), token_inputs=("LULC", "GEO"), targets=("LULC",)
    )
    model = TerraloomModel(cfg)
    with pytest.raises(InteropError) as exc:
        export_terramind(model.state_dict(), cfg)
    msg = str(exc.value)
    assert "sequence modalities" in msg and "norm_bias" in msg and "tie_modality_emb" in msg
