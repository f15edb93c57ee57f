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
    assert "![coverage map: sample centres and footprints](coverage.png)" in text
    gallery = [line for line in text.splitlines() if line.startswith("![") and "gallery/" in line]
    assert len(gallery) == 4 and any("(gallery/val/" in g for g in gallery)  # spread over splits
    for line in gallery:  # every picture is a file of the version, with its STAC item linked
        rel = line[line.index("](") + 2 : -1]
        assert (root / rel).is_file()
        sid = Path(rel).stem
        assert f"[STAC item](stac/items/{rel.split('/')[1]}/{sid}.json)" in text
    import matplotlib.image as mpimg

    img = mpimg.imread(root / "coverage.png")
    assert img.shape[1] > 1.1 * img.shape[0] and img[..., :3].std() > 0.05


def test_card_links_pictures_by_hub_url_when_given_the_repository(
    published: dict[str, Any], tiny_reference: dict[str, Any]
) -> None:
    from terraloom.pipeline.publish.card import render_card
    from terraloom.pipeline.publish.config import load_corpus

    stats = json.loads((published["root"] / "stats.json").read_text())
    gallery = published["summary"].gallery[:1]
    config = PublishConfig(name="tiny-corpus", hub_repo="someone/tiny-corpus")
    text = render_card(load_corpus(tiny_reference["out"]), config, stats, gallery)
    base = "https://huggingface.co/datasets/someone/tiny-corpus/resolve/main/"
    assert f"]({base}coverage.png)" in text and f"]({base}{gallery[0]})" in text
    with pytest.raises(PublishInputError, match="hub-repo"):
        PublishConfig(hub_repo="not a repo")


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
    assert again.skipped and Path(again.root) == root
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
        new_root = Path(new.root)
        assert not new.skipped and new_root == dest / "1.1.0" and root.is_dir()
        assert not (new_root / "val").exists() and (new_root / "val.zarr").is_dir()
        assert verify_published(new_root).ok
        assert sorted(verify_published(dest).versions) == ["1.0.0", "1.1.0"]
        # no lease or partial version left beside the versions
        assert sorted(p.name for p in dest.iterdir()) == ["1.0.0", "1.1.0"]
    finally:
        shutil.rmtree(dest / "1.1.0")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--formats", "zarr,parquet"], "unknown format"),
        (["--version", "../x"], "bad --version"),
        (["--tokens", "tok"], "no token store"),
        (["--gallery", "-1"], "must be >= 0"),
        (["--hub-repo", "x"], "bad --hub-repo"),
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


# --------------------------------------------------------------------------- locations, commits

SMALL = PublishConfig(name="tiny-corpus", formats=("zarr",), quicklooks=0, gallery_samples=0)


def test_publish_cli_synthetic_flag_marks_the_card_and_the_collection(
    tiny_reference: dict[str, Any], tmp_path: Path
) -> None:
    dest = tmp_path / "d"
    args = ["publish", str(tiny_reference["out"]), "--out", str(dest), "--no-progress"]
    assert cli_main([*args, "--quicklooks", "0", "--gallery", "1", "--synthetic"]) == 0
    card = (dest / "1.0.0" / "README.md").read_text()
    assert "synthetic" in card
    assert "None required: no third party's data is in this corpus (synthetic)." in card
    collection = json.loads((dest / "1.0.0" / "stac" / "collection.json").read_text())
    assert collection["summaries"]["terraloom:synthetic"] == [True]
    assert all("producer" in p["roles"] for p in collection["providers"])


def _objects(url: str) -> dict[str, str]:
    """``name -> ETag`` of every object under an s3:// URL."""
    from terraloom.storage.location import Location

    loc = Location.parse(url)
    return {
        str(info["name"]): str(info.get("ETag"))
        for info in loc.fs.find(loc.path, detail=True).values()
    }


def test_publish_to_s3_verifies_republishes_as_a_noop_and_catches_a_flipped_byte(
    tiny_reference: dict[str, Any], s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from terraloom.storage.location import Location

    dest = f"{s3_bucket}/datasets/tiny"
    args = ["publish", str(tiny_reference["out"]), "--out", dest, "--no-progress"]
    args += ["--quicklooks", "1", "--gallery", "1", "--name", "tiny-corpus"]
    assert cli_main(args) == 0
    assert cli_main(["verify", "--published", dest]) == 0
    root = Location.parse(f"{dest}/1.0.0")
    listed = set(read_sums_text((root / "SHA256SUMS").read_text()))
    assert {"val/DEM/terraloom_shard_000001.tar", "val.zarr/zarr.json", "_published.json"} <= listed
    assert listed == set(root.walk_files()) - {"SHA256SUMS"}
    before = _objects(dest)
    capsys.readouterr()
    assert cli_main(args) == 0  # the same corpus again: nothing is written
    assert "already published (no-op)" in capsys.readouterr().out
    assert _objects(dest) == before
    shard = root / "val/DEM/terraloom_shard_000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    assert cli_main(["verify", "--published", dest]) == 1
    assert "val/DEM/terraloom_shard_000001.tar: sha256 differs" in capsys.readouterr().out


def read_sums_text(text: str) -> dict[str, str]:
    from terraloom.pipeline.publish.checksums import parse_sums

    return parse_sums(text)


def test_the_marker_commits_the_version_after_everything_it_lists(
    tiny_reference: dict[str, Any], memory_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an object store nothing is renamed into place: the write-once marker is created
    last, when every listed file is already there, and a reader trusts nothing before it."""
    import terraloom.pipeline.publish.publish as pub
    from terraloom.pipeline.publish.verify import published_versions
    from terraloom.storage.location import Location

    seen: dict[str, Any] = {}
    real = pub.write_once

    def spy(location: Any, data: bytes) -> bool:
        root = Location.parse(location).parent
        seen["present"] = set(root.walk_files())
        seen["listed_before_commit"] = published_versions(root.parent)
        return real(location, data)

    monkeypatch.setattr(pub, "write_once", spy)
    summary = publish_corpus(tiny_reference["out"], memory_root, SMALL)
    sums = read_sums_text((summary.root / "SHA256SUMS").read_text())
    assert "_published.json" not in seen["present"]
    assert set(sums) - {"_published.json"} <= seen["present"]
    assert seen["listed_before_commit"] == []  # an uncommitted version is not a version
    assert verify_published(memory_root).ok


def test_a_killed_publish_is_redone_and_foreign_files_are_refused(
    tiny_reference: dict[str, Any], tmp_path: Path
) -> None:
    import time

    from terraloom.storage.lease import acquire

    dest = tmp_path / "pub"
    (dest / "1.0.0" / "stac").mkdir(parents=True)
    (dest / "1.0.0" / "stac" / "collection.json").write_text("{half")  # leftovers
    with pytest.raises(PublishInputError, match="not a published version"):
        publish_corpus(tiny_reference["out"], dest, SMALL)  # no lease: not ours to remove
    held = acquire(dest / ".1.0.0.publish-lease.json", {"job": "publish"})
    with pytest.raises(PublishInputError, match="another publish"):
        publish_corpus(tiny_reference["out"], dest, SMALL)
    held.release()
    # a publish killed mid-way: its leftovers and its lease (expired) stay behind
    acquire(dest / ".1.0.0.publish-lease.json", {"job": "publish"}, ttl=0.01)
    time.sleep(0.05)
    summary = publish_corpus(tiny_reference["out"], dest, SMALL)
    assert not summary.skipped and verify_published(dest).ok
    assert sorted(p.name for p in dest.iterdir()) == ["1.0.0"]


def test_card_credits_the_acquisition_years_and_says_when_the_data_is_synthetic(
    published: dict[str, Any], tiny_reference: dict[str, Any]
) -> None:
    from terraloom.pipeline.publish.card import render_card
    from terraloom.pipeline.publish.config import load_corpus
    from terraloom.pipeline.publish.stac import build_collection

    facts = load_corpus(tiny_reference["out"])
    years = {r["time_S2L2A"].year for r in facts.index}
    text = (published["root"] / "README.md").read_text()
    assert "{year}" not in text  # Copernicus asks for the year(s) of the data
    assert f"Contains modified Copernicus Sentinel data [{min(years)}" in text
    stats = json.loads((published["root"] / "stats.json").read_text())
    config = PublishConfig(name="tiny-corpus", synthetic=True)
    synthetic = render_card(facts, config, stats, [])
    assert "**Synthetic data.**" in synthetic and "contains no satellite data" in synthetic
    assert "Copernicus Sentinel data" not in synthetic and "WorldDEM" not in synthetic
    assert "| Sentinel-2 Level-2A (`sentinel-2-l2a`) |" in synthetic  # what it imitates
    doc = build_collection(facts, config, stats, [])
    assert [p["name"] for p in doc["providers"]] == ["terraloom"]
    assert doc["summaries"]["terraloom:synthetic"] == [True]
    assert not [link for link in doc["links"] if link["rel"] in ("via",)]
