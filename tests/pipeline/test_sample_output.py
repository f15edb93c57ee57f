"""The records one planned row becomes: corpus arrays, index row, rejects row."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest

from terraloom.pipeline.derive import Derived
from terraloom.pipeline.quality import Issue
from terraloom.pipeline.sample_output import (
    corpus_arrays,
    index_row,
    plan_reason,
    reject_row,
    to_stored,
    unplanned,
)
from terraloom.schemas.modalities import get_modality
from terraloom.schemas.tables import RejectReason

ROW: dict[str, Any] = {
    "sample_id": "c_0_0",
    "split": "val",
    "row": np.int64(3),
    "cell_id": "c",
    "geometry": b"wkb",
    "center_lon": 15.5,
    "center_lat": 45.5,
    "epsg": 32633,
    "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0, 0.0, 0.0, 1.0],
    "unmatched": [{"modality": "S1GRD", "reason": "s1_s2_delta", "message": "too far"}],
}


def test_reject_and_missing_rows_carry_the_reason_code() -> None:
    rej = reject_row(ROW, Issue(RejectReason.NODATA, "DEM", "DEM: all nodata"))
    assert rej["row"] == 3 and type(rej["row"]) is int
    assert (rej["reason"], rej["modality"], rej["message"]) == ("nodata", "DEM", "DEM: all nodata")
    assert unplanned(ROW, "S1GRD") == Issue(RejectReason.S1_S2_DELTA, "S1GRD", "too far")
    assert unplanned(ROW, "DEM").reason is RejectReason.NO_MATCH
    assert plan_reason("not a code") is RejectReason.NO_MATCH


def test_index_row_drops_non_finite_figures_and_lists_missing_modalities() -> None:
    when = dt.datetime(2023, 7, 1, tzinfo=dt.UTC)
    out = index_row(
        ROW,
        times={"S2L2A": when},
        cloud_fraction=0.1,
        s1_s2_delta_days=None,
        filled_px=2,
        quality={"b": 1.0, "a": float("nan"), "c": None},
        missing=[Issue(RejectReason.CLOUDY, "S1GRD", "why")],
        caption="text",
    )
    assert out["quality"] == {"b": 1.0}
    assert out["time_S2L2A"] == when and out["s1_s2_delta_days"] is None
    assert out["transform"] == [10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0]
    assert out["missing_modalities"] == [
        {"modality": "S1GRD", "reason": "cloudy", "message": "why"}
    ]


def test_corpus_arrays_store_built_bands_and_fill_the_rest() -> None:
    s2 = np.full((2, 4, 4), 1234.6, np.float32)
    s2[0, 0, 0] = np.nan
    derived = Derived({"NDVI": np.full((1, 4, 4), 0.5, np.float32), "S2RGB": None}, {})
    arrays = corpus_arrays(
        ("S2L2A", "DEM", "NDVI", "S2RGB", "CAPTION"),
        {"S2L2A": s2},
        {"S2L2A": ("B04", "B08")},
        derived,
        "a caption",
        (4, 4),
    )
    m = get_modality("S2L2A")
    a = arrays["S2L2A"]
    assert a.shape == (m.n_bands, 4, 4) and a.dtype == m.np_dtype
    b04, b08 = m.band_names.index("B04"), m.band_names.index("B08")
    assert a[b08, 1, 1] == 1235 and a[b04, 0, 0] == (m.nodata or 0)
    assert (a[m.band_names.index("B02")] == (m.nodata or 0)).all()  # not built: fill
    assert np.isnan(arrays["DEM"]).all() or (arrays["DEM"] == get_modality("DEM").nodata).all()
    assert arrays["NDVI"].dtype == np.float16 and float(arrays["NDVI"][0, 0, 0]) == 0.5
    assert (arrays["S2RGB"] == 0).all() and arrays["S2RGB"].shape == (3, 4, 4)
    assert bytes(arrays["CAPTION"]).rstrip(b"\0") == b"a caption"


@pytest.mark.parametrize("name", ["S2L2A", "LULC", "S1RTC", "DEM"])
def test_to_stored_rounds_clips_and_fills(name: str) -> None:
    """Integer modalities: rounded half to even, clipped to the dtype, NaN and +-inf to the
    fill value; float modalities: a cast (NaN stays NaN)."""
    m = get_modality(name)
    a = np.array([[0.5, 1.5, -0.4, np.nan], [np.inf, -np.inf, 1e9, -1e9]], np.float32)
    if np.issubdtype(m.np_dtype, np.integer):
        info = np.iinfo(m.np_dtype)
        fill = 0 if m.nodata is None else m.nodata
        got = to_stored(m, a)
        assert got.dtype == m.np_dtype
        assert got.tolist() == [
            [0, 2, max(0, info.min), fill],
            [fill, fill, info.max, info.min],
        ]
    else:
        got = to_stored(m, a[:1])  # values the float dtype holds (float16: no 1e9)
        assert np.isnan(got[0, 3]) and got[0, 0] == np.float32(0.5).astype(m.np_dtype)
