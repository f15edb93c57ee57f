"""``terraloom-tokenize verify`` (tokenize_jobs/verify.py): intact stores pass, damage is found."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from encode_support import SHARD, shared

from terraloom.tokenize_jobs.cli import main
from terraloom.tokenize_jobs.store import marker_path
from terraloom.tokenize_jobs.verify import verify_tokens


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared(tmp_path_factory)


@pytest.fixture
def tokens(env, tmp_path):
    out = tmp_path / "tokens"
    shutil.copytree(env["tokens"], out)
    return out


def test_intact_store_passes(env, tokens, capsys):
    report = verify_tokens(tokens, env["corpus"])
    assert report.ok, report.findings
    assert report.checked_shards == 3 and not report.notes
    assert main(["verify", str(tokens)]) == 0  # the corpus path recorded by encode is found
    assert "OK: 3 shards checked" in capsys.readouterr().out


def test_flipped_byte_is_detected(env, tokens, capsys):
    chunk = tokens / "train.zarr" / "S1RTC" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    report = verify_tokens(tokens, env["corpus"])
    assert any("shard 1" in f and "S1RTC checksum mismatch" in f for f in report.findings), (
        report.findings
    )
    assert main(["verify", str(tokens)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_missing_commit_and_truncated_chunk_are_detected(env, tokens):
    marker_path(tokens / "train.zarr", 2).unlink()
    chunk = tokens / "train.zarr" / "DEM" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    findings = verify_tokens(tokens, env["corpus"]).findings
    assert any("1 of 3 shards not committed" in f and "[2]" in f for f in findings), findings
    assert any("shard 0" in f and "DEM" in f for f in findings), findings


def test_misalignment_with_the_corpus_is_detected(env, tokens, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(env["corpus"], corpus)
    g = zarr.open_group(str(corpus / "train.zarr"), mode="r+")
    valid = np.asarray(g["valid"][:]).copy()
    valid[SHARD + 1] = not valid[SHARD + 1]
    g["valid"][:] = valid
    (corpus / "index.parquet").unlink()  # crops were keyed by the index's sample ids
    findings = verify_tokens(tokens, corpus).findings
    assert any("valid differs from the corpus" in f and str(SHARD + 1) in f for f in findings), (
        findings
    )
    assert any("crops differ" in f for f in findings), findings


def test_edited_tokens_and_markers_are_detected(env, tokens):
    g = zarr.open_group(str(tokens / "train.zarr"), mode="r+")
    g["GEO"][0, 0, 0] = 60000  # out of the GEO vocabulary
    rec = json.loads(marker_path(tokens / "train.zarr", 1).read_text())
    rec["tokenizers"]["DEM"] = "0" * 64
    marker_path(tokens / "train.zarr", 1).write_text(json.dumps(rec))
    findings = verify_tokens(tokens, env["corpus"]).findings
    assert any("shard 0" in f and "GEO checksum mismatch" in f for f in findings)
    assert any("shard 0" in f and "GEO has ids >= its vocabulary size" in f for f in findings)
    assert any("shard 1" in f and "tokenizers differ" in f for f in findings)


def test_cli_exit_codes(env, tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["verify", str(env["tokens"] / "train.zarr"), "--corpus", str(env["corpus"])]) == 0
    assert "0 findings" in capsys.readouterr().out
