"""coverage: samples cluster as they lie, each cluster gets a zoom under the world map."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import shapely

from terraloom.pipeline.publish.coverage import MAX_ZOOMS, clusters, coverage_png, land_rings


def _row(lon: float, lat: float, split: str = "train") -> dict[str, Any]:
    box = shapely.box(lon - 0.012, lat - 0.012, lon + 0.012, lat + 0.012)
    return {"center_lon": lon, "center_lat": lat, "split": split, "geometry": box.wkb}


def test_clusters_group_near_centres_largest_first() -> None:
    rows = [_row(12.0 + 0.03 * i, 46.5) for i in range(5)]  # one cell's samples
    rows += [_row(-51.2, -23.3, "val"), _row(-51.1, -23.3, "val")]
    rows += [_row(150.0, -30.0)]
    got = clusters(rows)
    assert got == [[0, 1, 2, 3, 4], [5, 6], [7]]


def test_coverage_png_draws_the_world_and_a_zoom_per_cluster() -> None:
    import matplotlib.image as mpimg

    assert len(land_rings()) > 50  # the shipped outline: continents and large islands
    one = [_row(12.0, 46.5)]
    four = one + [_row(-51.2, -23.3, "val"), _row(100.0, 10.0), _row(150.0, -30.0)]
    small = mpimg.imread(io.BytesIO(coverage_png(one, "one")))
    big = mpimg.imread(io.BytesIO(coverage_png(four, "four")))
    assert small.shape == big.shape and small.shape[0] > 0.7 * small.shape[1]  # map + zoom row
    # the land outline is drawn: the map's land colour covers a good part of the picture
    land = np.all(np.abs(small[..., :3] - np.array([232, 223, 200]) / 255) < 0.02, axis=-1)
    assert 0.05 < land.mean() < 0.5
    assert MAX_ZOOMS == 3  # four clusters: the picture says only the largest three are zoomed
