"""Figures: colour bars with units, legends of the classes shown, placeholders, fitted titles."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from terraloom.render.figure import Panel, draw_figure, fit, write_figure


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_scalars_get_a_colour_bar_with_their_unit_once_per_row(rng) -> None:
    dem = rng.uniform(200, 900, (1, 16, 16)).astype(np.float32)
    rows = [
        [Panel("DEM", dem, "generated"), Panel("DEM", dem + 50, "reference")],
        [Panel("S1GRD", rng.uniform(-25, 0, (2, 16, 16)).astype(np.float16), "input")],
    ]
    fig = draw_figure(rows)
    labels = [c.get_xlabel() for ax in fig.axes for c in ax.child_axes]  # bars under images
    assert labels.count("elevation (m)") == 1 and labels.count("VV backscatter (dB)") == 1
    plt.close(fig)


def test_classes_get_a_legend_of_the_classes_present(rng) -> None:
    lulc = np.array([[[1, 1], [5, 0]]], np.uint8)
    mask = np.array([[0, 1], [0, 255]], np.uint8)
    fig = draw_figure([[Panel("LULC", lulc), Panel("cloud_mask", mask)]])
    legends = [
        [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend()
    ]
    assert legends == [["water", "crops"], ["clear", "cloud"]]
    plt.close(fig)


def test_a_missing_modality_is_a_labelled_placeholder_and_text_is_shown() -> None:
    fig = draw_figure(
        [
            [
                Panel("LULC", None, "reference", "not in the corpus"),
                Panel("GEO", np.array([45.5, 15.25])),
            ]
        ]
    )
    texts = _texts(fig)
    assert "no LULC\nnot in the corpus" in texts
    assert "lat 45.5000\nlon 15.2500" in texts
    plt.close(fig)


def test_titles_are_wrapped_to_fit(tmp_path: Path, rng) -> None:
    long = "a caption " * 40
    assert max(len(line) for line in fit(long, 2.4).split("\n")) <= int(2.4 * 72 / (9 * 0.55))
    assert fit(long, 2.4, max_lines=2).count("\n") == 1 and fit(long, 2.4, max_lines=2).endswith(
        "\u2026"
    )
    path = write_figure(
        tmp_path / "f.png",
        [[Panel("NDVI", rng.uniform(-1, 1, (1, 8, 8)).astype(np.float32))]],
        long,
    )
    img = mpimg.imread(path)
    assert img.shape[0] > 50 and img[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="at least one panel"):
        write_figure(tmp_path / "g.png", [])
