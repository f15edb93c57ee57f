"""``bench/loader.py``: a smoke run prints every configuration and its headline last; bad
arguments exit 2 before anything is written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loader.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_smoke_run_prints_each_configuration_and_the_headline(tmp_path) -> None:
    run = _run(
        "--samples", "1024", "--small-samples", "512", "--cache-samples", "256",
        "--world", "2", "--global-batch", "64", "--shuffle-buffer", "64",
        "--rounds", "1", "--batches", "2", "--procs", "1", "--gen-workers", "1",
        "--variant", "tiny", "--dir", str(tmp_path / "stores"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for row in (
        r"random, 2 workers\s+1,024",
        r"block, 2 workers\s+1,024",
        r"block, 2 workers\s+512",
        r"block, rank r/2 in process\s+1,024",
        r"block, 2 workers, object-store cache\s+256",
    ):
        assert re.search(row, out), (row, out)
    assert "block over random order" in out and "private RSS 1,024 vs 512" in out
    assert re.fullmatch(r"loader_samples_per_s_per_core=\d+", out.strip().splitlines()[-1])
    assert not list((tmp_path / "stores").glob("tokens_*"))  # deleted without --keep


def test_bad_arguments_exit_2(tmp_path) -> None:
    for args in (["--global-batch", "100", "--world", "8"], ["--shuffle-buffer", "0"]):
        run = _run(*args, "--dir", str(tmp_path / "s"))
        assert run.returncode == 2 and "need" in run.stderr
        assert not (tmp_path / "s").exists()
