from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from terraloom.schemas.layouts import validate_corpus
from terraloom.schemas.modalities import LULC_CLASSES, get_modality
from terraloom.tokenize_jobs.testing import make_toy_corpus


def test_toy_corpus_matches_the_layout_and_dtypes(toy_corpus: Path) -> None:
    for split in ("train", "val"):
        assert validate_corpus(toy_corpus / f"{split}.zarr") == []
    g = zarr.open_group(str(toy_corpus / "train.zarr"), mode="r")
    assert g["valid"][:].tolist() == [True] * 7 + [False]
    for name in ("S2L2A", "S1GRD", "DEM", "LULC", "NDVI"):
        assert np.dtype(g[name].dtype) == get_modality(name).np_dtype
    lulc = np.asarray(g["LULC"][:7])
    assert set(np.unique(lulc)) <= set(LULC_CLASSES)
    s2 = np.asarray(g["S2L2A"][:7]).astype(np.float32)
    ndvi = np.asarray(g["NDVI"][:7]).astype(np.float32)
    ok = s2[:, 3] > 0
    with np.errstate(invalid="ignore"):
        expect = (s2[:, 7] - s2[:, 3]) / (s2[:, 7] + s2[:, 3])
    assert np.allclose(ndvi[:, 0][ok], expect[ok], atol=2e-3)  # NDVI derives from B08, B04
    assert np.isnan(ndvi[:, 0][~ok]).all()
    geo = np.asarray(g["GEO"][:7])
    assert (np.abs(geo[:, 0]) <= 90).all() and (np.abs(geo[:, 1]) <= 180).all()
    # invalid rows hold fill values
    assert np.isnan(np.asarray(g["DEM"][7])).all()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_toy_corpus(tmp_path / "a", 1, seed=5, splits=("train",), modalities=("DEM", "CAPTION"))
    b = make_toy_corpus(tmp_path / "b", 1, seed=5, splits=("train",), modalities=("DEM", "CAPTION"))
    c = make_toy_corpus(tmp_path / "c", 1, seed=6, splits=("train",), modalities=("DEM", "CAPTION"))
    ga, gb, gc = (zarr.open_group(str(p / "train.zarr"), mode="r") for p in (a, b, c))
    assert np.array_equal(ga["DEM"][:], gb["DEM"][:]) and np.array_equal(
        ga["CAPTION"][:], gb["CAPTION"][:]
    )
    assert not np.array_equal(ga["DEM"][:], gc["DEM"][:])
