"""The ``generate`` command end to end: corpus samples and GeoTIFF inputs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gen_support import CROP, Stack, one_thread, shared_root, tiny_model, toy_stack  # noqa: F401

from terraloom.model.cli import main as cli_main
from terraloom.model.geotiff import write_geotiff
from terraloom.model.samples import SampleReader


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return toy_stack(shared_root(tmp_path_factory))


def test_generate_cli_writes_geotiffs_panel_and_json(stack: Stack, tmp_path: Path) -> None:
    import rasterio
    import zarr

    ckpt = tmp_path / "ckpt"
    tiny_model().save_pretrained(ckpt)
    out = tmp_path / "gen"
    sample_id = "val-002"
    rc = cli_main([
        "generate", "--checkpoint", str(ckpt), "--input", f"S1GRD={sample_id}", "--target", "LULC,S2L2A,DEM,GEO",
        "--out", str(out), "--corpus", str(stack.corpus), "--tokens", str(stack.tokens),
        "--tokenizers", str(stack.tokenizers), "--steps", "2", "--seed", "1",
    ])  # fmt: skip
    assert rc == 0
    d = out / sample_id
    g = zarr.open_group(str(stack.corpus / "val.zarr"), mode="r")
    crop = SampleReader(stack.corpus, stack.tokens, "val").crops(np.array([2]), 0)[0]
    a, b, c, dd, e, f = np.asarray(g["transform"][2])
    for t, bands in (("LULC", 1), ("S2L2A", 12), ("DEM", 1)):
        with rasterio.open(d / f"{t}.tif") as src:
            assert src.count == bands
            assert src.crs.to_epsg() == int(g["epsg"][2])
            assert src.transform.c == pytest.approx(c + a * crop[1] + b * crop[0])
            assert src.transform.f == pytest.approx(f + dd * crop[1] + e * crop[0])
            assert (src.width, src.height) == (CROP, CROP)
    meta = json.loads((d / "generated.json").read_text())
    assert -90 <= meta["targets"]["GEO"]["lat"] <= 90
    assert (d / "panel.png").stat().st_size > 1000
    # same seed -> same files
    out2 = tmp_path / "gen2"
    cli_main([
        "generate", "--checkpoint", str(ckpt), "--input", f"S1GRD={sample_id}", "--target", "LULC,S2L2A,DEM,GEO",
        "--out", str(out2), "--corpus", str(stack.corpus), "--tokens", str(stack.tokens),
        "--tokenizers", str(stack.tokenizers), "--steps", "2", "--seed", "1",
    ])  # fmt: skip
    assert json.loads((out2 / sample_id / "generated.json").read_text()) == meta


def test_generate_cli_bad_input_exits_2(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "ckpt"
    tiny_model().save_pretrained(ckpt)
    common = [
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "o"),
        "--corpus",
        str(stack.corpus),
        "--tokens",
        str(stack.tokens),
        "--tokenizers",
        str(stack.tokenizers),
    ]
    assert (
        cli_main(["generate", *common, "--input", "S1GRD=no-such-sample", "--target", "LULC"]) == 2
    )
    assert "no-such-sample" in capsys.readouterr().err
    assert cli_main(["generate", *common, "--input", "S9=val-000", "--target", "LULC"]) == 2
    assert "unknown modality" in capsys.readouterr().err
    assert cli_main(["generate", *common, "--input", "S1GRD=val-000", "--target", "S2RGB"]) == 2


def test_generate_cli_from_a_geotiff_keeps_its_grid(stack: Stack, tmp_path: Path) -> None:
    import rasterio

    reader = SampleReader(stack.corpus, stack.tokens, "val")
    rows = reader.valid_rows[:1]
    big = np.array([[0, 0, 96, 96, 0]])  # a 96 px window: the CLI takes its centred 64 px
    ref = reader.refs(rows, big)[0]
    src = write_geotiff(
        tmp_path / "s1.tif", reader.pixels("S1GRD", rows, big)[0].numpy(), ref, "S1GRD"
    )
    ckpt = tmp_path / "ckpt"
    tiny_model().save_pretrained(ckpt)
    rc = cli_main([
        "generate", "--checkpoint", str(ckpt), "--input", f"S1GRD={src}", "--target", "LULC",
        "--out", str(tmp_path / "o"), "--tokenizers", str(stack.tokenizers), "--steps", "1",
    ])  # fmt: skip
    assert rc == 0
    with rasterio.open(src) as a, rasterio.open(tmp_path / "o" / "s1" / "LULC.tif") as b:
        assert b.crs == a.crs
        assert (b.width, b.height) == (CROP, CROP)
        assert b.transform.c == pytest.approx(a.transform.c + 16 * a.transform.a)
        assert b.transform.f == pytest.approx(a.transform.f + 16 * a.transform.e)
