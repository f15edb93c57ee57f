"""The engine-neutral block work: engines import it, never the build driver."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from build_support import synthetic_plan

from terraloom.pipeline.block import BuildJob, EngineResult, process_block, read_plan_block
from terraloom.pipeline.build import prepare
from terraloom.pipeline.corpus_writer import BlockKey, is_committed
from terraloom.pipeline.sample import BuildConfig


def test_the_engines_do_not_import_the_build_driver() -> None:
    """Issue 16 §2: no build <-> engine import cycle; the driver dispatches, engines run blocks."""
    code = (
        "import sys, terraloom.pipeline.beam, terraloom.pipeline.dask_job; "
        "print(sorted(m for m in sys.modules if m == 'terraloom.pipeline.build'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_build_job_config_is_a_build_config_and_a_block_commits_once(tmp_path: Path) -> None:
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 3})
    out = tmp_path / "corpus"
    config = BuildConfig(modalities=("S2L2A", "DEM"), required=("S2L2A",))
    prepare(plan, out, config, shard_samples=4)
    job = BuildJob(str(out), config, 4)
    assert BuildJob.__dataclass_fields__["config"].type == "BuildConfig"
    assert not hasattr(job, "block_fn")
    key = BlockKey("train", 0)
    assert [r["row"] for r in read_plan_block(out, key)] == [0, 1, 2]
    first = process_block(job, key)
    assert is_committed(out, key) and first.n_rows == 3 and not first.skipped
    again = process_block(job, key)
    assert again.skipped and again.n_rows == 3
    with pytest.raises(ValueError, match="not a block of this build"):
        read_plan_block(out, BlockKey("train", 1))
    assert EngineResult().outcomes == [] and EngineResult().counters == {}
