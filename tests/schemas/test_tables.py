import json
from datetime import UTC, datetime

import geopandas as gpd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from terraloom.schemas.tables import (
    RejectReason,
    empty_table,
    from_rows,
    read_table,
    write_geoparquet,
)

FOOT = shapely.box(15.0, 45.0, 15.03, 45.024)


def plan_row(i: int) -> dict:
    asset = {
        "key": "B04",
        "band": "B04",
        "href": f"file:///data/{i}/B04.tif",
        "epsg": 32633,
        "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0],
        "shape": [1098, 1098],
        "nodata": 0.0,
        "scale": 0.0001,
        "offset": -0.1,
    }
    scene = {
        "modality": "S2L2A",
        "collection": "sentinel-2-l2a",
        "item_id": f"S2A_{i}",
        "datetime": datetime(2023, 8, 15, 10, 0, tzinfo=UTC),
        "platform": "sentinel-2a",
        "orbit_state": None,
        "relative_orbit": 22,
        "cloud_cover": 3.5,
        "epsg": 32633,
        "needs_gcps": False,
        "processing_baseline": "05.09",
        "assets": [asset],
    }
    return {
        "sample_id": f"451U_946L_0_{i}",
        "split": "train",
        "row": i,
        "cell_id": "451U_946L",
        "geometry": shapely.to_wkb(FOOT),
        "center_lon": 15.015,
        "center_lat": 45.012,
        "epsg": 32633,
        "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 4990000.0],
        "width": 264,
        "height": 264,
        "scenes": [scene],
        "unmatched": [
            {"modality": "S1GRD", "reason": "no_match", "message": "no S1 within 7 days"}
        ],
        "s1_s2_delta_days": None,
    }


@pytest.mark.parametrize("n", [0, 3])
def test_plan_round_trip(tmp_path, n):
    table = from_rows("plan", [plan_row(i) for i in range(n)]) if n else empty_table("plan")
    path = write_geoparquet("plan", table, tmp_path / "plan.parquet")
    back = read_table("plan", path)
    assert back.equals(table)
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    if n:
        assert geo["columns"]["geometry"]["geometry_types"] == ["Polygon"]
        assert geo["columns"]["geometry"]["bbox"] == pytest.approx(list(FOOT.bounds))
        gdf = gpd.read_parquet(path)
        assert gdf.geometry.iloc[0].equals(FOOT)
        assert gdf.crs.equals("OGC:CRS84")  # GeoParquet default: lon/lat WGS 84


def test_index_and_rejects_round_trip(tmp_path):
    idx = from_rows(
        "index",
        [
            {
                "sample_id": "a",
                "split": "val",
                "row": 0,
                "cell_id": "c",
                "geometry": shapely.to_wkb(FOOT),
                "center_lon": 1.0,
                "center_lat": 2.0,
                "epsg": 32631,
                "transform": [10, 0, 0, 0, -10, 0],
                "time_S2L2A": datetime(2024, 5, 1, tzinfo=UTC),
                "cloud_fraction": 0.01,
                "quality": {"nodata_S2L2A": 0.0},
                "caption": "Mostly water.",
                "checksums": {"S2L2A": "ab"},
            }
        ],
    )
    write_geoparquet("index", idx, tmp_path / "index.parquet")
    assert read_table("index", tmp_path / "index.parquet").equals(idx)
    rej = from_rows(
        "rejects",
        [
            {
                "sample_id": "b",
                "split": "train",
                "row": 1,
                "cell_id": "c",
                "geometry": shapely.to_wkb(FOOT),
                "reason": RejectReason.CLOUDY.value,
                "modality": "S2L2A",
                "message": "cloud 80% > 20%",
            }
        ],
    )
    write_geoparquet("rejects", rej, tmp_path / "rejects.parquet")
    assert read_table("rejects", tmp_path / "rejects.parquet").to_pylist()[0]["reason"] == "cloudy"


def test_wrong_columns_and_wrong_kind_are_refused(tmp_path):
    bad = pa.table({"sample_id": ["x"]})
    with pytest.raises(ValueError, match="missing"):
        write_geoparquet("plan", bad, tmp_path / "p.parquet")
    write_geoparquet("rejects", empty_table("rejects"), tmp_path / "r.parquet")
    with pytest.raises(ValueError, match="'rejects' table, expected 'index'"):
        read_table("index", tmp_path / "r.parquet")


def test_write_is_atomic_no_tmp_left(tmp_path):
    write_geoparquet("plan", empty_table("plan"), tmp_path / "plan.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.parquet"]


def test_grd_assets_without_proj_round_trip(tmp_path):
    # Radar-geometry assets have no proj:transform/shape: nulls must survive the file.
    row = plan_row(0)
    row["scenes"][0]["assets"][0].update(transform=None, shape=None, epsg=None)
    table = from_rows("plan", [row])
    path = write_geoparquet("plan", table, tmp_path / "plan.parquet")
    back = read_table("plan", path).to_pylist()[0]["scenes"][0]["assets"][0]
    assert back["transform"] is None and back["shape"] is None


def test_transform_must_have_six_values(tmp_path):
    row = plan_row(0)
    row["transform"] = [10.0, 0.0, 0.0, 0.0, -10.0]
    with pytest.raises(ValueError, match="6 values"):
        write_geoparquet("plan", from_rows("plan", [row]), tmp_path / "p.parquet")


def test_an_index_written_before_missing_modalities_reads_with_nulls(tmp_path):
    """The ``missing_modalities`` column came later: older index files still read, with the
    column null ("not recorded"), and new rows keep their lists."""
    row = {
        "sample_id": "a",
        "split": "train",
        "row": 0,
        "cell_id": "0U_0R",
        "geometry": shapely.to_wkb(shapely.box(0, 0, 1, 1)),
        "center_lon": 0.5,
        "center_lat": 0.5,
        "epsg": 32631,
        "transform": [10, 0, 0, 0, -10, 0],
        "missing_modalities": [
            {"modality": "S1RTC", "reason": "unreadable_asset", "message": "truncated"}
        ],
    }
    idx = from_rows("index", [row])
    write_geoparquet("index", idx, tmp_path / "new.parquet")
    assert read_table("index", tmp_path / "new.parquet").column(
        "missing_modalities"
    ).to_pylist() == [row["missing_modalities"]]
    pq.write_table(idx.drop_columns(["missing_modalities"]), tmp_path / "old.parquet")
    old = read_table("index", tmp_path / "old.parquet")
    assert old.column("missing_modalities").to_pylist() == [None]
    assert old.column("sample_id").to_pylist() == ["a"]
