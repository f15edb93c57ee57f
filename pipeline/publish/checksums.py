"""``SHA256SUMS`` over every file of a published dataset, in ``sha256sum`` format.

The file is what downloaders check with ``sha256sum -c SHA256SUMS``; corpus-internal
CRC-32s catch our own write errors, these catch anything that happens after publishing
(a truncated download, a flipped byte, a file that went missing or was added).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SUMS_NAME = "SHA256SUMS"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def published_files(root: str | os.PathLike[str]) -> list[str]:
    """Every regular file under ``root`` (posix relative paths, sorted), the sums file excluded."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != SUMS_NAME:
                out.append(rel)
    return sorted(out)


def write_sums(root: str | os.PathLike[str]) -> Path:
    """Hash every file under ``root`` into ``root/SHA256SUMS``."""
    root = Path(root)
    lines = [f"{sha256_file(root / rel)}  {rel}\n" for rel in published_files(root)]
    path = root / SUMS_NAME
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_sums(path: str | os.PathLike[str]) -> dict[str, str]:
    """``relative path -> hex digest``; raises ValueError on a malformed line."""
    sums: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            raise ValueError(f"{path}:{n}: not a '<sha256>  <path>' line")
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ValueError(f"{path}:{n}: path {rel!r} leaves the dataset")
        sums[rel] = digest
    return sums


def verify_sums(root: str | os.PathLike[str]) -> list[str]:
    """Findings: missing files, digest mismatches, files not listed; empty when all match."""
    root = Path(root)
    path = root / SUMS_NAME
    if not path.is_file():
        return [f"{SUMS_NAME}: missing"]
    try:
        sums = read_sums(path)
    except ValueError as exc:
        return [str(exc)]
    findings = []
    for rel, digest in sorted(sums.items()):
        f = root / rel
        if not f.is_file():
            findings.append(f"{rel}: missing (listed in {SUMS_NAME})")
        elif sha256_file(f) != digest:
            findings.append(f"{rel}: sha256 differs from {SUMS_NAME}")
    for rel in sorted(set(published_files(root)) - set(sums)):
        findings.append(f"{rel}: not listed in {SUMS_NAME}")
    return findings
