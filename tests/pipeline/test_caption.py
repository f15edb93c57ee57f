from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from terraloom.pipeline.caption import (
    Captioner,
    SampleStats,
    StatisticsCaptioner,
    caption_sample,
    caption_time,
    caption_to_bytes,
    sample_stats,
    season,
    truncate_utf8,
)
from terraloom.schemas.modalities import CAPTION_MAX_BYTES


def _lulc(fractions: dict[int, float], n: int = 100) -> np.ndarray:
    vals: list[int] = []
    for code, f in fractions.items():
        vals += [code] * int(round(f * n * n))
    return np.array(vals, np.uint8).reshape(n, n)


def test_statistics_caption_matches_the_documented_example() -> None:
    lulc = _lulc({5: 0.52, 2: 0.18, 7: 0.09, 11: 0.21})
    dem = np.full((100, 100), 140.0, np.float32) + np.linspace(0, 6, 100, dtype=np.float32)[None]
    ndvi = np.full((100, 100), 0.7, np.float32)
    stats = sample_stats(
        48.0, 11.0, lulc=lulc, dem=dem, ndvi=ndvi, when=dt.datetime(2023, 7, 3, tzinfo=dt.UTC)
    )
    text = StatisticsCaptioner().caption(stats)
    assert text.startswith("Mostly cropland (52%) with ")
    assert "patches of rangeland (21%)" in text and "patches of trees (18%)" in text
    assert "a small built-up area (9%)" in text
    assert "on flat terrain around 140 m" in text
    assert text.endswith(", summer, vegetation vigorous.")
    assert StatisticsCaptioner().caption(stats) == text  # deterministic


def test_seasons_flip_in_the_southern_hemisphere() -> None:
    assert season(7, 45.0) == "summer" and season(7, -33.0) == "winter"
    assert season(10, -33.0) == "spring" and season(1, 10.0) == "winter"
    stats = SampleStats(
        lat=-33.0, lon=151.0, month=1, relief=600.0, elevation_mean=812.0, ndvi_mean=0.05
    )
    text = StatisticsCaptioner().caption(stats)
    assert "mountainous terrain around 810 m" in text
    assert "southern-hemisphere summer" in text and "little or no vegetation" in text


def test_water_presence_is_mentioned_even_when_small() -> None:
    stats = sample_stats(10.0, 10.0, lulc=_lulc({2: 0.97, 1: 0.03}))
    text = StatisticsCaptioner().caption(stats)
    assert text.startswith("Mostly trees (97%)") and "a little open water (3%)" in text
    assert stats.water_fraction == pytest.approx(0.03)


def test_caption_bytes_are_utf8_zero_padded_and_bounded() -> None:
    long = "Ünïcödé " * 100
    cut = truncate_utf8(long, CAPTION_MAX_BYTES)
    assert len(cut.encode("utf-8")) <= CAPTION_MAX_BYTES
    assert long.startswith(cut)  # never splits a character
    arr = caption_to_bytes("Mostly trees.")
    assert arr.shape == (CAPTION_MAX_BYTES,) and arr.dtype == np.uint8
    assert bytes(arr[:13]).decode() == "Mostly trees." and not arr[13:].any()


def test_any_object_with_caption_is_a_captioner() -> None:
    class Vlm:
        def caption(self, stats: SampleStats) -> str:
            return f"image at {stats.lat:.1f}"

    assert isinstance(Vlm(), Captioner) and isinstance(StatisticsCaptioner(), Captioner)


def test_stats_ignore_nodata_and_report_quality_metrics() -> None:
    dem = np.array([[np.nan, 100.0], [200.0, 300.0]], np.float32)
    lulc = np.array([[0, 1], [2, 2]], np.uint8)  # 0 is nodata
    stats = sample_stats(1.0, 2.0, lulc=lulc, dem=dem)
    assert stats.elevation_min == 100.0 and stats.elevation_max == 300.0
    assert dict(stats.lulc_fractions) == pytest.approx({"trees": 2 / 3, "water": 1 / 3})
    q = stats.as_quality()
    assert q["elevation_mean"] == pytest.approx(200.0) and q["lulc_trees"] == pytest.approx(2 / 3)


def test_caption_sample_reads_its_statistics_from_the_sample_images() -> None:
    class Echo:
        def caption(self, stats: SampleStats) -> str:
            return f"{stats.elevation_mean:.0f} m, month {stats.month}, rgb {stats.rgb is not None}"

    when = dt.datetime(2023, 7, 1, tzinfo=dt.UTC)
    images = {"DEM": np.full((1, 4, 4), 140.0, np.float32), "NDVI": None, "S2RGB": None}
    text, stats = caption_sample(Echo(), 45.0, 15.0, images, when)
    assert text == "140 m, month 7, rgb False" and stats.ndvi_mean is None
    s1 = dt.datetime(2023, 6, 1, tzinfo=dt.UTC)
    assert caption_time({"S1GRD": s1, "S2L2A": when}) == when
    assert caption_time({"DEM": None, "S1GRD": s1}) == s1
    assert caption_time({}) is None
