"""Evaluation: metrics, baselines fitted in the same run, the report table and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from gen_support import Stack, one_thread, shared_root, tiny_model, toy_stack  # noqa: F401

from terraloom.model.cli import main as cli_main
from terraloom.model.evaluate import (
    DEFAULT_TASKS,
    EvalConfig,
    evaluate_generation,
    haversine_km,
    psnr,
    spherical_centroid,
    ssim,
)
from terraloom.model.generate import SamplingConfig
from terraloom.model.samples import SampleReader
from terraloom.schemas.modalities import LULC_CLASSES
from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return toy_stack(shared_root(tmp_path_factory))


def test_psnr() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert psnr(x + 0.1, x).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[..., :8, :] = True
    y = x.clone()
    y[..., 8:, :] += 0.5  # outside the mask: ignored
    y[..., :8, :] += 0.01
    assert psnr(y, x, 1.0, mask).tolist() == pytest.approx([40.0, 40.0], abs=1e-3)


def test_ssim() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 32, 32, generator=g)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s = ssim(noisy, x)
    assert bool((s < 0.9).all()) and bool((s > 0).all())
    assert torch.allclose(s, ssim(x, noisy), atol=1e-6)  # symmetric
    assert float(ssim(x * 0.5 + 0.25, x).mean()) < 1.0  # contrast change costs


def test_haversine_and_centroid() -> None:
    assert haversine_km(np.array([[0.0, 0.0]]), np.array([0.0, 1.0]))[0] == pytest.approx(
        111.195, abs=0.01
    )
    assert haversine_km(np.array([[89.0, 0.0]]), np.array([89.0, 180.0]))[0] == pytest.approx(
        2 * 111.195, abs=0.05
    )
    c = spherical_centroid(np.array([[10.0, 170.0], [-10.0, -170.0]]))
    assert c[0] == pytest.approx(0.0, abs=1e-9)
    assert abs(c[1]) == pytest.approx(180.0, abs=1e-9)  # across the antimeridian, not 0


def test_evaluation_report_with_baselines_from_the_same_run(stack: Stack, tmp_path: Path) -> None:
    tokenizers = load_tokenizers(stack.tokenizers, [t.target for t in DEFAULT_TASKS])
    cfg = EvalConfig(
        batch_size=4,
        progress=False,
        sampling=SamplingConfig(steps=2, temperature=0, choice_temperature=0),
    )
    report = evaluate_generation(tiny_model(), tokenizers, stack.corpus, stack.tokens, cfg)
    by = {(r["task"], r["key"]): r for r in report.rows}
    assert set(by) == {
        ("S1GRD -> S2L2A", "psnr"), ("S1GRD -> S2L2A", "ssim"), ("S2L2A -> LULC", "accuracy"),
        ("S2L2A -> LULC", "miou"), ("S2L2A -> DEM", "mae_m"), ("S2L2A -> GEO", "median_km"),
    }  # fmt: skip
    for r in report.rows:
        assert r["beats_baseline"] == (
            r["model"] > r["baseline"] if r["better"] == "higher" else r["model"] < r["baseline"]
        )
    # baselines recomputed by hand from the same stores
    train = SampleReader(stack.corpus, stack.tokens, "train")
    val = SampleReader(stack.corpus, stack.tokens, "val")
    tr, vr = train.valid_rows, val.valid_rows
    dem_mean = float(np.nanmean(train.pixels("DEM", tr, train.crops(tr)).numpy()))
    val_dem = val.pixels("DEM", vr, val.crops(vr)).numpy()
    assert by[("S2L2A -> DEM", "mae_m")]["baseline"] == pytest.approx(
        float(np.nanmean(np.abs(val_dem - dem_mean))), rel=1e-4
    )
    lulc_train = train.pixels("LULC", tr, train.crops(tr)).numpy().astype(int)
    majority = max(LULC_CLASSES, key=lambda v: int((lulc_train == v).sum()))
    lulc_val = val.pixels("LULC", vr, val.crops(vr)).numpy().astype(int)
    labelled = np.isin(lulc_val, LULC_CLASSES)
    assert by[("S2L2A -> LULC", "accuracy")]["baseline"] == pytest.approx(
        float((lulc_val[labelled] == majority).mean())
    )
    # decoding the true GEO tokens is within half a 0.25 degree bin of the truth
    assert by[("S2L2A -> GEO", "median_km")]["ceiling"] < 20.0
    g = zarr.open_group(str(stack.corpus / "val.zarr"), mode="r")
    latlon = np.asarray(g["GEO"][:])[vr]
    assert by[("S2L2A -> GEO", "median_km")]["baseline"] > 0
    assert (
        by[("S2L2A -> GEO", "median_km")]["baseline"]
        <= float(haversine_km(latlon, latlon[0]).max()) + 20000
    )
    j, m = report.write(tmp_path)
    table = m.read_text()
    assert "| S1GRD -> S2L2A | PSNR (dB) |" in table and "mean image" in table
    assert json.loads(j.read_text())["n_samples"] == len(vr)


def test_evaluate_cli(stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ckpt"
    tiny_model().save_pretrained(ckpt)
    rc = cli_main([
        "evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ev"), "--corpus", str(stack.corpus),
        "--tokens", str(stack.tokens), "--tokenizers", str(stack.tokenizers), "--steps", "1", "--max-samples", "2",
        "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    assert "| S2L2A -> GEO | median error (km) |" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["n_samples"] == 2
    assert (
        cli_main(
            ["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]
        )
        == 2
    )
