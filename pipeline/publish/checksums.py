"""``SHA256SUMS`` over every file of a published dataset, in ``sha256sum`` format.

The file is what downloaders check with ``sha256sum -c SHA256SUMS``; corpus-internal
CRC-32s catch our own write errors, these catch anything that happens after publishing
(a truncated download, a flipped byte, a file that went missing or was added). The digests
are taken while the files are written (:mod:`.files`), never by reading them back, and
checked on any location (a local folder or an object-store prefix).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePosixPath

from terraloom.pipeline.publish.files import hash_location
from terraloom.storage.location import Location

SUMS_NAME = "SHA256SUMS"


def sums_text(digests: Mapping[str, str]) -> str:
    """``<sha256>  <path>`` lines, sorted by path (the sums file itself is never listed)."""
    return "".join(f"{d}  {rel}\n" for rel, d in sorted(digests.items()) if rel != SUMS_NAME)


def published_files(root: str | os.PathLike[str] | Location) -> list[str]:
    """Every object under ``root`` (posix relative names, sorted), the sums file excluded."""
    return [rel for rel in Location.parse(root).walk_files() if rel != SUMS_NAME]


def parse_sums(text: str, where: object = SUMS_NAME) -> dict[str, str]:
    """``relative path -> hex digest``; raises ValueError on a malformed line."""
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            raise ValueError(f"{where}:{n}: not a '<sha256>  <path>' line")
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or ".." in parts or "." in parts or "//" in rel:
            raise ValueError(f"{where}:{n}: path {rel!r} leaves the dataset")
        sums[rel] = digest
    return sums


def read_sums(path: str | os.PathLike[str] | Location) -> dict[str, str]:
    loc = Location.parse(path)
    return parse_sums(loc.read_text(), loc)


def verify_sums(root: str | os.PathLike[str] | Location) -> list[str]:
    """Findings: missing files, digest mismatches, files not listed; empty when all match."""
    root = Location.parse(root)
    try:
        sums = read_sums(root / SUMS_NAME)
    except FileNotFoundError:
        return [f"{SUMS_NAME}: missing"]
    except (ValueError, UnicodeDecodeError) as exc:
        return [str(exc)]
    present = set(published_files(root))
    findings = []
    for rel, digest in sorted(sums.items()):
        if rel not in present:
            findings.append(f"{rel}: missing (listed in {SUMS_NAME})")
        elif hash_location(root / rel) != digest:
            findings.append(f"{rel}: sha256 differs from {SUMS_NAME}")
    for rel in sorted(present - set(sums)):
        findings.append(f"{rel}: not listed in {SUMS_NAME}")
    return findings
