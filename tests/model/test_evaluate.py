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
    grid_energy,
    grid_ratio,
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


def test_grid_energy_is_the_dft_power_at_the_patch_frequency_and_harmonics() -> None:
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    power = np.abs(np.fft.fft2(x.numpy().astype(np.float64))) ** 2
    lattice = np.zeros((64, 48), bool)
    lattice[:: 64 // 16, :: 48 // 16] = True  # (k H / 16, l W / 16)
    lattice[0, 0] = False  # not the mean
    want = (power * lattice).sum((-2, -1)) / (64 * 48) ** 2
    assert grid_energy(x).numpy() == pytest.approx(want, rel=1e-4)


def _terrain(n: int = 4, size: int = 128) -> torch.Tensor:
    """Smooth synthetic elevation (m): a slope plus broad hills, different per sample."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    out = []
    for _ in range(n):
        a, b, ph = (torch.rand(3, generator=g) * torch.tensor([1.0, 1.0, 6.28])).tolist()
        out.append(300 + a * xx + b * yy + 40 * torch.sin(xx / 23 + ph) * torch.cos(yy / 31))
    return torch.stack(out)[:, None]


def test_grid_ratio_tells_a_16_px_grid_from_noise() -> None:
    ref = _terrain()
    g = torch.Generator().manual_seed(2)
    noise = ref + 3.0 * torch.randn(ref.shape, generator=g)
    # every 16 px patch gets the same seam: a checkerboard of 8 px squares plus an edge ramp
    i = torch.arange(128) % 16
    cell = torch.where((i[:, None] < 8) ^ (i[None, :] < 8), 1.0, -1.0) + (i[None, :] - 7.5) / 7.5
    gridded = noise + 3.0 * cell
    r_noise, r_grid = grid_ratio(noise, ref), grid_ratio(gridded, ref)
    assert r_noise < 0.05  # noise spreads over every frequency, little lands on the lattice
    assert r_grid > 0.5 and r_grid > 20 * r_noise
    assert grid_ratio(ref, ref) == 0.0
    flat = torch.full_like(ref, float(ref.mean()))
    assert grid_ratio(flat, ref, detrended=False) == pytest.approx(1.0)
    # the slope of a whole crop is not a grid: a constant, or the right hills on a wrong
    # slope, put little on the lattice once each crop's plane is removed ...
    assert grid_ratio(flat, ref) < 0.05
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    tilted = ref + 0.8 * xx - 0.5 * yy
    assert grid_ratio(tilted, ref) < 1e-6 and grid_ratio(tilted, ref, detrended=False) > 0.5
    # ... but drawing the slope as a staircase (every patch flat at its mean) is one
    patch_means = torch.nn.functional.avg_pool2d(ref, 16).repeat_interleave(16, 2)
    staircase = patch_means.repeat_interleave(16, 3)
    assert grid_ratio(staircase, ref) > 0.8
    # blocky but not periodic (an independent level per patch): its spectrum is zero on the
    # lattice; the measure looks for seams repeated in every patch, blockiness shows in the MAE
    levels = torch.randn(4, 1, 8, 8, generator=g).repeat_interleave(16, 2).repeat_interleave(16, 3)
    assert grid_ratio(ref + 3.0 * levels, ref) < 0.05
    # units do not matter; nodata in the reference is neither error nor structure
    assert grid_ratio(gridded * 1000, ref * 1000) == pytest.approx(r_grid, rel=1e-4)
    holed = ref.clone()
    holed[:, :, 40:60, 40:60] = float("nan")
    valid = torch.isfinite(holed)
    assert grid_ratio(noise, holed, valid) < 0.05
    assert grid_ratio(gridded, holed, valid) > 0.5


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
        ("S1GRD -> S2L2A", "grid"), ("S2L2A -> DEM", "grid"), ("S2L2A -> S1GRD", "mae_db"),
        ("S2L2A -> S1GRD", "grid"),
    }  # fmt: skip
    for r in report.rows:
        if r["key"] == "grid":  # a constant has no grid: compared with the ceiling only
            assert r["beats_baseline"] is None
            continue
        assert r["beats_baseline"] == (
            r["model"] > r["baseline"] if r["better"] == "higher" else r["model"] < r["baseline"]
        )
    assert "| grid artifact (16 px) |" in report.to_markdown()
    # baselines recomputed by hand from the same stores
    train = SampleReader(stack.corpus, stack.tokens, "train")
    val = SampleReader(stack.corpus, stack.tokens, "val")
    tr, vr = train.valid_rows, val.valid_rows
    dem_mean = float(np.nanmean(train.pixels("DEM", tr, train.crops(tr)).numpy()))
    val_dem = val.pixels("DEM", vr, val.crops(vr)).numpy()
    assert by[("S2L2A -> DEM", "mae_m")]["baseline"] == pytest.approx(
        float(np.nanmean(np.abs(val_dem - dem_mean))), rel=1e-4
    )
    # a constant prediction: the error is the reference itself, less its per-crop plane
    # (exactly 1 before the plane is removed)
    t = torch.from_numpy(val_dem)
    flat = torch.full_like(t, dem_mean)
    assert by[("S2L2A -> DEM", "grid")]["baseline"] == pytest.approx(
        grid_ratio(flat, t, torch.isfinite(t)), rel=1e-4
    )
    assert grid_ratio(flat, t, torch.isfinite(t), detrended=False) == pytest.approx(1.0, rel=1e-4)
    assert by[("S2L2A -> S1GRD", "grid")]["baseline"] < 1.0
    s1_mean = np.nanmean(train.pixels("S1GRD", tr, train.crops(tr)).numpy(), axis=(0, 2, 3))
    val_s1 = val.pixels("S1GRD", vr, val.crops(vr)).numpy()
    assert by[("S2L2A -> S1GRD", "mae_db")]["baseline"] == pytest.approx(
        float(np.nanmean(np.abs(val_s1 - s1_mean[None, :, None, None]))), rel=1e-3
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
