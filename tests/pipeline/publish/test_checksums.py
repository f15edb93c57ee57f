"""checksums: SHA256SUMS lists every file; verification finds a flipped byte, a missing and an
extra file, on local disk and on an object store alike."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from terraloom.pipeline.publish.checksums import SUMS_NAME, read_sums, sums_text, verify_sums
from terraloom.pipeline.publish.files import VersionFiles
from terraloom.storage.location import Location


def _tree(root: Location) -> None:
    """Two files written (and hashed) through VersionFiles, and their SHA256SUMS."""
    files = VersionFiles(root)
    files.write_bytes("a/x.bin", bytes(range(256)) * 40)
    files.write_text("top.json", '{"k": 1}\n')
    (root / SUMS_NAME).write_text(sums_text(files.digests))


def test_sums_match_sha256sum_format(tmp_path: Path) -> None:
    _tree(Location.parse(tmp_path))
    sums = read_sums(tmp_path / SUMS_NAME)
    assert set(sums) == {"a/x.bin", "top.json"}
    assert sums["top.json"] == hashlib.sha256(b'{"k": 1}\n').hexdigest()
    assert sums["a/x.bin"] == hashlib.sha256((tmp_path / "a" / "x.bin").read_bytes()).hexdigest()
    assert (tmp_path / SUMS_NAME).read_text().splitlines()[0].endswith("  a/x.bin")
    assert verify_sums(tmp_path) == []


@pytest.mark.parametrize("where", ["local", "memory"])
def test_flipped_byte_missing_and_extra_files_are_found(
    tmp_path: Path, memory_root: str, where: str
) -> None:
    root = Location.parse(tmp_path if where == "local" else memory_root)
    _tree(root)
    data = bytearray((root / "a/x.bin").read_bytes())
    data[1234] ^= 0x01
    (root / "a/x.bin").write_bytes(bytes(data))
    (root / "top.json").delete()
    (root / "new.txt").write_text("hello")
    findings = verify_sums(root)
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
