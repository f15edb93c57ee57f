"""Where a corpus build keeps its state, and reading it back.

The output layout (``out/_build/{manifest,plan,final,lease}``, ``out/_parts``), the
manifest reader, the block list and the build's input errors: what the driver, the
workers (``pipeline.block``), verify and publish all need, with no engine or I/O
library beyond pyarrow's. ``out`` is any storage location; the paths are ``Location`` objects.
"""

from __future__ import annotations

import json
from typing import Any

from terraloom.pipeline.corpus_writer import BlockKey, Where, committed_blocks
from terraloom.pipeline.plan_store import sha256_file
from terraloom.storage.location import Location

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
    "committed_blocks",
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


def build_dir(out: Where) -> Location:
    return Location.parse(out) / BUILD_DIR


def manifest_path(out: Where) -> Location:
    return build_dir(out) / "manifest.json"


def frozen_plan_path(out: Where) -> Location:
    return build_dir(out) / "plan.parquet"


def final_path(out: Where) -> Location:
    return build_dir(out) / "final.json"


def lease_path(out: Where) -> Location:
    return build_dir(out) / "lease.json"


def read_manifest(out: Where) -> dict[str, Any]:
    path = manifest_path(out)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BuildInputError(
            f"{out} is not a terraloom build output (no {BUILD_DIR}/manifest.json)"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildInputError(f"{path} is damaged (not JSON: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise BuildInputError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return data


def all_blocks(manifest: dict[str, Any]) -> list[BlockKey]:
    return [
        BlockKey(s, k) for s, info in manifest["splits"].items() for k in range(info["n_blocks"])
    ]


def pending_blocks(out: Where, manifest: dict[str, Any] | None = None) -> list[BlockKey]:
    """Blocks without a commit marker: what a (resumed) build still has to do (one
    listing per split, not a request per block: on an object store that is the
    difference between one round trip and thousands)."""
    manifest = manifest or read_manifest(out)
    done = {s: committed_blocks(out, s) for s in manifest["splits"]}
    return [k for k in all_blocks(manifest) if k.block not in done[k.split]]


def committed_count(out: Where) -> str:
    try:
        manifest = read_manifest(out)
    except BuildInputError:
        return "0"
    keys = all_blocks(manifest)
    return f"{len(keys) - len(pending_blocks(out, manifest))} of {len(keys)}"
