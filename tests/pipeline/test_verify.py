"""verify: a sound corpus passes; a flipped byte, a lost marker or a table edit is found."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from terraloom.pipeline.build import pending_blocks
from terraloom.pipeline.cli import main as cli_main
from terraloom.pipeline.corpus_writer import BlockKey, marker_path
from terraloom.pipeline.verify import verify_corpus
from terraloom.schemas.tables import from_rows, read_table, write_geoparquet


@pytest.fixture()
def corpus(tiny_reference: dict[str, Any], tmp_path: Path) -> Path:
    out = tmp_path / "corpus"
    shutil.copytree(tiny_reference["out"], out)
    return out


def _shard_file(out: Path, split: str, array: str, block: int) -> Path:
    """The chunk/shard file of one block: ``c/<block>`` (1-D arrays) or ``c/<block>/0/...``."""
    top = out / f"{split}.zarr" / array / "c" / str(block)
    if top.is_file():
        return top
    files = sorted(top.rglob("*"))
    files = [f for f in files if f.is_file()]
    assert files, f"no shard file for {split}/{array} block {block}"
    return files[0]


def test_sound_corpus_passes(
    corpus: Path, tiny_reference: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    report = verify_corpus(corpus)
    assert report.ok, report.findings
    assert report.blocks_checked == tiny_reference["n_blocks"]
    assert report.samples_checked == tiny_reference["accepted"]
    assert cli_main(["verify", str(corpus), "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize("array", ["S2L2A", "DEM", "valid"])
def test_flipped_byte_is_detected(
    corpus: Path, tiny_reference: dict[str, Any], array: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tiny_reference["index"][0]
    block = first["row"] // tiny_reference["shard_samples"]
    path = _shard_file(corpus, first["split"], array, block)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    report = verify_corpus(corpus)
    assert not report.ok
    assert all(f"{first['split']}/block-{block}" in f for f in report.findings), report.findings
    assert any(repr(array) in f for f in report.findings)
    assert cli_main(["verify", str(corpus), "--no-progress"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_missing_marker_and_table_edits_are_found(
    corpus: Path, tiny_reference: dict[str, Any]
) -> None:
    s = tiny_reference["shard_samples"]
    key = BlockKey(*tiny_reference["first_block"])
    marker_path(corpus, key).delete()
    assert pending_blocks(corpus) == [key]
    index = read_table("index", corpus / "index.parquet").to_pylist()
    others = [
        i for i, r in enumerate(index) if (r["split"], r["row"] // s) != (key.split, key.block)
    ]
    assert len(others) >= 2
    edited = index[others[0]]
    edited["checksums"] = [(k, "00000000" if k == "S2L2A" else v) for k, v in edited["checksums"]]
    dropped = index.pop(others[-1])
    write_geoparquet("index", from_rows("index", index), corpus / "index.parquet")
    findings = verify_corpus(corpus).findings
    assert any(str(key) in f and "not committed" in f for f in findings)
    assert any("do not cover" in f for f in findings)
    assert any(f"(row {edited['row']}) array 'S2L2A'" in f for f in findings), findings
    assert any("'valid' disagrees" in f and str(dropped["row"]) in f for f in findings), findings


def test_verify_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["verify", str(tmp_path)]) == 2
    assert "not a corpus" in capsys.readouterr().err


def test_damaged_marker_is_a_finding_not_a_crash(
    corpus: Path, tiny_reference: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15.9: verify used to raise JSONDecodeError on a torn commit marker."""
    key = BlockKey(*tiny_reference["first_block"])
    marker_path(corpus, key).write_text('{"format": "terraloom-block-co')
    report = verify_corpus(corpus)
    assert any(f.startswith(f"{key}: commit marker is damaged") for f in report.findings), (
        report.findings
    )
    assert cli_main(["verify", str(corpus), "--no-progress"]) == 1
    assert "commit marker is damaged" in capsys.readouterr().out


def test_without_checksums_a_deleted_shard_or_truncated_index_is_still_found(
    corpus: Path, tiny_reference: dict[str, Any]
) -> None:
    first = tiny_reference["index"][0]
    block = first["row"] // tiny_reference["shard_samples"]
    _shard_file(corpus, first["split"], "S2L2A", block).unlink()
    index = corpus / "index.parquet"
    index.write_bytes(index.read_bytes()[:-200])
    findings = verify_corpus(corpus, checksums=False).findings
    assert any(f"{first['split']}/block-{block}" in f and "is missing" in f for f in findings), (
        findings
    )
    assert any(f.startswith("index") for f in findings), findings


def test_verify_and_quicklook_of_a_corpus_on_s3(
    small_reference: dict[str, Any],
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 19: ``verify`` and ``quicklook`` take URLs: a sound S3 corpus verifies, a
    marker deleted on S3 is found, and quicklooks are written to the bucket (nothing
    locally)."""
    from terraloom.storage import Location
    from terraloom.storage.transfer import upload_tree

    monkeypatch.chdir(tmp_path)
    url = f"{s3_bucket}/corpus"
    upload_tree(small_reference["out"], Location.parse(url))
    assert cli_main(["verify", url, "--no-progress"]) == 0, capsys.readouterr()
    assert cli_main(["quicklook", url, "--out", f"{s3_bucket}/ql", "--no-progress"]) == 0
    pngs = Location.parse(f"{s3_bucket}/ql").walk_files()
    assert pngs == sorted(f"train/{r['sample_id']}.png" for r in small_reference["index"])
    assert Location.parse(f"{s3_bucket}/ql/{pngs[0]}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    marker_path(url, BlockKey("train", 1)).delete()
    capsys.readouterr()
    assert cli_main(["verify", url, "--no-progress"]) == 1
    assert "train/block-1: not committed" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
