"""build_prepare: what a build accepts as its plan and output before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from terraloom.pipeline.build import run_build
from terraloom.pipeline.build_config import BuildConfig
from terraloom.pipeline.build_prepare import BuildInputError, build_locations, prepare
from terraloom.storage.location import Location


def test_build_locations_parses_both_and_refuses_a_read_only_out(tmp_path: Path) -> None:
    plan, out = build_locations(tmp_path / "plan.parquet", "memory://bucket/corpus")
    assert isinstance(plan, Location) and plan.is_local
    assert out.url == "memory://bucket/corpus"
    with pytest.raises(BuildInputError, match=r"read-only \(https://\)"):
        build_locations(tmp_path / "plan.parquet", "https://example.invalid/corpus")


@pytest.mark.parametrize("entry", ["prepare", "run_build"])
def test_both_entries_refuse_a_read_only_out_before_writing(tmp_path: Path, entry: str) -> None:
    """``prepare`` and ``run_build`` read their locations one way: a read-only output is one
    line of bad input, and nothing is created next to the plan."""
    plan = tmp_path / "plan.parquet"
    with pytest.raises(BuildInputError, match="is read-only"):
        if entry == "prepare":
            prepare(plan, "https://example.invalid/c", BuildConfig())
        else:
            run_build(plan, "https://example.invalid/c")
    assert list(tmp_path.iterdir()) == []
