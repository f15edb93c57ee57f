"""GeoTIFF I/O of generation: COG layout, the sample's CRS and the crop's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from gen_support import CROP, Stack, one_thread, shared_root, toy_stack  # noqa: F401

from terraloom.model.geotiff import COG_BLOCK, read_geotiff, write_geotiff
from terraloom.model.samples import SampleReader, SampleRef
from terraloom.schemas.modalities import LULC_CLASSES


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return toy_stack(shared_root(tmp_path_factory))


def _ref(size: int = 224, flip: int = 0) -> SampleRef:
    return SampleRef(
        "s-1", "val", 0, (8, 16, size, size, flip), 32633, (10.0, 0.0, 5e5, 0.0, -10.0, 5e6)
    )


@pytest.mark.parametrize(("name", "bands"), [("DEM", 1), ("S2L2A", 12), ("LULC", 1)])
def test_outputs_are_cloud_optimized_geotiffs(tmp_path: Path, name: str, bands: int) -> None:
    """Tiled, with an internal overview and the COG layout; values, grid and band names kept."""
    rng = np.random.default_rng(0)
    if name == "LULC":
        values = rng.choice(np.array(LULC_CLASSES), (1, 224, 224)).astype(np.float32)
    else:
        values = rng.uniform(100, 3000, (bands, 224, 224)).astype(np.float32)
    path = write_geotiff(tmp_path / f"{name}.tif", values, _ref(), name)
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.block_shapes[0] == (COG_BLOCK, COG_BLOCK)
        assert src.overviews(1) == [2]
        assert src.count == bands and src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == (10.0, 0.0, 5e5 + 160, 0.0, -10.0, 5e6 - 80)
        assert src.tags()["modality"] == name and src.descriptions[0] is not None
        np.testing.assert_allclose(
            src.read(), np.rint(values) if name != "DEM" else values, rtol=1e-6
        )
        overview = src.read(1, out_shape=(112, 112))  # read from the overview
    if name == "LULC":  # classes are never averaged into a value no class has
        assert set(np.unique(overview)) <= set(LULC_CLASSES)


def test_a_flipped_crop_is_written_north_up_and_read_back_centred(tmp_path: Path) -> None:
    values = np.arange(224 * 224, dtype=np.float32).reshape(1, 224, 224)
    path = write_geotiff(tmp_path / "dem.tif", values, _ref(flip=1), "DEM")
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(1), values[0, :, ::-1])
    px, ref = read_geotiff(path, "DEM", 64)
    assert px.shape == (1, 1, 64, 64) and ref.epsg == 32633 and ref.crop[:2] == (80, 80)
    np.testing.assert_array_equal(px[0, 0].numpy(), values[0, 80:144, ::-1][:, 80:144])


def test_geotiff_output_carries_the_sample_crs_and_crop_transform(
    stack: Stack, tmp_path: Path
) -> None:
    import rasterio
    import zarr

    reader = SampleReader(stack.corpus, stack.tokens, "val")
    rows = reader.valid_rows[1:2]
    crops = reader.crops(rows, 1)  # a random crop of the store (may be flipped)
    ref = reader.refs(rows, crops)[0]
    g = zarr.open_group(str(stack.corpus / "val.zarr"), mode="r")
    epsg, t = int(g["epsg"][int(rows[0])]), np.asarray(g["transform"][int(rows[0])])
    assert ref.epsg == epsg
    values = reader.pixels("DEM", rows, crops)[0].numpy()
    path = write_geotiff(tmp_path / "dem.tif", values, ref, "DEM")
    top, left = int(crops[0, 0]), int(crops[0, 1])
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == epsg
        a, b, c, d, e, f = t
        expected = (a, b, c + a * left + b * top, d, e, f + d * left + e * top)
        np.testing.assert_allclose(tuple(src.transform)[:6], expected)
        back = src.read(1)
    # the raster is north-up: it equals the sample's pixels at the crop window
    sample = np.asarray(g["DEM"][int(rows[0])])[0]
    np.testing.assert_allclose(back, sample[top : top + CROP, left : left + CROP], rtol=1e-6)
