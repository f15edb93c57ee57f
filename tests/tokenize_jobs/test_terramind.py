"""TerraMind v1 tokenizer encoders: ids identical to terratorch's own modules.

The reference is terratorch 1.2.11's tokenizer encoder (``ViTEncoder`` + 1x1 latent
projection + ``FiniteScalarQuantizer``, composed as ``VQ.encode``), loaded from the wheel's
files, random weights with a fixed seed (a reduced width/depth keeps it fast; the code path
is the released ``vit_b_enc`` one). terraloom's tokenizer gets the corpus's stored values;
terratorch gets them standardised with TerraMind's statistics (LULC: class channels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from terraloom.schemas.modalities import LULC_CLASSES, terramind_modality
from terraloom.tokenize_jobs.tokenizers import terramind_reference as ref
from terraloom.tokenize_jobs.tokenizers.io import load_tokenizer
from terraloom.tokenize_jobs.tokenizers.terramind import (
    TerraMindImageTokenizer,
    build_encoder,
    convert_checkpoint,
)


@pytest.fixture(autouse=True)
def _wheel() -> None:
    if ref.find_wheel() is None:
        pytest.skip("terratorch 1.2.11 wheel absent: run `make install`")
    pytest.importorskip("einops")


def reference(
    modality: str, seed: int = 0, dim: int = 128, depth: int = 2
) -> tuple[nn.Module, dict]:
    """terratorch's tokenizer encoder (random) and its state dict as the released files hold it."""
    vit = ref.module("tokenizer.models.vit_models")
    fsq = ref.module("tokenizer.quantizers.quantize_finite_scalar")
    t = terramind_modality(modality)
    torch.manual_seed(seed)
    enc = vit.ViTEncoder(
        in_channels=t.tokenizer_channels,
        patch_size=16,
        resolution=256,
        dim_tokens=dim,
        depth=depth,
        num_heads=dim // 64,
        mlp_ratio=4,
        qkv_bias=True,
        post_mlp=True,
    )
    quant_proj = nn.Conv2d(dim, len(t.fsq_levels), 1)
    with torch.no_grad():
        quant_proj.weight.mul_(40.0)  # spread the latents over all FSQ levels
        for p in enc.parameters():
            p.add_(0.02 * torch.randn_like(p))  # biases and norms non-trivial too
    quantize = fsq.FiniteScalarQuantizer("-".join(map(str, t.fsq_levels)))

    class Ref(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.quant_proj, self.quantize = enc, quant_proj, quantize

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # VQ.encode -> tokens
            return self.quantize(self.quant_proj(self.encoder(x)))[2]

    model = Ref().eval()
    sd = dict(model.state_dict())
    sd["decoder.fake.weight"] = torch.zeros(3)  # the released files hold the decoder too
    return model, sd


def standardise(x: torch.Tensor, modality: str) -> torch.Tensor:
    t = terramind_modality(modality)
    mean = torch.tensor(t.mean).view(1, -1, 1, 1)
    std = torch.tensor(t.std).view(1, -1, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("modality", ["S2L2A", "S1GRD"])
def test_ids_match_terratorch_on_stored_values(modality: str) -> None:
    model, sd = reference(modality)
    t = terramind_modality(modality)
    g = torch.Generator().manual_seed(3)
    mean, std = torch.tensor(t.mean).view(1, -1, 1, 1), torch.tensor(t.std).view(1, -1, 1, 1)
    stored = mean + std * torch.randn(2, len(t.mean), 224, 224, generator=g)
    with torch.no_grad():
        want = model(standardise(stored, modality))
    ours = TerraMindImageTokenizer(
        build_encoder(modality, sd), {"id": "x", "version": "x", "sha256": "x"}
    )
    got = ours.encode(stored)
    assert got.shape == want.shape == (2, 14, 14)
    assert torch.equal(got, want.long())
    assert len(torch.unique(want)) > 20  # the check covers many codes, not one


def test_lulc_legend_values_become_terramind_class_channels() -> None:
    model, sd = reference("LULC", seed=1)
    t = terramind_modality("LULC")
    rng = np.random.default_rng(4)
    legend = rng.choice([0, *LULC_CLASSES], size=(2, 1, 224, 224)).astype(np.uint8)
    # TerraMind's channel of each pixel: nodata -> 0, class index i -> lulc_channels[i]
    lut = np.zeros(256, np.int64)
    for i, v in enumerate(LULC_CLASSES):
        lut[v] = t.lulc_channels[i]
    with torch.no_grad():
        want = model(torch.from_numpy(lut[legend[:, 0]]))  # class map; ViTEncoder one-hots it
    ours = TerraMindImageTokenizer(
        build_encoder("LULC", sd), {"id": "x", "version": "x", "sha256": "x"}
    )
    assert torch.equal(ours.encode(torch.from_numpy(legend)), want.long())


def test_converted_checkpoint_loads_as_a_tokenizer_kind(tmp_path: Path) -> None:
    model, sd = reference("S1GRD", seed=2)
    torch.save(sd, tmp_path / "TerraMind_Tokenizer_S1GRD.pt")
    identity = convert_checkpoint(
        tmp_path / "TerraMind_Tokenizer_S1GRD.pt", "S1GRD", tmp_path / "s1grd"
    )
    tok = load_tokenizer(tmp_path / "s1grd")
    assert isinstance(tok, TerraMindImageTokenizer)
    assert tok.identity == identity and tok.vocab_size == 15360 and tok.patch_size == 16
    stored = torch.randn(1, 2, 224, 224) * 5 - 15
    stored[0, :, :16, :16] = float("nan")  # nodata -> the band mean, as for the corpus
    fixed = torch.where(
        torch.isnan(stored),
        torch.tensor(terramind_modality("S1GRD").mean).view(1, -1, 1, 1),
        stored,
    )
    with torch.no_grad():
        want = model(standardise(fixed, "S1GRD"))
    assert torch.equal(tok.encode(stored), want.long())
    with pytest.raises(ValueError, match="terratorch"):
        tok.decode(want.long())
    # the identity guards the weights: a changed file is refused
    (tmp_path / "s1grd" / "model.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match="sha256"):
        load_tokenizer(tmp_path / "s1grd")


def test_wrong_channels_or_a_pickle_are_refused(tmp_path: Path) -> None:
    _, sd = reference("S1GRD")
    with pytest.raises(ValueError, match="channels"):
        build_encoder("S2L2A", sd)
    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": object()}))
    with pytest.raises(ValueError, match="weights-only"):
        convert_checkpoint(tmp_path / "evil.pt", "S1GRD", tmp_path / "out")
