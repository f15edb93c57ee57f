"""Display colours: the registry's fixed ranges, legends and nodata, for every modality."""

from __future__ import annotations

import numpy as np
import pytest

from terraloom.render.colour import NODATA_RGB, nodata_mask, to_rgb, value_range
from terraloom.schemas.modalities import LULC_COLORS, get_modality


def test_classes_use_the_legend_colours_and_flag_nodata() -> None:
    lulc = np.array([[[1, 2], [0, 11]]], np.uint8)
    rgb = to_rgb("LULC", lulc)
    np.testing.assert_allclose(rgb[0, 0], np.asarray(LULC_COLORS[1]) / 255)
    np.testing.assert_allclose(rgb[1, 1], np.asarray(LULC_COLORS[11]) / 255)
    np.testing.assert_allclose(rgb[1, 0], NODATA_RGB)  # nodata 0
    mask = to_rgb("cloud_mask", np.array([[0, 1], [2, 255]], np.uint8))
    assert mask[0, 1].min() > 0.9 and mask[1, 0].max() < 0.3  # cloud white, shadow dark
    np.testing.assert_allclose(mask[1, 1], NODATA_RGB)


def test_scalars_map_the_registry_range_and_nodata_is_grey() -> None:
    ndvi = np.array([[[-1.0, 1.0], [np.nan, 0.35]]], np.float16)
    rgb = to_rgb("NDVI", ndvi)
    assert rgb[0, 0, 0] > rgb[0, 0, 1] and rgb[0, 1, 1] > rgb[0, 1, 0]  # red bare, green veg
    np.testing.assert_allclose(rgb[1, 0], NODATA_RGB)
    sar = to_rgb("S1GRD", np.array([[[-30.0, 5.0]], [[0.0, 0.0]]], np.float16))
    assert sar[0, 0].sum() == 0 and sar[0, 1].min() == 1  # clipped to -25..0 dB
    assert value_range("S1GRD", []) == (-25.0, 0.0)


def test_s2_is_true_colour_on_a_fixed_range_not_a_per_image_stretch() -> None:
    m = get_modality("S2L2A")
    s2 = np.full((12, 2, 2), 1000, np.uint16)
    s2[m.band_names.index("B04")] = 4000  # red at the top of the range
    s2[:, 1, 1] = 0  # nodata in every band
    rgb = to_rgb("S2L2A", s2)
    np.testing.assert_allclose(rgb[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(rgb[1, 1], NODATA_RGB)
    dim = to_rgb("S2L2A", (s2 // 2).astype(np.uint16))  # half as bright stays darker
    assert dim[0, 0, 0] < 0.5


def test_dem_range_is_the_data_range_shared_by_the_arrays() -> None:
    a = np.array([[[100.0, np.nan]]], np.float32)
    b = np.array([[[300.0, 500.0]]], np.float32)
    assert value_range("DEM", [a, b, None]) == (100.0, 500.0)
    assert nodata_mask("DEM", a).tolist() == [[False, True]]
    low, high = to_rgb("DEM", b, (100.0, 500.0))[0]
    assert not np.allclose(low, high)


def test_non_images_have_no_colour_display() -> None:
    with pytest.raises(ValueError, match="not an image"):
        to_rgb("GEO", np.zeros((2,)))
