import jsonschema
import shapely

from terraloom.schemas.cli import main
from terraloom.schemas.jsonschema import JSON_DIR, all_exports, out_of_sync, table_json_schema
from terraloom.schemas.tables import from_rows


def test_committed_exports_are_in_sync_with_the_code():
    assert out_of_sync(JSON_DIR) == [], (
        "run `python -m terraloom.schemas export` and commit schemas/json"
    )


def test_export_then_drift_is_detected(tmp_path):
    assert main(["export", "--out", str(tmp_path)]) == 0
    assert out_of_sync(tmp_path) == []
    (tmp_path / "plan.schema.json").write_text("{}\n")
    assert out_of_sync(tmp_path) == ["plan.schema.json"]
    assert main(["check", "--dir", str(tmp_path)]) == 1


def test_rejects_rows_validate_against_their_json_schema():
    schema = table_json_schema("rejects")
    jsonschema.Draft202012Validator.check_schema(schema)
    row = {
        "sample_id": "a",
        "split": "train",
        "row": 0,
        "cell_id": "c",
        "geometry": "AAA=",
        "reason": "cloudy",
        "modality": None,
        "message": "m",
    }
    jsonschema.validate(row, schema)
    bad = dict(row, reason="because")
    assert not jsonschema.Draft202012Validator(schema).is_valid(bad)
    # the Arrow schema accepts the same row (with real WKB bytes)
    from_rows("rejects", [dict(row, geometry=shapely.to_wkb(shapely.Point(0, 0)))])


def test_every_export_is_a_valid_document():
    docs = all_exports()
    assert {
        "plan.schema.json",
        "index.schema.json",
        "corpus.layout.json",
        "modalities.json",
    } <= set(docs)
    for name, doc in docs.items():
        if name.endswith(".schema.json"):
            jsonschema.Draft202012Validator.check_schema(doc)
