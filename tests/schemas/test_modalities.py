import numpy as np
import pytest

from terraloom.schemas.modalities import (
    LULC_CLASSES,
    MODALITY_NAMES,
    REGISTRY,
    Layout,
    Resampling,
    UnknownModalityError,
    get_modality,
    index_to_lulc,
    lulc_to_index,
    modalities,
)

DESIGN_TABLE = {
    # name: (bands, dtype)
    "S2L1C": (13, "uint16"),
    "S2L2A": (12, "uint16"),
    "S2RGB": (3, "uint8"),
    "S1GRD": (2, "float16"),
    "S1RTC": (2, "float16"),
    "DEM": (1, "float32"),
    "LULC": (1, "uint8"),
    "NDVI": (1, "float16"),
    "GEO": (2, "float64"),
    "CAPTION": (1, "uint8"),
}


def test_registry_has_every_design_modality_with_band_count_and_dtype():
    assert set(MODALITY_NAMES) == set(DESIGN_TABLE)
    for name, (bands, dtype) in DESIGN_TABLE.items():
        m = get_modality(name)
        assert m.n_bands == bands, name
        assert m.dtype == dtype, name


def test_s2_band_lists():
    l1c = get_modality("S2L1C").band_names
    l2a = get_modality("S2L2A").band_names
    assert "B10" in l1c and "B10" not in l2a
    assert l2a == tuple(b for b in l1c if b != "B10")
    assert l1c[:4] == ("B01", "B02", "B03", "B04") and "B8A" in l1c
    # Earth Search uses common-name asset keys, Planetary Computer band names.
    red = get_modality("S2L2A").bands[3]
    assert (red.asset_key, red.es_asset_key, red.common_name) == ("B04", "red", "red")


def test_lulc_has_nine_classes_plus_nodata():
    m = get_modality("LULC")
    assert m.n_classes == 9 and len(m.class_names) == 9
    assert m.nodata == 0 and 0 not in m.classes
    assert m.vocab_size == 7 * 5 * 5 * 5 * 5


def test_lulc_index_round_trip_and_nodata():
    values = np.array([0, 1, 2, 4, 5, 7, 8, 9, 10, 11, 3], np.uint8)
    idx = lulc_to_index(values)
    assert idx[0] == 255 and idx[-1] == 255  # nodata and an unknown class
    assert list(idx[1:-1]) == list(range(9))
    assert list(index_to_lulc(idx[1:-1])) == list(LULC_CLASSES)


@pytest.mark.parametrize("m", REGISTRY, ids=lambda m: m.name)
def test_dtype_nodata_and_stats_are_consistent(m):
    dt = m.np_dtype
    if m.nodata is not None:
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            assert info.min <= m.nodata <= info.max
        else:
            assert np.isnan(m.nodata), "float modalities use NaN as nodata"
    assert len(m.mean) == len(m.std) == m.n_bands
    assert all(s > 0 for s in m.std)
    lo, hi = m.value_range
    assert lo < hi
    if m.tokenizer is not None:
        assert m.vocab_size and m.vocab_size > 0
    if m.fsq_levels:
        assert int(np.prod(m.fsq_levels)) == m.vocab_size
    if m.is_derived:
        assert m.resampling is Resampling.DERIVED
    if m.layout is not Layout.IMAGE:
        assert m.length


def test_lookup_is_case_insensitive_and_errors_list_valid_names():
    assert get_modality("s2l2a") is get_modality("S2L2A")
    assert get_modality(" dem ") is get_modality("DEM")
    with pytest.raises(UnknownModalityError) as err:
        get_modality("S3OLCI")
    assert "S3OLCI" in str(err.value) and "S2L2A" in str(err.value) and "CAPTION" in str(err.value)


def test_scale_filters():
    pixel_names = {m.name for m in modalities(pixels=True)}
    assert pixel_names == {"S2L1C", "S2L2A", "S2RGB", "S1GRD", "S1RTC", "DEM"}
    token_names = {m.name for m in modalities(tokens=True)}
    assert token_names == {"S2L2A", "S1GRD", "S1RTC", "DEM", "LULC", "NDVI", "GEO", "CAPTION"}


def test_normalize_round_trip():
    m = get_modality("S2L2A")
    x = np.random.default_rng(0).integers(1, 10000, (2, 12, 4, 4)).astype(np.uint16)
    z = m.normalize(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(m.denormalize(z), x, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize(("name", "bad"), [("S2L2A", 0), ("S1GRD", np.nan), ("DEM", np.inf)])
def test_normalize_sets_nodata_and_non_finite_to_the_mean(name, bad) -> None:
    """Nodata (the registry's value, or NaN) and non-finite values normalise to 0, the rest
    to (x - mean) / std; (band, y, x) and (sample, band, y, x) alike."""
    m = get_modality(name)
    x = np.ones((2, m.n_bands, 3, 3), np.float32) * np.asarray(m.mean, np.float32)[:, None, None]
    x = x + np.asarray(m.std, np.float32)[:, None, None]  # one std above the mean: 1.0
    x[0, 0, 1, 2] = bad
    z = m.normalize(x)
    assert z[0, 0, 1, 2] == 0.0
    z[0, 0, 1, 2] = 1.0
    np.testing.assert_allclose(z, 1.0, rtol=1e-5)
    assert m.normalize(x[0])[0, 1, 2] == 0.0


@pytest.mark.parametrize(
    "module",
    ["modality_types", "registry", "legends", "reflectance", "conventions", "terramind"],
)
def test_the_registry_facade_re_exports_every_public_name(module: str) -> None:
    """``terraloom.schemas.modalities`` stays the one import path of the registry's parts:
    every public name of each part is re-exported, as the same object."""
    import importlib

    facade = importlib.import_module("terraloom.schemas.modalities")
    part = importlib.import_module(f"terraloom.schemas.{module}")
    public = {
        n
        for n, v in vars(part).items()
        if not n.startswith("_")
        and getattr(v, "__module__", part.__name__) == part.__name__
        and n not in {"annotations", "np", "enum", "dataclass", "field"}
    }
    assert public <= set(facade.__all__)
    for n in public:
        assert getattr(facade, n) is getattr(part, n), n


def test_earth_engine_s2_band_ids_follow_the_registry() -> None:
    """Earth Engine's S2 band ids are derived from the registry's band list (B01 -> B1, B8A)."""
    from terraloom.schemas.modalities import EARTH_ENGINE

    l1c = dict(EARTH_ENGINE["sentinel-2-l1c"].bands)
    assert list(l1c) == list(get_modality("S2L1C").band_names)
    assert l1c["B01"] == "B1" and l1c["B8A"] == "B8A" and l1c["B10"] == "B10"
    l2a = dict(EARTH_ENGINE["sentinel-2-l2a"].bands)
    assert "B10" not in l2a and l2a["SCL"] == "SCL" and l2a["B12"] == "B12"
