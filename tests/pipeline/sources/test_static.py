"""Static catalogs written by the test: malformed items are skipped with a reason, an
unreadable source is one clear error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from terraloom.pipeline.plan import plan_report, plan_samples
from terraloom.pipeline.sources.base import SourceError
from terraloom.pipeline.sources.static import StaticSource
from tests.pipeline.sources.catalog_kit import (
    CONFIG,
    MALFORMED,
    PERIOD,
    REGION,
    dem_item,
    write_catalog,
)


def test_a_catalog_skips_each_malformed_item_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="terraloom.pipeline.sources.base")
    src = StaticSource(write_catalog(tmp_path / "cat"))
    assert [it.id for it in src.items()] == ["good"]
    skipped = {Path(s.location).name: s for s in src.skipped_items()}
    assert {name: s.reason for name, s in skipped.items()} == {
        name: reason for name, (_, reason) in MALFORMED.items()
    }
    assert skipped["oops_assets.json"].item_id == "oops_assets"
    assert "assets is a str" in skipped["oops_assets.json"].message
    assert all(f"({s.reason})" in caplog.text for s in skipped.values())  # logged, each once
    assert caplog.text.count("(no_geometry)") == 1

    # The plan is made from the good item; the report lists what was left out.
    table = plan_samples(src, REGION, PERIOD, CONFIG)
    assert table.num_rows > 0
    assert all(sc[0]["item_id"] == "good" for sc in table.column("scenes").to_pylist())
    report = plan_report(src, table)
    assert report.skipped_by_reason() == {"bad_assets": 1, "bad_json": 1, "no_geometry": 1}
    assert report.to_dict()["skipped_items"] == 3


def test_an_item_collection_skips_each_malformed_feature(tmp_path: Path) -> None:
    features = [
        dem_item("good"),
        dem_item("null_geometry", geometry=None, bbox=None),
        dem_item("oops_assets", assets="oops"),
        '{"type": "Feature", "id": ',  # a feature that is a string of broken JSON
        dem_item("no_href", assets={"data": {"type": "image/tiff"}}),
        dem_item("bad_time", properties={"datetime": "last tuesday"}),
    ]
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    src = StaticSource(path)
    assert [it.id for it in src.items()] == ["good"]
    assert [(s.item_id, s.reason) for s in src.skipped_items()] == [  # in the order met
        ("null_geometry", "no_geometry"),
        ("oops_assets", "bad_assets"),
        (None, "not_an_item"),
        ("no_href", "bad_assets"),
        ("bad_time", "bad_datetime"),
    ]
    assert all(s.location == str(path.resolve()) for s in src.skipped_items())


def test_a_directory_skips_a_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(dem_item("a")))
    (tmp_path / "b.json").write_text('{"type": "Feature", "id": "b", ')
    src = StaticSource(tmp_path)
    assert [it.id for it in src.items()] == ["a"]
    [skipped] = src.skipped_items()
    assert (skipped.reason, Path(skipped.location).name) == ("bad_json", "b.json")


def test_a_source_that_cannot_be_read_at_all_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SourceError, match="cannot read STAC file"):
        StaticSource(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SourceError, match="is not a STAC Catalog"):
        StaticSource(tmp_path / "list.json")
    # A child catalog that cannot be read drops a whole branch: an error, not a skipped item.
    root = tmp_path / "tree"
    root.mkdir()
    (root / "catalog.json").write_text(
        json.dumps(
            {
                "type": "Catalog",
                "id": "tree",
                "stac_version": "1.0.0",
                "description": "a broken child",
                "links": [{"rel": "child", "href": "./sub/catalog.json"}],
            }
        )
    )
    (root / "sub").mkdir()
    (root / "sub" / "catalog.json").write_text("{broken")
    with pytest.raises(SourceError, match="cannot read child catalog"):
        StaticSource(root / "catalog.json")
