"""checksums: SHA256SUMS lists every file; verification finds a flipped byte, a missing and an extra file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from terraloom.pipeline.publish.checksums import SUMS_NAME, read_sums, verify_sums, write_sums


def _tree(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.bin").write_bytes(bytes(range(256)) * 40)
    (root / "top.json").write_text('{"k": 1}\n')


def test_sums_match_sha256sum_format(tmp_path: Path) -> None:
    _tree(tmp_path)
    write_sums(tmp_path)
    sums = read_sums(tmp_path / SUMS_NAME)
    assert set(sums) == {"a/x.bin", "top.json"}
    assert sums["top.json"] == hashlib.sha256(b'{"k": 1}\n').hexdigest()
    assert verify_sums(tmp_path) == []


def test_flipped_byte_missing_and_extra_files_are_found(tmp_path: Path) -> None:
    _tree(tmp_path)
    write_sums(tmp_path)
    data = bytearray((tmp_path / "a" / "x.bin").read_bytes())
    data[1234] ^= 0x01
    (tmp_path / "a" / "x.bin").write_bytes(bytes(data))
    (tmp_path / "top.json").unlink()
    (tmp_path / "new.txt").write_text("hello")
    findings = verify_sums(tmp_path)
    assert findings == [
        "a/x.bin: sha256 differs from SHA256SUMS",
        "top.json: missing (listed in SHA256SUMS)",
        "new.txt: not listed in SHA256SUMS",
    ]


@pytest.mark.parametrize(
    "line", ["nothex  a", f"{'0' * 64}  ../etc/passwd", f"{'0' * 64} one-space"]
)
def test_malformed_or_escaping_lines_are_rejected(tmp_path: Path, line: str) -> None:
    (tmp_path / SUMS_NAME).write_text(line + "\n")
    assert len(verify_sums(tmp_path)) == 1
