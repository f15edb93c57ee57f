"""publish: the tiny corpus published as STAC, Croissant, card, stats, digests; verify finds tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from terraloom.pipeline.cli import main as cli_main
from terraloom.pipeline.publish import (
    PublishConfig,
    PublishInputError,
    publish_corpus,
    verify_published,
)
from terraloom.pipeline.publish.card import read_front_matter
from terraloom.pipeline.publish.croissant import validate_croissant
from terraloom.pipeline.publish.stac import read_geoparquet_items, validate_stac
from terraloom.pipeline.publish.stats import valid_mask
from terraloom.schemas.modalities import get_modality


def test_stac_collection_and_items_validate_offline(
    published: dict[str, Any], tiny_reference: dict[str, Any]
) -> None:
    root = published["root"]
    assert validate_stac(root) == []
    index = tiny_reference["index"]
    coll = json.loads((root / "stac" / "collection.json").read_text())
    counts = {s: sum(r["split"] == s for r in index) for s in ("train", "val")}
    assert coll["summaries"]["terraloom:split_counts"] == [counts]
    assert {p["description"].split(" (")[-1].rstrip(")") for p in coll["providers"][1:]} >= {
        "sentinel-2-l2a",
        "cop-dem-glo-30",
        "io-lulc-9-class",
    }
    bands = coll["item_assets"]["S2L2A"]["bands"]
    assert [b["name"] for b in bands][:4] == ["B01", "B02", "B03", "B04"]
    assert bands[3]["eo:common_name"] == "red" and "statistics" in bands[3]
    row = index[0]
    item = json.loads(
        (root / "stac" / "items" / row["split"] / f"{row['sample_id']}.json").read_text()
    )
    assert item["properties"]["proj:code"] == f"EPSG:{row['epsg']}"
    assert item["properties"]["proj:transform"] == row["transform"]
    derived = [link for link in item["links"] if link["rel"] == "derived_from"]
    assert len(derived) >= 4 and all(link["href"].endswith(".json") for link in derived)
    assert (root / "stac" / "items" / row["split"] / item["assets"]["S2L2A"]["href"]).resolve() == (
        root / f"{row['split']}.zarr" / "S2L2A"
    ).resolve()
    geo = read_geoparquet_items(root / "stac" / "items.parquet")
    assert sorted(it["id"] for it in geo) == sorted(r["sample_id"] for r in index)


def test_stac_validation_catches_a_broken_item(published: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "v"
    shutil.copytree(published["root"] / "stac", root / "stac")
    item_path = next((root / "stac" / "items").rglob("*.json"))
    item = json.loads(item_path.read_text())
    item["properties"]["proj:shape"] = [264]  # projection v2 wants two values
    item_path.write_text(json.dumps(item))
    findings = validate_stac(root)
    assert len(findings) == 1 and item_path.name in findings[0]


def test_stats_json_equals_a_direct_numpy_computation(
    published: dict[str, Any], tiny_reference: dict[str, Any]
) -> None:
    stats = json.loads((published["root"] / "stats.json").read_text())["modalities"]
    out = tiny_reference["out"]
    for name, band in (("S2L2A", 3), ("S1GRD", 0), ("DEM", 0), ("LULC", 0)):
        m = get_modality(name)
        values = []
        for r in tiny_reference["index"]:
            x = np.asarray(
                zarr.open_group(str(out / f"{r['split']}.zarr"), mode="r")[name][r["row"], band]
            )
            values.append(x[valid_mask(m, x)].astype(np.float64))
        v = np.concatenate(values)
        s = stats[name]
        assert s["count"][band] == v.size
        assert s["p1"][band] == np.percentile(v, 1) and s["p99"][band] == np.percentile(v, 99)
        assert s["mean"][band] == pytest.approx(v.mean(), rel=1e-9)
        assert s["std"][band] == pytest.approx(v.std(), rel=1e-9)
        assert s["normalisation"]["mean"] == list(m.mean)


def test_croissant_validates_and_its_records_are_the_index(
    published: dict[str, Any], tiny_reference: dict[str, Any]
) -> None:
    import mlcroissant as mlc

    root = published["root"]
    assert validate_croissant(root) == []
    ds = mlc.Dataset(jsonld=str(root / "croissant.json"))
    keys = [r["val/__key__"].decode() for r in ds.records("val")]
    assert keys == [r["sample_id"] for r in tiny_reference["index"] if r["split"] == "val"]
    doc = json.loads((root / "croissant.json").read_text())
    names = {rs["name"] for rs in doc["recordSet"]}
    assert {"train", "val", "train/S2L2A", "val/DEM"} <= names


def test_card_front_matter_tables_and_pictures(
    published: dict[str, Any], tiny_reference: dict[str, Any]
) -> None:
    root = published["root"]
    fm = read_front_matter(root / "README.md")
    assert fm["license"] == "cc-by-4.0" and fm["size_categories"] == ["n<1K"]
    assert {c["split"] for c in fm["configs"][0]["data_files"]} == {"train", "val"}
    text = (root / "README.md").read_text()
    for reason, n in tiny_reference["rejected_by_reason"].items():
        assert f"| train | {reason} | {n} |" in text
    assert "Copernicus Sentinel data" in text and "CC BY 4.0" in text and "WorldDEM" in text
    assert "![sample centres](coverage.png)" in text
    gallery = [line for line in text.splitlines() if line.startswith("![") and "gallery/" in line]
    assert len(gallery) == 4 and any("val/" in g for g in gallery)  # spread over both splits
    import matplotlib.image as mpimg

    img = mpimg.imread(root / "coverage.png")
    assert img.shape[1] > 1.5 * img.shape[0] and img[..., :3].std() > 0.05


def test_verify_published_finds_a_flipped_byte_and_a_missing_file(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    dest, root = published["dest"], published["root"]
    assert cli_main(["verify", "--published", str(dest)]) == 0
    shard = next((root / "val" / "DEM").glob("*.tar"))
    original = shard.read_bytes()
    card = root / "README.md"
    moved = root.parent / "README.md.bak"
    try:
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x40
        shard.write_bytes(bytes(flipped))
        card.rename(moved)
        capsys.readouterr()
        assert cli_main(["verify", "--published", str(dest)]) == 1
        out = capsys.readouterr().out
        assert f"val/DEM/{shard.name}: sha256 differs" in out
        assert "README.md: missing" in out
    finally:
        shard.write_bytes(original)
        moved.rename(card)
    assert verify_published(dest).ok


def test_republishing_is_a_noop_and_a_new_version_goes_beside(
    published: dict[str, Any], tiny_reference: dict[str, Any]
) -> None:
    dest, root = published["dest"], published["root"]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = publish_corpus(tiny_reference["out"], dest, published["config"])
    assert again.skipped and again.root == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    with pytest.raises(PublishInputError, match="new --version"):
        publish_corpus(
            tiny_reference["out"],
            dest,
            PublishConfig(**{**published["config"].__dict__, "formats": ("zarr",)}),
        )
    new = publish_corpus(
        tiny_reference["out"],
        dest,
        PublishConfig(name="tiny-corpus", version="1.1.0", formats=("zarr",), quicklooks=0),
    )
    try:
        assert not new.skipped and new.root == dest / "1.1.0" and root.is_dir()
        assert not (new.root / "val").exists() and (new.root / "val.zarr").is_dir()
        assert verify_published(new.root).ok
        assert sorted(verify_published(dest).versions) == ["1.0.0", "1.1.0"]
    finally:
        shutil.rmtree(new.root)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--formats", "zarr,parquet"], "unknown format"),
        (["--version", "../x"], "bad --version"),
        (["--tokens", "tok"], "not supported yet"),
    ],
)
def test_publish_cli_bad_input_exits_2(
    tiny_reference: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    rc = cli_main(["publish", str(tiny_reference["out"]), "--out", str(tmp_path / "d"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_publish_cli_rejects_an_unfinished_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["publish", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "not a finished corpus" in capsys.readouterr().err
    assert cli_main(["verify", "--published", str(tmp_path)]) == 2
