"""Where a corpus build keeps its state, and reading it back.

The output layout (``out/_build/{manifest,plan,final,lease}``, ``out/_parts``), the
manifest reader, the block list and the build's input errors: what the driver, the
workers (``pipeline.block``), verify and publish all need, with no engine or I/O
library beyond pyarrow's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from terraloom.pipeline.corpus_writer import BlockKey, is_committed
from terraloom.pipeline.plan_store import sha256_file

#: sha256 of a file's bytes (the one implementation, ``plan_store.sha256_file``).
file_sha256 = sha256_file

__all__ = [
    "BUILD_DIR",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "BuildBusyError",
    "BuildInputError",
    "all_blocks",
    "build_dir",
    "committed_count",
    "file_sha256",
    "final_path",
    "frozen_plan_path",
    "lease_path",
    "manifest_path",
    "pending_blocks",
    "read_manifest",
]

BUILD_DIR = "_build"


MANIFEST_FORMAT = "terraloom-build"


MANIFEST_VERSION = 1


class BuildInputError(ValueError):
    """Bad user input (missing/invalid plan, output built from another plan): CLI exit 2."""


class BuildBusyError(BuildInputError):
    """Another build holds (or took over) the output's lease: CLI exit 2, one line."""


def build_dir(out: str | os.PathLike[str]) -> Path:
    return Path(out) / BUILD_DIR


def manifest_path(out: str | os.PathLike[str]) -> Path:
    return build_dir(out) / "manifest.json"


def frozen_plan_path(out: str | os.PathLike[str]) -> Path:
    return build_dir(out) / "plan.parquet"


def final_path(out: str | os.PathLike[str]) -> Path:
    return build_dir(out) / "final.json"


def lease_path(out: str | os.PathLike[str]) -> Path:
    return build_dir(out) / "lease.json"


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    path = manifest_path(out)
    if not path.exists():
        raise BuildInputError(
            f"{out} is not a terraloom build output (no {BUILD_DIR}/manifest.json)"
        )
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildInputError(f"{path} is damaged (not JSON: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise BuildInputError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return data


def all_blocks(manifest: dict[str, Any]) -> list[BlockKey]:
    return [
        BlockKey(s, k) for s, info in manifest["splits"].items() for k in range(info["n_blocks"])
    ]


def pending_blocks(
    out: str | os.PathLike[str], manifest: dict[str, Any] | None = None
) -> list[BlockKey]:
    """Blocks without a commit marker: what a (resumed) build still has to do."""
    manifest = manifest or read_manifest(out)
    return [k for k in all_blocks(manifest) if not is_committed(out, k)]


def committed_count(out: str | os.PathLike[str]) -> str:
    try:
        manifest = read_manifest(out)
    except BuildInputError:
        return "0"
    keys = all_blocks(manifest)
    return f"{sum(1 for k in keys if is_committed(out, k))} of {len(keys)}"
