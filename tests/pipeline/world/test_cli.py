"""pipeline/world/cli.py: the world command's bad input names the flag to use."""

from __future__ import annotations

from pathlib import Path

import pytest

from terraloom.pipeline.world.cli import main


def test_a_non_empty_out_names_the_overwrite_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "add --overwrite" in err and "overwrite=True" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
