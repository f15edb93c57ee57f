"""What every CLI's tests check alike: a bad location is refused before anything is written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

#: A malformed URL, a scheme no backend serves, an unknown scheme.
BAD_LOCATIONS = ("s3:/typo", "ftp://x", "nosuchscheme://x")


def assert_refused_before_writing(
    main: Callable[[list[str]], int],
    commands: Sequence[list[str]],
    bad: str,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each command, given ``bad`` in one location argument, exits 2 with one line naming it,
    and nothing is written anywhere: ``workdir`` (the working directory) still holds only its
    empty ``in/`` (no local folder named ``s3:``)."""
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "bad location" in err[0] and bad in err[0], (argv, err)
    assert sorted(p.name for p in workdir.iterdir()) == ["in"]
    assert not any((workdir / "in").iterdir())
