"""quicklook: panel colouring is right, one PNG per accepted sample with every modality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest

from terraloom.pipeline.cli import main as cli_main
from terraloom.pipeline.quicklook import (
    LULC_COLORS,
    decode_caption,
    panel_rgb,
    render_corpus,
    stretch,
)


def test_stretch_maps_percentiles_to_unit_range_and_ignores_nodata() -> None:
    x = np.zeros((1, 10, 10), np.uint16)
    x[0, :, 5:] = np.arange(50).reshape(10, 5) + 100  # left half nodata (0)
    s = stretch(x)
    assert s.min() == 0 and s.max() == 1
    assert (s[0, :, :5] == 0).all()
    assert s[0, 9, 9] == 1 and s[0, 0, 5] == 0


def test_panels_use_the_legend_and_flag_nodata() -> None:
    lulc = np.array([[[1, 2], [0, 11]]], np.uint8)
    rgb = panel_rgb("LULC", lulc)
    np.testing.assert_allclose(rgb[0, 0], np.asarray(LULC_COLORS[1]) / 255)
    np.testing.assert_allclose(rgb[1, 1], np.asarray(LULC_COLORS[11]) / 255)
    np.testing.assert_allclose(rgb[1, 0], [0.5, 0.5, 0.5])  # nodata grey
    ndvi = np.array([[[-1.0, 1.0], [np.nan, 0.0]]], np.float16)
    rgb = panel_rgb("NDVI", ndvi)
    assert (
        rgb[0, 0, 0] > rgb[0, 0, 1] and rgb[0, 1, 1] > rgb[0, 1, 0]
    )  # red for bare, green for vegetation
    np.testing.assert_allclose(rgb[1, 0], [0.5, 0.5, 0.5])
    s2 = np.zeros((12, 4, 4), np.uint16)
    s2[3] = 3000  # B04 only -> red dominates
    s2[3, 0, 0] = 100
    rgb = panel_rgb("S2L2A", s2)
    assert rgb.shape == (4, 4, 3) and rgb[1, 1, 0] == 1.0 and rgb[1, 1, 2] == 0.0
    sar = panel_rgb("S1GRD", np.array([[[-30.0, 5.0]], [[0.0, 0.0]]], np.float16))
    assert sar[0, 0].sum() == 0 and sar[0, 1].min() == 1
    with pytest.raises(ValueError, match="no quicklook"):
        panel_rgb("GEO", np.zeros((2,)))


def test_decode_caption_strips_padding_and_control_bytes() -> None:
    raw = np.zeros(16, np.uint8)
    raw[:6] = list(b"a $x\x01b")
    assert decode_caption(raw) == "a $x\ufffdb"


def test_render_one_png_per_accepted_sample(tiny_reference: dict[str, Any], tmp_path: Path) -> None:
    out = tiny_reference["out"]
    index = tiny_reference["index"]
    paths = render_corpus(out, tmp_path / "ql", limit=3, progress=False)
    assert [p.name for p in paths] == [f"{r['sample_id']}.png" for r in index[:3]]
    img = mpimg.imread(paths[0])
    assert img.shape[1] > 4 * img.shape[0]  # eight image panels side by side + the mask
    assert img[..., :3].std() > 0.05  # not a blank canvas
    one = index[-1]
    assert (
        cli_main(
            [
                "quicklook",
                str(out),
                "--out",
                str(tmp_path / "cli"),
                "--sample-id",
                one["sample_id"],
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "cli").rglob("*.png")) == [f"{one['sample_id']}.png"]
    assert (
        cli_main(["quicklook", str(out), "--out", str(tmp_path / "x"), "--sample-id", "nope"]) == 2
    )
    assert cli_main(["quicklook", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
