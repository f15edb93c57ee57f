"""Ordinal targets: the soft-target distributions, their defaults, the model's loss with
them, and that they make a categorical head generalise across neighbouring levels."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from terraloom.model.ordinal import (
    OrdinalTarget,
    default_ordinal_targets,
    ordinal_cross_entropy,
    ordinal_target,
    run_ordinal_targets,
    soft_targets,
)


def test_zero_sigma_is_plain_cross_entropy() -> None:
    t = OrdinalTarget((5, 3), (0.0, 0.0))
    labels = torch.tensor([0, 7, 14, 9])
    q = soft_targets(labels, t)
    assert torch.equal(q, F.one_hot(labels, 15).float())
    logits = torch.randn(4, 15, generator=torch.Generator().manual_seed(0))
    want = F.cross_entropy(logits, labels, reduction="sum")
    assert torch.allclose(ordinal_cross_entropy(logits, labels, t), want)


def test_soft_target_is_a_gaussian_along_the_fine_scalar_only() -> None:
    # code = fine level + 40 * coarse level (fine scalar least significant)
    t = OrdinalTarget((40, 3), (2.0, 0.0))
    label = torch.tensor([20 + 40 * 2])
    q = soft_targets(label, t)[0]
    assert torch.isclose(q.sum(), torch.tensor(1.0))
    grid = q.view(3, 40)  # (coarse, fine)
    assert grid[:2].sum() == 0  # the coarse scalar is matched exactly
    fine = grid[2]
    assert int(fine.argmax()) == 20
    assert torch.allclose(fine, fine.flip(0).roll(1))  # symmetric about level 20
    mean = float((fine * torch.arange(40)).sum())
    sd = float((fine * (torch.arange(40) - mean) ** 2).sum()) ** 0.5
    assert mean == pytest.approx(20.0, abs=1e-4) and sd == pytest.approx(2.0, rel=0.02)


def test_soft_target_is_truncated_and_renormalised_at_the_edge() -> None:
    q = soft_targets(torch.tensor([0]), OrdinalTarget((30,), (3.0,)))[0]
    assert torch.isclose(q.sum(), torch.tensor(1.0)) and int(q.argmax()) == 0
    assert float((q * torch.arange(30)).sum()) > 1.0  # the mass left below 0 is not there


def test_defaults_smooth_only_the_fine_scalars() -> None:
    t = default_ordinal_targets(["S2L2A", "S1GRD", "DEM", "LULC", "GEO"], 0.02)
    assert set(t) == {"S1GRD", "DEM"}  # S2L2A's 64-level scalar and LULC are coarse
    assert t["DEM"] == OrdinalTarget((15360,), (0.02 * 15360,))
    assert t["S1GRD"].levels == (3072, 5) and t["S1GRD"].sigma == (0.02 * 3072, 0.0)
    assert default_ordinal_targets(["DEM"], 0.0) == {}
    # another grouping: DEM as (512, 6, 5) keeps its 512-level scalar ordinal
    g = default_ordinal_targets(["DEM"], 0.01, groups={"DEM": (3, 1, 1)})
    assert g["DEM"] == ordinal_target((512, 6, 5), 0.01)
    with pytest.raises(ValueError):
        OrdinalTarget((4, 4), (1.0,))


def test_wrong_head_size_is_refused() -> None:
    with pytest.raises(ValueError, match="ordinal target of 12 codes"):
        ordinal_cross_entropy(torch.zeros(2, 10), torch.tensor([1, 2]), OrdinalTarget((12,), (1,)))


def _fit(loss_kind: str, x: torch.Tensor, y: torch.Tensor, n_levels: int) -> torch.nn.Linear:
    """A categorical head on radial features of a scalar, trained with either loss."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, n_levels)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    t = OrdinalTarget((n_levels,), (4.0,))
    for _ in range(300):
        logits = head(_features(x))
        if loss_kind == "ordinal":
            loss = ordinal_cross_entropy(logits, y, t) / len(y)
        else:
            loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def _features(x: torch.Tensor) -> torch.Tensor:
    centres = torch.linspace(0, 1, 16)
    return torch.exp(-(((x[:, None] - centres) / 0.08) ** 2))


def test_ordinal_targets_generalise_to_levels_never_seen() -> None:
    """Each training code seen once (as DEM's codes are in the demo): plain cross-entropy
    learns nothing about the codes in between, the ordinal target does."""
    n = 200
    g = torch.Generator().manual_seed(1)
    x_train, x_val = torch.rand(40, generator=g), torch.rand(200, generator=g)
    y_train = (x_train * (n - 1)).round().long()
    y_val = x_val * (n - 1)
    err = {}
    for kind in ("plain", "ordinal"):
        head = _fit(kind, x_train, y_train, n)
        with torch.no_grad():
            p = torch.softmax(head(_features(x_val)), -1)
        expected = (p * torch.arange(n)).sum(-1)
        err[kind] = float((expected - y_val).abs().mean())
    assert err["ordinal"] < 0.65 * err["plain"], err  # measured: 1.25 vs 2.53 levels


def test_the_model_loss_uses_the_ordinal_targets(small_batch, small_model) -> None:
    from terraloom.model.transformer import Queries, TerraloomModel

    batch = small_batch
    torch.manual_seed(0)
    model = TerraloomModel(small_model).eval()
    plain = model.loss(batch)
    s1 = default_ordinal_targets(["S1GRD"])["S1GRD"]
    model.set_ordinal_targets({"S1GRD": OrdinalTarget(s1.levels, (0.0, 0.0))})
    assert torch.allclose(model.loss(batch).mod_sum, plain.mod_sum, rtol=1e-5)
    model.set_ordinal_targets({"S1GRD": s1})
    out = model.loss(batch)
    j = model.specs.target_index("S1GRD")
    q = Queries.from_batch(batch)
    sel = (q.mod == j) & ~q.pad
    logits = model.decode_logits(model.forward_encoder(batch), q)["S1GRD"][sel]
    want = ordinal_cross_entropy(logits, batch["tgt_ids"][sel], s1)
    assert torch.isclose(out.mod_sum[j], want, rtol=1e-5)
    others = [i for i in range(len(model.specs.targets)) if i != j]
    assert torch.allclose(out.mod_sum[others], plain.mod_sum[others], rtol=1e-5)
    assert float(out.mod_sum[j]) > float(plain.mod_sum[j])  # the Gaussian's entropy floor
    with pytest.raises(ValueError, match="ordinal target of DEM"):
        TerraloomModel(replace(small_model, targets=("DEM",))).set_ordinal_targets(
            {"DEM": OrdinalTarget((100,), (1.0,))}
        )


def test_run_targets_follow_the_tokenizers_beside_the_token_store(tmp_path) -> None:
    from terraloom.tokenize_jobs.protocol import TOKENIZER_FORMAT_VERSION
    from terraloom.tokenize_jobs.tokenizers.io import TOKENIZER_FORMAT

    (tmp_path / "tokens").mkdir()
    dem = tmp_path / "tokenizers" / "dem"
    dem.mkdir(parents=True)
    header = {"format": TOKENIZER_FORMAT, "format_version": TOKENIZER_FORMAT_VERSION}
    (dem / "config.json").write_text(json.dumps({**header, "model": {"fsq_groups": [3, 1, 1]}}))
    got = run_ordinal_targets(["DEM", "S1GRD", "LULC"], 0.01, str(tmp_path / "tokens"))
    assert got["DEM"] == ordinal_target((512, 6, 5), 0.01)  # the stored tokenizer's grouping
    assert got["S1GRD"] == ordinal_target((3072, 5), 0.01)  # none stored: the default
    assert run_ordinal_targets(["DEM"], 0.01, "s3://bucket/tokens")["DEM"].levels == (15360,)
    # the grouping the token store recorded wins: it is what encode wrote the codes with,
    # and it holds for a store read from a URL, where no tokenizer folder is beside it
    stored = {"DEM": (1, 1, 3)}
    got = run_ordinal_targets(["DEM"], 0.01, str(tmp_path / "tokens"), stored)
    assert got["DEM"] == ordinal_target((8, 8, 240), 0.01)
    got = run_ordinal_targets(["DEM"], 0.01, "s3://bucket/tokens", stored)
    assert got["DEM"] == ordinal_target((8, 8, 240), 0.01)
    assert run_ordinal_targets(["DEM"], 0.0, str(tmp_path / "tokens")) == {}
